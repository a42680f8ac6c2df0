#!/usr/bin/env bash
# Mutation testing of one module with mutmut 3 (the `mutation` extra: pip install -e ".[mutation]"). The campaign
# (--all) is every module of every plugin package (losses, hyper-parameters, helpers) and every core loss module:
#   bash plugins/mutate.sh plugins/ltreg-rebsupcon/ltreg_rebsupcon/loss.py
#   bash plugins/mutate.sh plugins/ltreg-acl/ltreg_acl/__init__.py        # a plugin's hyper-parameter module
#   bash plugins/mutate.sh ltreg/losses/core.py                           # a core loss module
#   bash plugins/mutate.sh --all                                          # every file of the campaign, in turn
# The module's tests: a plugin's whole tests/ folder; for a core module the tests/test_*.py files that import it
# (or its package). Every test runs except end-to-end training: a test function whose body calls `ltreg.train(`,
# `train(` of the API, `lt_table.main(` or starts a subprocess is left out (slow, and a subprocess imports the
# installed package, not the mutated copy). No test is left out by name.
# Works in a scratch folder (never on the checkout; MUTATE_OUT, default /tmp/mutate-<file>): copies the package
# (and, for the core, the tests' helpers), writes setup.cfg, runs `mutmut run` single-threaded (OMP_NUM_THREADS=1:
# forked workers and torch's thread pool otherwise time out) and prints the final counters (🎉 killed, 🫥 no
# tests, ⏰ timeout, 🤔 suspicious, 🙁 survived). `cd $OUT && mutmut show <name>` prints a mutant's diff.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
if [ "${1:-}" = "--all" ]; then
  for f in "$root"/ltreg/losses/*.py "$root"/plugins/ltreg-*/ltreg_*/*.py; do
    [ "$(basename "$f")" = "__init__.py" ] && [ "$(dirname "$f")" = "$root/ltreg/losses" ] && continue
    echo "== ${f#$root/}: $(bash "$0" "${f#$root/}")"
  done
  exit 0
fi
target=$1
cd "$root"
case "$target" in
  ltreg/*) pkg=ltreg; pkgdir=$root/ltreg; tests=$root/tests ;;
  plugins/*/*/*.py) pkgdir=$root/$(dirname "$target"); pkg=$(basename "$pkgdir"); tests=$(dirname "$pkgdir")/tests ;;
  *) echo "plugins/mutate.sh: $target is neither ltreg/... nor plugins/<dist>/<package>/<module>.py" >&2; exit 2 ;;
esac
rel=${target#*${pkg}/}  # the module inside its package
out=${MUTATE_OUT:-/tmp/mutate-$(echo "$target" | tr '/.' '--')}
rm -rf "$out"; mkdir -p "$out/tests"; cp -r "$pkgdir" "$out/"; find "$out/$pkg" -name __pycache__ -prune -exec rm -rf {} +
extras=()  # repository files some core tests read (the tutorial page against the source, the template plugin)
if [ "$pkg" = ltreg ]; then
  for x in docs examples pyproject.toml mkdocs.yml; do cp -r "$root/$x" "$out/"; extras+=("$x"); done
fi
"$py" - "$tests" "$out/tests" "$pkg" "$rel" <<'PY'
"""Copy the module's test files without their end-to-end training tests (chosen by what they call)."""
import ast, pathlib, re, shutil, sys
src, dst, pkg, rel = sys.argv[1:]
module = pkg + "." + rel[:-3].replace("/", ".")
E2E = re.compile(r"\bltreg\.train\(|(?<![\w.])train\(|\.fit\(|Trainer\(|lt_table\.main\(|subprocess\.|run_cli\(|\bmain\(\[")
core = pkg == "ltreg"
for path in sorted(pathlib.Path(src).glob("*.py")):
    text = path.read_text()
    if path.name.startswith("test_"):
        parent = module.rsplit(".", 1)[0]
        if core and module not in text and f"from {parent} import" not in text:
            continue  # a core test file that does not import the module
        tree = ast.parse(text)
        lines = text.splitlines(keepends=True)
        drop = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
                and E2E.search(ast.get_source_segment(text, n) or "")]
        for n in sorted(drop, key=lambda n: -n.lineno):
            start = min([d.lineno for d in n.decorator_list] + [n.lineno]) - 1
            del lines[start:n.end_lineno]
        text = "".join(lines)
        print(f"{path.name}: {len(drop)} end-to-end test(s) left out: {', '.join(n.name for n in drop) or '-'}",
              file=sys.stderr)
    (pathlib.Path(dst) / path.name).write_text(text)
for extra in ("dist", "data"):  # helper folders some core tests read
    if (pathlib.Path(src) / extra).is_dir():
        shutil.copytree(pathlib.Path(src) / extra, pathlib.Path(dst) / extra)
PY
if [ "$pkg" != ltreg ]; then
  # A plugin's package runs code when it is imported (its recipes and METHOD are built then): mutmut forks each
  # mutant's test run from a process that imported the package and the test modules already, so that code would
  # never see the mutant, and mutmut credits the calls made on import to the first test only. This conftest
  # re-imports both under the mutant in every test run and credits the import's calls to every test.
  module=$pkg; [ "$(basename "$rel")" = __init__.py ] || module=$pkg.$(echo "${rel%.py}" | tr / .)
  if [ -e "$out/tests/conftest.py" ]; then echo "plugins/mutate.sh: $tests has a conftest.py; merge it by hand" >&2; exit 2; fi
  cat > "$out/tests/conftest.py" <<CONFTEST
"""Written by plugins/mutate.sh: import $pkg afresh under the mutant being tested, and credit every test with
the functions that the import calls (mutmut's statistics would give them to the first test only)."""
import importlib
import pathlib
import sys

import pytest
from mutmut.state import state

from ltreg.registry import refresh

_IMPORT_CALLS = set()


def pytest_configure(config):
    here = pathlib.Path(__file__).resolve().parent  # test modules too: they hold what they imported from $pkg
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if name == "$pkg" or name.startswith("$pkg.") or (
                path and name != __name__ and pathlib.Path(path).resolve().parent == here):
            del sys.modules[name]
    refresh()  # the registries load the plugin's entry points again, from the fresh import
    before = set(state()._stats)
    importlib.import_module("$module")
    _IMPORT_CALLS.clear()
    _IMPORT_CALLS.update(set(state()._stats) - before)


@pytest.fixture(autouse=True)
def _credit_import_calls():
    state()._stats.update(_IMPORT_CALLS)
CONFTEST
fi
{
  echo "[mutmut]"; echo "paths_to_mutate=$pkg/$rel"; echo "also_copy="
  # mutmut copies a listed file without making its folder: list the other sub-packages as folders, and the
  # mutated module's own folder file by file (copying that folder whole would overwrite the mutant)
  "$py" - "$out" "$pkg" "$rel" <<'PY'
import pathlib, sys
out, pkg, rel = sys.argv[1:]
base, target = pathlib.Path(out) / pkg, pathlib.Path(out) / pkg / rel
keep = {target.parent, *target.parent.parents}
for path in sorted(base.rglob("*")):
    if path == target or "__pycache__" in path.parts or not (path.parent in keep):
        continue
    if path.is_dir() and path not in keep or path.is_file() and path.suffix == ".py":
        print(f"    {path.relative_to(out)}")
PY
  for x in "${extras[@]}"; do echo "    $x"; done
  echo "tests_dir=tests/"; echo "pytest_add_cli_args=-p no:cacheprovider"
} > "$out/setup.cfg"
cd "$out"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
  "$py" -c "import sys; from mutmut.__main__ import cli; sys.argv[0] = 'mutmut'; sys.exit(cli())" run > mutmut.log 2>&1 || true
# the final counters: done/total, killed, no tests, timeout, suspicious, survived, skipped
tail -c 400 mutmut.log | tr '\r' '\n' | grep ' [0-9]*/[0-9]* ' | tail -1
