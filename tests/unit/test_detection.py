"""Detector output decoding and NMS."""

from __future__ import annotations

import numpy as np

from visual_search import contract as C
from visual_search import detection as D
from visual_search.preprocess import Letterbox

NO_LB = Letterbox(1.0, 0.0, 0.0, C.DETECTOR_INPUT_SIZE, C.DETECTOR_INPUT_SIZE)


def _raw(dets: list[tuple[float, float, float, float, int, float]], anchors: int = 50) -> np.ndarray:
    out = np.zeros((4 + C.DETECTOR_NUM_CLASSES, anchors), np.float32)
    for j, (cx, cy, w, h, cls, score) in enumerate(dets):
        out[:4, j] = (cx, cy, w, h)
        out[4 + cls, j] = score
    return out


def test_nms_suppresses_overlaps_of_the_same_class_only() -> None:
    raw = _raw(
        [
            (100, 100, 50, 50, 0, 0.9),
            (102, 101, 50, 50, 0, 0.8),  # duplicate of the first -> suppressed
            (102, 101, 50, 50, 5, 0.7),  # same place, other class -> kept
            (400, 400, 30, 30, 0, 0.6),
            (300, 300, 30, 30, 0, 0.1),  # below the confidence threshold
        ]
    )
    d = D.decode(raw, NO_LB)
    assert len(d) == 3
    np.testing.assert_allclose(d.scores, [0.9, 0.7, 0.6])
    assert d.classes.tolist() == [0, 5, 0]
    np.testing.assert_allclose(d.boxes[0], [75, 75, 125, 125])


def test_zero_detections_is_an_empty_result() -> None:
    d = D.decode(_raw([]), NO_LB)
    assert len(d) == 0 and d.boxes.shape == (0, 4)


def test_boxes_map_back_through_the_letterbox() -> None:
    lb = Letterbox(scale=2.0, pad_x=10.0, pad_y=20.0, width=300, height=200)
    d = D.decode(_raw([(110, 120, 100, 100, 2, 0.9)]), lb)
    np.testing.assert_allclose(d.boxes[0], [25, 25, 75, 75])


def test_max_detections_caps_the_output() -> None:
    raw = _raw([(20 + 60 * i, 20, 40, 40, 0, 0.5 + i / 100) for i in range(10)])
    assert len(D.decode(raw, NO_LB, max_detections=4)) == 4
