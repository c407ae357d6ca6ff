"""Model export (R7, R8): detector + encoder -> ONNX FP32/INT8, metadata, manifest, gates.

Runs only in the export environment (`bash scripts/install_export.sh` -> .venv-export, which has
torch/ultralytics). Serving and CI use the committed artifacts in artifacts/models/ and never
import this package.
"""
