#!/usr/bin/env bash
# Load test on the local stack (loopback only): profiles search/ingest/mixed + step mode.
# Usage: bash load_tests/run.sh [--profiles search,mixed] [--steps 1,2,4,8] [--duration 45] ...
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate
exec python load_tests/run.py "$@"
