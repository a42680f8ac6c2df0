#!/usr/bin/env bash
# The whole test suite (core, plugins, docs build); extra pytest arguments pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_MKDOCS_2_WARNING=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
.venv/bin/mkdocs build --strict --site-dir "$(mktemp -d)"
echo "docs: mkdocs build --strict passed"
