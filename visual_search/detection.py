"""Detector output decoding and NMS (numpy), shared by Triton's postprocess model and the
in-process reference path.

NMS runs outside the ONNX graph so thresholds can be per request, zero detections are an ordinary
empty result, and the same ONNX file serves onnxruntime and TensorRT unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visual_search import contract as C
from visual_search.preprocess import Letterbox, boxes_to_image


@dataclass(frozen=True)
class Detections:
    """Boxes (x1, y1, x2, y2 in original image pixels), scores and COCO class ids, best first."""

    boxes: np.ndarray  # float32 [N, 4]
    scores: np.ndarray  # float32 [N]
    classes: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32))


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `boxes`."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; returns kept indices, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou_one_to_many(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, np.int64)


def decode(
    output: np.ndarray,
    letterbox: Letterbox,
    conf_threshold: float = C.DETECTOR_CONF_THRESHOLD,
    iou_threshold: float = C.DETECTOR_IOU_THRESHOLD,
    max_detections: int = C.DETECTOR_MAX_DETECTIONS,
) -> Detections:
    """One image's raw detector output [4 + classes, anchors] -> class-aware NMS'd detections."""
    out = np.asarray(output, np.float32)
    if out.ndim != 2 or out.shape[0] != 4 + C.DETECTOR_NUM_CLASSES:
        raise ValueError(f"detector output must be [{4 + C.DETECTOR_NUM_CLASSES}, anchors], got {out.shape}")
    cls_scores = out[4:]
    classes = cls_scores.argmax(axis=0)
    scores = cls_scores[classes, np.arange(out.shape[1])]
    sel = scores >= conf_threshold
    if not sel.any():
        return Detections.empty()
    cx, cy, w, h = out[:4, sel]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    scores, classes = scores[sel], classes[sel].astype(np.int32)
    # class-aware NMS in one pass: shift each class into its own coordinate range
    offset = classes[:, None].astype(np.float32) * (4.0 * C.DETECTOR_INPUT_SIZE)
    keep = nms(boxes + offset, scores, iou_threshold)[:max_detections]
    img_boxes = boxes_to_image(boxes[keep], letterbox)
    return Detections(img_boxes, scores[keep].astype(np.float32), classes[keep])
