"""Triton python model `detector` (CPU flavour): the detector ONNX on onnxruntime.

On GPU hosts the same ONNX file is served by Triton's native backend instead. Dynamic batching
hands this model several requests at once; they run as one onnxruntime batch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from visual_search import contract as C
from visual_search.triton.pbmodel import ort_session, parse_args, run_batched


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        _, params, version_dir = parse_args(args)
        threads = int(params.get("intra_op_threads", "2"))
        self.session = ort_session(os.path.join(version_dir, "model.onnx"), threads)

    def _run(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run([C.DETECTOR_OUTPUT_NAME], {C.DETECTOR_INPUT_NAME: x})[0]
        return out

    def execute(self, requests: list[Any]) -> list[Any]:
        return run_batched(pb_utils, requests, C.DETECTOR_INPUT_NAME, C.DETECTOR_OUTPUT_NAME, self._run)
