"""Triton python model `detector` (CPU flavour): the detector ONNX on onnxruntime.

On GPU hosts the same ONNX file is served by Triton's native backend instead. Dynamic batching
hands this model several requests at once; they run as one onnxruntime batch.
"""

from __future__ import annotations

from visual_search import contract as C
from visual_search.triton.pbmodel import OnnxModel


class TritonPythonModel(OnnxModel):
    input_name = C.DETECTOR_INPUT_NAME
    output_name = C.DETECTOR_OUTPUT_NAME
