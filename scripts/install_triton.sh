#!/usr/bin/env bash
# Install a real tritonserver (2.51, CPU, python backend only) into .cache/tritonserver/.
#
# There is no Docker engine on the dev/CI machines, so the server binary is taken from the PyPI
# wheel nvidia-pytriton==0.7.0 (pytriton's own Python dependencies are not needed). Layout:
#   .cache/tritonserver/bin/tritonserver
#   .cache/tritonserver/lib/            (the wheel's bundled shared libraries; on LD_LIBRARY_PATH)
#   .cache/tritonserver/backends/python/{libtriton_python.so,triton_python_backend_stub}
# The stub is the Python 3.11 one; it runs the python models with the serving venv (.venv,
# numpy<2), which visual_search/triton/server.py puts on PATH / LD_LIBRARY_PATH. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.7.0
PY_MINOR=${TRITON_STUB_PYTHON:-3.11}
CACHE=.cache
DEST=$CACHE/tritonserver
STAMP=$DEST/.installed-nvidia-pytriton-$VERSION-py$PY_MINOR
PIP=${PIP:-.venv/bin/pip}
[ -x "$PIP" ] || PIP="python3 -m pip"

if [ -f "$STAMP" ] && [ -x "$DEST/bin/tritonserver" ]; then
  echo "tritonserver already installed in $DEST"
  exit 0
fi

mkdir -p "$CACHE/wheels"
WHEEL=$(ls "$CACHE"/wheels/nvidia_pytriton-$VERSION-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$WHEEL" ]; then
  $PIP download -q --no-deps "nvidia-pytriton==$VERSION" -d "$CACHE/wheels"
  WHEEL=$(ls "$CACHE"/wheels/nvidia_pytriton-$VERSION-*.whl | head -n1)
fi

TMP=$(mktemp -d "$CACHE/tritonserver.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
python3 - "$WHEEL" "$TMP" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist()
             if n.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/"))]
    z.extractall(out, names)
EOF
SRC=$TMP/pytriton/tritonserver
STUB=$SRC/python_backend_stubs/$PY_MINOR/triton_python_backend_stub
[ -f "$STUB" ] || { echo "no python backend stub for Python $PY_MINOR in the wheel" >&2; exit 1; }
mkdir -p "$TMP/out"
cp -a "$SRC/bin" "$SRC/backends" "$SRC/caches" "$TMP/out/"
cp -a "$TMP/nvidia_pytriton.libs" "$TMP/out/lib"
cp "$STUB" "$TMP/out/backends/python/triton_python_backend_stub"
chmod +x "$TMP/out/bin/tritonserver" "$TMP/out/backends/python/triton_python_backend_stub"
touch "$TMP/out/.installed-nvidia-pytriton-$VERSION-py$PY_MINOR"
rm -rf "$DEST"
mv "$TMP/out" "$DEST"

LIBDIR=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
# --help exits non-zero; it proves the binary and its shared libraries load.
HELP=$(LD_LIBRARY_PATH="$DEST/lib:$LIBDIR:${LD_LIBRARY_PATH:-}" "$DEST/bin/tritonserver" --help 2>&1 || true)
if [[ "$HELP" != *model-repository* ]]; then
  echo "tritonserver does not start (missing shared libraries?)" >&2
  exit 1
fi
echo "tritonserver installed in $DEST"
