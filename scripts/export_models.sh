#!/usr/bin/env bash
# Reproduce all model artifacts into artifacts/models/ (FP32 + INT8 ONNX, manifest.json) and the
# INT8 gate report benchmarks/int8_gates.json. Artifacts are committed, so this is only needed
# when they are missing or the models change. Args go to `python -m export` (e.g. --force).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-export/bin/python ] || bash scripts/install_export.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # shared 2-core machines: stay bounded
.venv-export/bin/python -m export "$@"
# `python -m export` also runs the INT8 gates (benchmarks/int8_gates.json) when it rebuilds.
