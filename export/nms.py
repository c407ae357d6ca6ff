"""Reference detector post-processing (decode + class-aware NMS) in numpy.

NMS is deliberately *not* in the ONNX graph: thresholds stay per-request parameters, zero
detections need no special empty-tensor handling in the graph, and the very same ONNX builds a
TensorRT engine without NMS plugins. Serving implements the same steps in the Triton python
post-processing model; this copy is what export parity checks and gates use.
"""

from __future__ import annotations

import numpy as np

from visual_search import contract as C


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: [N,4] x [M,4] -> [N,M]."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (br - tl).clip(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def postprocess(
    out: np.ndarray,
    conf: float = C.DETECTOR_CONF_THRESHOLD,
    iou_thr: float = C.DETECTOR_IOU_THRESHOLD,
    max_det: int = C.DETECTOR_MAX_DETECTIONS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw output [4+nc, anchors] -> (boxes xyxy [K,4], scores [K], classes [K])."""
    p = np.asarray(out, np.float32)
    scores_all = p[4:]
    cls = scores_all.argmax(0)
    score = scores_all[cls, np.arange(p.shape[1])]
    keep = score > conf
    cx, cy, w, h = p[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    score, cls = score[keep], cls[keep]
    order = np.argsort(-score, kind="stable")
    boxes, score, cls = boxes[order], score[order], cls[order]
    # Class-aware NMS via a per-class offset, as ultralytics does.
    shifted = boxes + cls[:, None].astype(np.float32) * 7680.0
    selected: list[int] = []
    suppressed = np.zeros(len(boxes), bool)
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        selected.append(i)
        if len(selected) >= max_det:
            break
        suppressed |= iou(shifted[i : i + 1], shifted)[0] > iou_thr
    s = np.array(selected, int)
    return boxes[s].reshape(-1, 4), score[s], cls[s]


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
