"""Triton python model `encoder` (CPU flavour): the encoder ONNX on onnxruntime.

Requests carry variable batches ([1] for `embed`, [objects + 1] for `detect_and_embed`); the
dynamic batcher groups them and they run as one onnxruntime batch.
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
        out = self.session.run([C.ENCODER_OUTPUT_NAME], {C.ENCODER_INPUT_NAME: x})[0]
        return np.asarray(out, np.float16)

    def execute(self, requests: list[Any]) -> list[Any]:
        return run_batched(pb_utils, requests, C.ENCODER_INPUT_NAME, C.ENCODER_OUTPUT_NAME, self._run)
