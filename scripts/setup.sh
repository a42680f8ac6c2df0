#!/usr/bin/env bash
# Set up .venv with ltreg, its five method plugins, the plugin template and the test/doc tools.
# Idempotent: re-running after a change to any pyproject.toml re-installs, otherwise it is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ltreg-installed
want=$(cat constraints.txt pyproject.toml plugins/*/pyproject.toml examples/*/pyproject.toml 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# Real Fashion-MNIST for the benchmark table (Debian package; optional, tests skip without it).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "setup: could not install dataset-fashion-mnist (optional)"
fi
.venv/bin/python -m pip install -q --upgrade pip
args=(-e ".[test,plot,docs]")
for p in plugins/*/ examples/*/; do
  [ -f "$p/pyproject.toml" ] && args+=(-e "$p")
done
.venv/bin/python -m pip install -q -c constraints.txt "${args[@]}"
echo "$want" > "$stamp"
