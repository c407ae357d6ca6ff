"""INT8 (QDQ) static quantisation with onnxruntime, calibrated on real catalog images.

QDQ keeps one graph usable everywhere: onnxruntime runs it with INT8 kernels on CPU, and
TensorRT can consume explicit Q/DQ too (export/build_tensorrt.py calibrates from FP32 instead).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export import metadata
from export.data import detector_inputs, encoder_batches
from visual_search import contract as C


@dataclass(frozen=True)
class Recipe:
    """How one model is quantised (kept in its metadata so a rebuild is explainable)."""

    method: CalibrationMethod = CalibrationMethod.MinMax
    per_channel: bool = True
    float_prefixes: tuple[str, ...] = ()  # node-name prefixes kept in float ...
    quantized_prefixes: tuple[str, ...] = ()  # ... except these
    exclude_op_types: tuple[str, ...] = ()
    extra: dict[str, object] = field(default_factory=dict)

    def describe(self) -> str:
        return (f"QDQ, activations uint8 / weights int8, per_channel={self.per_channel}, "
                f"calibration={self.method.name}, float nodes: {list(self.float_prefixes)} "
                f"except {list(self.quantized_prefixes)}, float op types {list(self.exclude_op_types)}")

    def keeps_float(self, name: str, op_type: str) -> bool:
        if op_type in self.exclude_op_types:
            return True
        return (any(name.startswith(p) for p in self.float_prefixes)
                and not any(name.startswith(p) for p in self.quantized_prefixes))


# Chosen by measuring the gates (benchmarks/int8_gates.json); see export/gates.py.
# YOLO Detect head: its convs are quantised, but the decode (DFL softmax, anchor arithmetic and the
# final Concat of pixel-range boxes with 0-1 scores, which one uint8 scale would crush) stays float,
# and so does the C2PSA attention block (model.10): match rate 0.82 -> 0.85. Still below the 0.95
# gate (misses are detections with FP32 conf < 0.7), so serving defaults to the FP32 detector.
DETECTOR_RECIPE = Recipe(float_prefixes=("/model.23/", "/model.10/"), quantized_prefixes=("/model.23/cv",))
# Percentile (99.999) calibration + float head (GeM, PCA, L2): MinMax gave mean cosine 0.976 and -1.3 mAP
# points on dogs; this recipe passes (benchmarks/int8_gates.json).
ENCODER_RECIPE = Recipe(method=CalibrationMethod.Percentile, float_prefixes=("/",),
                        quantized_prefixes=("/features/mnv2/", "/features/lite0/"))


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: Iterator[np.ndarray]) -> None:
        self.name, self.batches = name, batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self.batches, None)
        return None if b is None else {self.name: b}


def calibration_batches(role: str, images: list[Path]) -> list[np.ndarray]:
    """Calibration inputs through the shared preprocessing (letterbox / encoder_input)."""
    if role == "encoder":
        return list(encoder_batches(images, batch=16))
    return [detector_inputs(images[i : i + 4])[0] for i in range(0, len(images), 4)]


def _excluded_nodes(model_path: Path, recipe: Recipe) -> list[str]:
    nodes = onnx.load(str(model_path)).graph.node
    return [n.name for n in nodes if recipe.keeps_float(n.name, n.op_type)]


def _flush_every(n_batches: int) -> int:
    """Calibration flushes stored activations every k batches (bounded memory); onnxruntime
    raises 'No data is collected' when k divides the batch count, so pick a k that does not."""
    return next((k for k in range(6, 12) if n_batches % k), n_batches + 1)


def quantize(src: Path, dst: Path, input_name: str, batches: list[np.ndarray], recipe: Recipe) -> None:
    """FP32 ONNX -> QDQ INT8 ONNX (pre-processed, calibrated on `batches`)."""
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(dst), _Reader(input_name, iter(batches)), quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=recipe.method,
            nodes_to_exclude=_excluded_nodes(pre, recipe),
            extra_options={"CalibMaxIntermediateOutputs": _flush_every(len(batches)), **recipe.extra},
        )


def build_all(root: Path, files: dict[str, str], metas: dict[str, dict[str, str]], calib: list[Path],
              calib_hash: str, roles: tuple[str, ...] = ("detector", "encoder")) -> dict[str, dict[str, str]]:
    """Quantise the FP32 artifacts of `roles`; the INT8 encoder gets its own embedding model version."""
    out: dict[str, dict[str, str]] = {}
    jobs = (("detector", C.DETECTOR_INPUT_NAME, DETECTOR_RECIPE),
            ("encoder", C.ENCODER_INPUT_NAME, ENCODER_RECIPE))
    for role, inp, recipe in (j for j in jobs if j[0] in roles):
        src, dst = root / files[f"{role}_fp32"], root / files[f"{role}_int8"]
        quantize(src, dst, inp, calibration_batches(role, calib), recipe)
        meta = dict(metas[f"{role}_fp32"])
        meta.update(precision="int8", quantization=recipe.describe(), export_date=metadata.export_date(),
                    model_version=meta["model_version"] + "-int8",
                    calibration_set=f"{len(calib)} evenly spaced catalog-split images of ../shared/data/*",
                    calibration_set_sha256=calib_hash)
        if role == "encoder":
            meta["embedding_model_version"] = meta["model_version"]
        metadata.stamp(dst, meta)
        out[f"{role}_int8"] = meta
    return out
