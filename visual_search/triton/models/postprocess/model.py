"""Triton python model `postprocess`: raw detector output -> boxes (original pixels), scores, classes.

Decoding and class-aware NMS are visual_search.detection (shared with the reference path);
zero detections give empty [0, 4] / [0] tensors, never an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from visual_search import contract as C
from visual_search.detection import decode
from visual_search.preprocess import Letterbox
from visual_search.triton import names as N
from visual_search.triton.pbmodel import input_array, respond_each


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        pass

    def _one(self, request: Any) -> dict[str, np.ndarray]:
        out = input_array(pb_utils, request, C.DETECTOR_OUTPUT_NAME)
        lb = input_array(pb_utils, request, N.LETTERBOX)
        if out is None or lb is None:
            raise ValueError("postprocess needs the detector output and the letterbox info")
        if out.ndim == 3:
            out = out[0]
        d = decode(out, Letterbox.from_array(lb.reshape(-1)))
        return {N.BOXES: d.boxes, N.SCORES: d.scores, N.CLASSES: d.classes}

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(pb_utils, requests, self._one)
