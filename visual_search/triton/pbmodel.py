"""Helpers shared by the python-backend models in triton/models/ (run inside the Triton stub).

`pb_utils` is passed in rather than imported: the module `triton_python_backend_utils` only
exists inside the stub, and keeping it out of imports lets tests and mypy load this file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def parse_args(args: dict[str, str]) -> tuple[dict[str, Any], dict[str, str], str]:
    """Triton's initialize() args -> (model config, string parameters, version directory)."""
    config = json.loads(args["model_config"])
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    version_dir = os.path.join(args["model_repository"], args["model_version"])
    return config, params, version_dir


def ort_session(path: str, threads: int) -> Any:
    """An onnxruntime CPU session tuned for a small shared host (fixed threads, no spinning)."""
    from visual_search.reference import make_session

    return make_session(path, max(1, threads), flush_denormals=True, allow_spinning=False)


def respond_each(
    pb_utils: Any, requests: Sequence[Any], handle: Callable[[Any], dict[str, np.ndarray]]
) -> list[Any]:
    """Run `handle` per request; a failure becomes that request's error, never the batch's."""
    responses = []
    for request in requests:
        try:
            outputs = handle(request)
            tensors = [pb_utils.Tensor(name, value) for name, value in outputs.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        except Exception as e:  # noqa: BLE001 - every failure must reach its own caller
            responses.append(error_response(pb_utils, e))
    return responses


def error_response(pb_utils: Any, e: BaseException) -> Any:
    """A per-request error; ImageError messages are meant for the caller and pass through as-is."""
    from visual_search.errors import describe, public_message
    from visual_search.preprocess import ImageError

    msg = public_message(str(e)) if isinstance(e, ImageError) else describe(e)
    code = pb_utils.TritonError.INVALID_ARG if isinstance(e, ImageError | ValueError) else None
    if code is None:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(msg))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(msg, code))


def input_array(pb_utils: Any, request: Any, name: str) -> np.ndarray | None:
    """An input as numpy, or None where an optional input was not sent."""
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def image_bytes(pb_utils: Any, request: Any, name: str) -> bytes:
    """The single encoded image of a BYTES [1] input."""
    a = input_array(pb_utils, request, name)
    if a is None or a.size != 1:
        raise ValueError(f"{name} must hold exactly one encoded image")
    v = a.reshape(-1)[0]
    return bytes(v) if not isinstance(v, bytes) else v


def run_batched(
    pb_utils: Any,
    requests: Sequence[Any],
    input_name: str,
    output_name: str,
    run: Callable[[np.ndarray], np.ndarray],
) -> list[Any]:
    """Concatenate every request's batch, run the model once, split the result back.

    Triton's dynamic batcher hands the python backend a list of requests but does not merge
    their tensors; this is where the batching actually pays off. Requests whose input is
    malformed get their own error and are left out of the shared run.
    """
    arrays: list[np.ndarray | None] = []
    responses: list[Any] = [None] * len(requests)
    for i, request in enumerate(requests):
        try:
            a = input_array(pb_utils, request, input_name)
            if a is None or a.ndim < 2 or a.shape[0] < 1:
                raise ValueError(f"{input_name} must be a non-empty batch")
            arrays.append(a)
        except Exception as e:  # noqa: BLE001
            arrays.append(None)
            responses[i] = error_response(pb_utils, e)
    good = [a for a in arrays if a is not None]
    if good:
        try:
            out = run(np.concatenate(good, axis=0) if len(good) > 1 else good[0])
            start = 0
            for i, a in enumerate(arrays):
                if a is None:
                    continue
                part = out[start : start + a.shape[0]]
                start += a.shape[0]
                tensor = pb_utils.Tensor(output_name, np.ascontiguousarray(part))
                responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
        except Exception as e:  # noqa: BLE001 - e.g. shapes that do not concatenate: retry singly
            if len(good) == 1:
                return [r if r is not None else error_response(pb_utils, e) for r in responses]
            for i, a in enumerate(arrays):
                if a is None:
                    continue
                try:
                    tensor = pb_utils.Tensor(output_name, np.ascontiguousarray(run(a)))
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
                except Exception as e1:  # noqa: BLE001
                    responses[i] = error_response(pb_utils, e1)
    return responses


class OnnxModel:
    """Base of the CPU flavour's ONNX models (detector, encoder): one onnxruntime session, every
    request of a dynamic batch run as one onnxruntime batch. Subclasses name their tensors."""

    input_name: str
    output_name: str
    output_dtype: Any = np.float32

    def initialize(self, args: dict[str, str]) -> None:
        _, params, version_dir = parse_args(args)
        threads = int(params.get("intra_op_threads", "2"))
        self.session = ort_session(os.path.join(version_dir, "model.onnx"), threads)

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return np.asarray(out, self.output_dtype)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]  # stub only

        return run_batched(pb_utils, requests, self.input_name, self.output_name, self.run)
