"""Detector: ultralytics YOLO11n checkpoint -> FP32 ONNX (opset 17, dynamic batch, no NMS).

Ultralytics' exporter is used (it knows the Detect head's decode); its `dynamic=True` also makes
height/width dynamic, so the spatial dims are pinned back to the contract's 640 afterwards and
the graph re-simplified: a fixed shape lets onnxruntime/TensorRT fold the anchor grid.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import onnx

from export.env import DETECTOR_WEIGHTS, setup_offline, sha256_file
from export.metadata import OPSET
from visual_search import contract as C


def anchors(size: int = C.DETECTOR_INPUT_SIZE) -> int:
    """Anchor points of the three YOLO strides at a square input side (8400 at 640)."""
    return sum((size // s) ** 2 for s in (8, 16, 32))


ANCHORS = anchors()


def _pin_spatial_dims(path: Path, size: int = C.DETECTOR_INPUT_SIZE) -> None:
    import onnxslim

    m = onnx.load(str(path))
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.name == C.DETECTOR_INPUT_NAME and out.name == C.DETECTOR_OUTPUT_NAME, (inp.name, out.name)
    dims_in = inp.type.tensor_type.shape.dim
    dims_in[0].dim_param = "batch"
    for d, v in zip(dims_in[1:], (3, size, size), strict=True):
        d.dim_value = v
    dims_out = out.type.tensor_type.shape.dim
    dims_out[0].dim_param = "batch"
    for d, v in zip(dims_out[1:], (4 + C.DETECTOR_NUM_CLASSES, anchors(size)), strict=True):
        d.dim_value = v
    m = onnxslim.slim(m)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def export_fp32(
    dst: Path, weights: Path = DETECTOR_WEIGHTS, size: int = C.DETECTOR_INPUT_SIZE
) -> dict[str, str]:
    """Export the detector to `dst` at a square input `size`; returns metadata to stamp."""
    setup_offline()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / weights.name  # ultralytics writes next to the weights (read-only)
        shutil.copyfile(weights, local)
        model = YOLO(str(local))
        onnx_path = Path(model.export(format="onnx", imgsz=size, opset=OPSET,
                                      simplify=True, dynamic=True, nms=False))
        shutil.move(onnx_path, dst)
    _pin_spatial_dims(dst, size)
    return {
        "model_name": "yolo11n-coco",
        "source_weights": weights.name,
        "source_weights_sha256": sha256_file(weights),
        "input_normalisation": f"RGB /255 in [0,1], letterbox {size} pad "
                               f"{C.LETTERBOX_PAD_VALUE} (visual_search.preprocess.letterbox)",
        "output_layout": "[B, 4+80, anchors]: cx,cy,w,h (input pixels) + sigmoid class scores; NMS outside",
        "license": "AGPL-3.0 (Ultralytics YOLO11n weights)",
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m export.detector --sizes 320 416 640 --out DIR`: FP32 detectors at several input
    sides (for `vsearch bench detector-size`, which measures what a smaller query side costs)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m export.detector", description=main.__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[C.DETECTOR_INPUT_SIZE])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for size in a.sizes:
        if size % 32:
            raise SystemExit(f"size {size}: must be a multiple of 32 (the largest YOLO stride)")
        export_fp32(a.out / f"detector_{size}.onnx", size=size)
        print(f"exported {a.out / f'detector_{size}.onnx'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
