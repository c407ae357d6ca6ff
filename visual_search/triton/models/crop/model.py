"""Triton python model `crop`: image + boxes -> encoder inputs, through visual_search.preprocess.

Inputs (all optional, exactly one image source):
  IMAGE      encoded bytes (the `embed` ensemble decodes here)
  IMAGE_RGB  an already decoded image (from `preprocess` in `detect_and_embed`)
  BOXES      [N, 4] detections: output is N object crops followed by the whole image (N may be 0)
  SCORES_FOR_DEFAULT  [N] with BOXES: output is ONE crop, of the default (most salient) box, or the
             whole image when N = 0 (`detect_and_embed_default`: a default-box query in one call)
  SCORES_FOR_DEFAULT_WHOLE  [N] with BOXES: output is the default box's crop then the whole image
             (2 rows), or the whole image alone when N = 0 (`detect_and_embed_default_whole`)
  BOX        [4] caller-given box: output is that one crop (checked by validate_box)
Neither box input: the whole image. Output PIXELS_ALL [M, 3, 224, 224] goes to `encoder` as one
request of batch M, so a variable number of objects rides Triton's normal batching.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from visual_search.preprocess import (
    check_rgb,
    decode_image,
    default_input,
    default_whole_input,
    encoder_batch,
    object_input,
    validate_box,
)
from visual_search.triton import names as N
from visual_search.triton.pbmodel import image_bytes, input_array, respond_each


def _pixels(
    img: np.ndarray, boxes: np.ndarray | None, box: np.ndarray | None, scores: np.ndarray | None = None,
    scores_whole: np.ndarray | None = None,
) -> np.ndarray:
    h, w = img.shape[:2]
    if box is not None:
        return object_input(img, validate_box(box, w, h))[None]
    if scores is not None and scores_whole is not None:
        raise ValueError(f"give {N.SCORES_FOR_DEFAULT} or {N.SCORES_FOR_DEFAULT_WHOLE}, not both")
    for name, s, fn in ((N.SCORES_FOR_DEFAULT, scores, default_input),
                        (N.SCORES_FOR_DEFAULT_WHOLE, scores_whole, default_whole_input)):
        if s is not None:
            if boxes is None:
                raise ValueError(f"{name} needs {N.BOXES}")
            return fn(img, boxes, s)
    return encoder_batch(img, boxes)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        pass

    def _one(self, request: Any) -> dict[str, np.ndarray]:
        img = input_array(pb_utils, request, N.IMAGE_RGB)
        # a direct caller may send pixels (IMAGE_RGB): the same size / aspect limits apply
        img = decode_image(image_bytes(pb_utils, request, N.IMAGE)) if img is None else check_rgb(img)
        boxes = input_array(pb_utils, request, N.BOXES)
        box = input_array(pb_utils, request, N.BOX)
        scores = input_array(pb_utils, request, N.SCORES_FOR_DEFAULT)
        scores_whole = input_array(pb_utils, request, N.SCORES_FOR_DEFAULT_WHOLE)
        boxes = None if boxes is None else boxes.reshape(-1, 4)
        return {N.PIXELS_ALL: _pixels(img, boxes, box, scores, scores_whole)}

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(pb_utils, requests, self._one)
