"""Export parity: the committed FP32 ONNX files against their torch sources, on real photos.

    python -m export.parity        (export venv; writes benchmarks/export_parity.json)

Detector: ONNX vs the ultralytics .pt on identical letterboxed inputs (raw-output error and
post-NMS box IoU), plus ONNX + our numpy NMS vs ultralytics' own predict() (its own resize and
NMS, so small box differences are expected). Encoder: ONNX vs the torch module's cosine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export import nms
from export.data import detector_inputs, encoder_batches, load_set
from export.env import ARTIFACTS, BENCHMARKS, DATASETS, DETECTOR_WEIGHTS, REPO, setup_offline
from visual_search import contract as C

SAME_INPUT_IOU_FLOOR = 0.99  # identical pixels: only float noise may differ
PREDICT_IOU_FLOOR = 0.90  # ultralytics' own letterbox/NMS vs ours


def real_photos(per_set: int = 8) -> list[Path]:
    """bus/zidane (tests/data) + evenly spaced dev-set images of both splits."""
    photos = [REPO / "tests" / "data" / n for n in ("bus.jpg", "zidane.jpg")]
    for name in DATASETS:
        items = load_set(name)
        photos += [items[i].path for i in np.linspace(0, len(items) - 1, per_set).astype(int)]
    return photos


def _sessions(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def detector_parity(photos: list[Path]) -> dict[str, Any]:
    setup_offline()
    import torch
    from ultralytics import YOLO

    yolo = YOLO(str(DETECTOR_WEIGHTS))
    net = yolo.model.float().eval()
    sess = _sessions(ARTIFACTS / "detector_fp32.onnx")
    x, lbs = detector_inputs(photos)
    with torch.no_grad():
        ref = np.concatenate([net(torch.from_numpy(x[i : i + 4]))[0].numpy() for i in range(0, len(x), 4)])
    got = sess.run(None, {C.DETECTOR_INPUT_NAME: x})[0]
    matched = total = pm = pt = 0
    worst = 1.0
    for i, photo in enumerate(photos):
        rb, _, rc = nms.postprocess(ref[i])
        gb, _, gc = nms.postprocess(got[i])
        m, t, ious = nms.match_rate(rb, rc, gb, gc, SAME_INPUT_IOU_FLOOR)
        matched, total, worst = matched + m, total + t, min([worst, *ious])
        # end to end against ultralytics' predict on the original file
        r = yolo.predict(str(photo), conf=C.DETECTOR_CONF_THRESHOLD, iou=C.DETECTOR_IOU_THRESHOLD,
                         verbose=False)[0]
        ub, uc = r.boxes.xyxy.numpy(), r.boxes.cls.numpy().astype(int)
        m2, t2, _ = nms.match_rate(ub, uc, _to_image(gb, lbs[i]), gc, PREDICT_IOU_FLOOR)
        pm, pt = pm + m2, pt + t2
    anchors = ref[:, 4:].max(1) > C.DETECTOR_CONF_THRESHOLD
    box_err = np.abs(ref[:, :4] - got[:, :4]).transpose(0, 2, 1)[anchors]
    return {"images": len(photos), "max_abs_score_diff": float(np.abs(ref[:, 4:] - got[:, 4:]).max()),
            "max_box_diff_px_on_scored_anchors": float(box_err.max()) if box_err.size else 0.0,
            "same_input": {"iou_floor": SAME_INPUT_IOU_FLOOR, "matched": matched, "total": total,
                           "min_iou": round(worst, 5)},
            "vs_ultralytics_predict": {"iou_floor": PREDICT_IOU_FLOOR, "matched": pm, "total": pt}}


def _to_image(boxes: np.ndarray, lb: object) -> np.ndarray:
    from visual_search.preprocess import boxes_to_image

    return boxes_to_image(boxes, lb)  # type: ignore[arg-type]


def encoder_parity(photos: list[Path]) -> dict[str, Any]:
    """ONNX FP32 vs the same head recomputed in torch from the exported graph's own weights."""
    import torch

    from export import encoder

    x = next(encoder_batches(photos, batch=len(photos)))
    sess = _sessions(ARTIFACTS / "encoder_fp32.onnx")
    got = sess.run(None, {C.ENCODER_INPUT_NAME: x})[0]
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(ARTIFACTS / "encoder_fp32.onnx")).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    proj = encoder.Projection(inits["mean"], inits["proj"].T.copy())
    from export.build import HEAD
    from export.metadata import read

    meta = read(ARTIFACTS / "encoder_fp32.onnx")
    scales = encoder.parse_scales(meta["backbone_scales"])
    with torch.no_grad():
        feats = HEAD(encoder.backbone(scales), torch.from_numpy(x)).numpy()
    ref = proj.apply(feats)
    g = got.astype(np.float32)
    cos = (ref * g).sum(1) / np.linalg.norm(g, axis=1)
    norms = np.linalg.norm(g, axis=1)
    return {"images": len(photos), "min_cosine_vs_torch": float(cos.min()), "dtype": str(got.dtype),
            "shape": list(got.shape), "max_norm_error": float(np.abs(norms - 1).max())}


def main() -> int:
    photos = real_photos()
    det, enc = detector_parity(photos), encoder_parity(photos)
    same, pred = det["same_input"], det["vs_ultralytics_predict"]
    ok = (same["matched"] == same["total"] and pred["matched"] >= 0.95 * pred["total"]
          and enc["min_cosine_vs_torch"] > 0.9999)
    report = {"detector": det, "encoder": enc, "pass": bool(ok)}
    BENCHMARKS.mkdir(exist_ok=True)
    (BENCHMARKS / "export_parity.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
