"""Triton python model `split`: [objects + 1, D] embeddings -> per-object [N, D] + whole image [1, D]."""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from visual_search.triton import names as N
from visual_search.triton.pbmodel import input_array, respond_each


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        pass

    def _one(self, request: Any) -> dict[str, np.ndarray]:
        e = input_array(pb_utils, request, N.EMBEDDINGS_ALL)
        if e is None or e.ndim != 2 or e.shape[0] < 1:
            raise ValueError("split needs a non-empty [M, D] embedding batch")
        return {N.EMBEDDINGS: np.ascontiguousarray(e[:-1]), N.IMAGE_EMBEDDING: np.ascontiguousarray(e[-1:])}

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(pb_utils, requests, self._one)
