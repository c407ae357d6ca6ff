#!/usr/bin/env bash
# Generate Python gRPC stubs from proto/ into the package (visual_search/v1/*_pb2*.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
"$PY" -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/visual_search/v1/*.proto
