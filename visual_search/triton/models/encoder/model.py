"""Triton python model `encoder` (CPU flavour): the encoder ONNX on onnxruntime.

Requests carry variable batches ([1] for `embed`, [objects + 1] for `detect_and_embed`); the
dynamic batcher groups them and they run as one onnxruntime batch.
"""

from __future__ import annotations

import numpy as np

from visual_search import contract as C
from visual_search.triton.pbmodel import OnnxModel


class TritonPythonModel(OnnxModel):
    input_name = C.ENCODER_INPUT_NAME
    output_name = C.ENCODER_OUTPUT_NAME
    output_dtype = np.float16
