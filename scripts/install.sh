#!/usr/bin/env bash
# Install the serving environment (.venv): the package, dev tools, generated gRPC stubs.
# Idempotent; safe to re-run. Everything CI and the demo need is installed from here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import faiss, grpc, numpy" # fail loudly if the install did not work
bash scripts/gen_proto.sh
bash scripts/install_triton.sh
