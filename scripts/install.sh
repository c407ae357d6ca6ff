#!/usr/bin/env bash
# Install the serving environment (.venv): the package, dev tools, generated gRPC stubs, and a
# real tritonserver in .cache/. Idempotent; safe to re-run. Everything CI and the demo need is
# installed from here. Progress goes to stderr, one line per step; pip's own output is kept in
# .cache/install.log and shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p .cache
LOG=.cache/install.log
: >"$LOG"
step() {  # step "what" command...: run quietly, print the time it took, show the log on failure
  local what=$1 t0=$SECONDS
  shift
  printf 'install: %s ...' "$what" >&2
  if "$@" >>"$LOG" 2>&1; then
    printf ' done (%ds)\n' $((SECONDS - t0)) >&2
  else
    printf ' FAILED\n' >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}
if [ ! -x .venv/bin/python ]; then
  step "creating .venv" "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
step "upgrading pip" python -m pip install -q --upgrade pip
# The client package first: the serving package depends on it (its build writes the stubs it needs).
step "installing the client package (clients/python: vsearch-client)" \
  python -m pip install -q -e clients/python
step "installing visual-search + dev tools into .venv (first run: ~2-3 min)" \
  python -m pip install -q -e ".[dev]"
step "checking faiss, grpc, numpy import" python -c "import faiss, grpc, numpy"
step "generating gRPC stubs" bash scripts/gen_proto.sh
step "installing tritonserver into .cache/tritonserver" bash scripts/install_triton.sh
