"""Build TensorRT INT8 engines (FP16 fallback) from the FP32 ONNX artifacts on a GPU host.

    python -m export.build_tensorrt [--out artifacts/tensorrt] [--max-batch 32] [--models detector encoder]

Needs an NVIDIA GPU, `pip install tensorrt` (10.x) and torch with CUDA (the export venv's torch
is a CUDA build; it only allocates the calibration buffers). Plans are GPU/TensorRT-version
specific, so they are built on the serving host (Triton `tensorrt_plan`) and not committed.

Why calibrate here instead of parsing the QDQ INT8 ONNX: onnxruntime's QDQ uses uint8
activations with zero points, while TensorRT's explicit quantisation wants symmetric int8; the
FP32 ONNX + the same catalog calibration images (visual_search.preprocess) is the portable input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export.data import calibration_images
from export.env import ARTIFACTS, REPO
from export.quantize import calibration_batches
from visual_search import contract as C

N_CALIB = 128  # same images as the onnxruntime INT8 calibration (export.build.N_CALIB)
SPECS = {  # role -> (input name, per-image input shape)
    "detector": (C.DETECTOR_INPUT_NAME, (3, C.DETECTOR_INPUT_SIZE, C.DETECTOR_INPUT_SIZE)),
    "encoder": (C.ENCODER_INPUT_NAME, (3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE)),
}


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
        import torch
    except ImportError as e:
        sys.exit(f"TensorRT engines need a GPU host with `pip install tensorrt` and CUDA torch ({e}).")
    if not torch.cuda.is_available():
        sys.exit("TensorRT engines need an NVIDIA GPU; torch.cuda.is_available() is False here.")
    return trt


def make_calibrator(trt: Any, batches: list[np.ndarray], cache: Path) -> Any:
    """Entropy calibrator feeding the preprocessed catalog batches from GPU memory."""
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.batches, self.i = batches, 0
            self.buf: Any = None  # keeps the current device batch alive

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.i >= len(self.batches):
                return None
            self.buf = torch.from_numpy(np.ascontiguousarray(self.batches[self.i])).cuda()
            self.i += 1
            return [int(self.buf.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, data: bytes) -> None:
            cache.write_bytes(bytes(data))

    return Calibrator()


def build(role: str, out_dir: Path, max_batch: int) -> Path:
    trt = _import_tensorrt()
    name, shape = SPECS[role]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse((ARTIFACTS / f"{role}_fp32.onnx").read_bytes()):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"ONNX parse failed for {role}: {errs}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.FP16)  # layers without a good INT8 kernel fall back to FP16
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (1, *shape), (max(1, max_batch // 4), *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    config.set_calibration_profile(profile)
    batches = calibration_batches(role, calibration_images(N_CALIB))
    config.int8_calibrator = make_calibrator(trt, batches, out_dir / f"{role}_int8.calib")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT build failed for {role}")
    dst = out_dir / f"{role}_int8.plan"
    dst.write_bytes(bytes(plan))
    return dst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "tensorrt")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--models", nargs="+", choices=sorted(SPECS), default=sorted(SPECS))
    args = ap.parse_args(argv)
    _import_tensorrt()  # fail fast, before any work
    args.out.mkdir(parents=True, exist_ok=True)
    for role in args.models:
        print(f"built {build(role, args.out, args.max_batch)}")


if __name__ == "__main__":
    main()
