"""Detector output comparison for export parity checks and INT8 gates.

NMS is deliberately *not* in the ONNX graph (see visual_search/detection.py for why); the checks
decode with the very same code serving uses, so a gate measures the model, not a second NMS.
"""

from __future__ import annotations

import numpy as np

from visual_search import contract as C
from visual_search import detection
from visual_search.preprocess import Letterbox


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: [N,4] x [M,4] -> [N,M]."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (br - tl).clip(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def postprocess(out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw output [4+nc, anchors] -> (boxes xyxy [K,4] in detector-input pixels,
    scores [K], classes [K]), through serving's own decode + NMS (visual_search.detection)."""
    size = C.DETECTOR_INPUT_SIZE
    d = detection.decode(out, Letterbox(1.0, 0.0, 0.0, size, size))
    return d.boxes, d.scores, d.classes


def match_rate(ref: np.ndarray, ref_cls: np.ndarray, got: np.ndarray, got_cls: np.ndarray,
               floor: float) -> tuple[int, int, list[float]]:
    """How many reference boxes have a same-class box with IoU >= floor -> (matched, total, ious)."""
    if len(ref) == 0:
        return 0, 0, []
    if len(got) == 0:
        return 0, len(ref), [0.0] * len(ref)
    m = iou(ref, got) * (ref_cls[:, None] == got_cls[None, :])
    best = m.max(1)
    return int((best >= floor).sum()), len(ref), [float(v) for v in best]
