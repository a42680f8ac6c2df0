#!/usr/bin/env bash
# Mutation testing of one plugin's loss.py with mutmut 3 (not a project dependency):
#   .venv/bin/pip install "mutmut==3.8.1"
#   bash plugins/mutate.sh plugins/ltreg-rebsupcon ltreg_rebsupcon test_rebsupcon.py registry quick spec_parts
# Arguments: plugin folder, package, test file, then substrings of test names to leave out (end-to-end training
# and registry tests: slow, and they import the installed plugin through its entry point, not the mutant copy).
# Works in a scratch folder (never on the checkout): copies the package and the test file, writes setup.cfg, runs
# `mutmut run` single-threaded (OMP_NUM_THREADS=1: forked workers and torch's thread pool otherwise time out) and
# prints the final counters (🎉 killed, 🫥 no tests, ⏰ timeout, 🤔 suspicious, 🙁 survived). `cd $OUT && mutmut show <name>` prints a mutant's diff.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(cd "$1" && pwd); pkg=$2; tf=$3; shift 3
out=${MUTATE_OUT:-/tmp/mutate-$pkg}
rm -rf "$out"; mkdir -p "$out/tests"; cp -r "$dir/$pkg" "$out/"; rm -rf "$out/$pkg/__pycache__"
"$root/.venv/bin/python" - "$dir/tests/$tf" "$out/tests/$tf" "$@" <<'PY'
import ast, sys
src, dst, *names = sys.argv[1:]
text = open(src).read()
lines = text.splitlines(keepends=True)
spans = [(min([d.lineno for d in n.decorator_list] + [n.lineno]) - 1, n.end_lineno)
         for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and any(s in n.name for s in names)]
for a, b in sorted(spans, reverse=True):
    del lines[a:b]
open(dst, "w").write("".join(lines))
PY
{
  echo "[mutmut]"; echo "paths_to_mutate=$pkg/loss.py"; echo "also_copy="
  for f in "$out/$pkg"/*.py; do [ "$(basename "$f")" = loss.py ] || echo "    $pkg/$(basename "$f")"; done
  echo "tests_dir=tests/"; echo "pytest_add_cli_args=-p no:cacheprovider"
} > "$out/setup.cfg"
cd "$out"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$root/.venv/bin/mutmut" run > mutmut.log 2>&1 || true
# the final counters: done/total, killed, no tests, timeout, suspicious, survived, skipped
tail -c 400 mutmut.log | tr '\r' '\n' | grep ' [0-9]*/[0-9]* ' | tail -1
