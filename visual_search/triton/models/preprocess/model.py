"""Triton python models `preprocess` / `preprocess_query`: encoded image -> letterboxed detector input.

The letterbox side is the config parameter `input_size` (contract.DETECTOR_INPUT_SIZE for
indexing, QUERY_DETECTOR_INPUT_SIZE for photo queries). Also passes the decoded RGB image on, so
`crop` cuts objects from the very pixels the detector saw (decoded once, EXIF-rotated once).
All image handling is visual_search.preprocess.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from visual_search import contract as C
from visual_search.preprocess import decode_image, letterbox
from visual_search.triton import names as N
from visual_search.triton.pbmodel import image_bytes, parse_args, respond_each


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        _, params, _ = parse_args(args)
        self.size = int(params.get("input_size", C.DETECTOR_INPUT_SIZE))

    def _one(self, request: Any) -> dict[str, np.ndarray]:
        img = decode_image(image_bytes(pb_utils, request, N.IMAGE))
        chw, lb = letterbox(img, self.size)
        return {
            C.DETECTOR_INPUT_NAME: chw[None],
            N.LETTERBOX: lb.as_array()[None],
            N.IMAGE_RGB: img,
        }

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(pb_utils, requests, self._one)
