"""run_batched / respond_each with a stand-in pb_utils: one bad request in a batch gets its own
error, the others their own slice of the shared run."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from visual_search.preprocess import ImageError
from visual_search.triton.pbmodel import respond_each, run_batched


class _Err:
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, msg: str, code: str | None = None) -> None:
        self.msg, self.code = msg, code


class _Resp:
    def __init__(self, output_tensors: list[Any] | None = None, error: _Err | None = None) -> None:
        self.tensors = {t.name: t.value for t in output_tensors or []}
        self.error = error


PB = SimpleNamespace(
    TritonError=_Err,
    InferenceResponse=_Resp,
    Tensor=lambda name, value: SimpleNamespace(name=name, value=value),
    get_input_tensor_by_name=lambda req, name: (
        None if name not in req else SimpleNamespace(as_numpy=lambda: req[name])
    ),
)


def test_run_batched_isolates_bad_requests() -> None:
    calls: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        return x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True)

    reqs = [{"x": np.ones((2, 3))}, {"x": np.ones((1,))}, {}, {"x": np.full((1, 3), 2.0)}]
    out = run_batched(PB, reqs, "x", "y", run)
    assert calls == [3], "good requests ran as one batch"
    assert out[0].error is None and out[0].tensors["y"].tolist() == [[3.0], [3.0]]
    assert out[1].error is not None and out[2].error is not None
    assert out[3].tensors["y"].tolist() == [[6.0]]


def test_run_batched_falls_back_to_single_runs() -> None:
    def run(x: np.ndarray) -> np.ndarray:
        if np.isnan(x).any():
            raise RuntimeError("model failed")
        return x[:, :1]

    reqs = [{"x": np.ones((1, 3))}, {"x": np.full((1, 3), np.nan)}, {"x": np.zeros((1, 3))}]
    out = run_batched(PB, reqs, "x", "y", run)
    assert [o.error is None for o in out] == [True, False, True]
    assert "model failed" in out[1].error.msg


def test_respond_each_keeps_image_errors_verbatim() -> None:
    def handle(req: dict[str, Any]) -> dict[str, np.ndarray]:
        if req.get("bad"):
            raise ImageError("image is empty (0 bytes)")
        return {"y": np.zeros(1)}

    out = respond_each(PB, [{"bad": True}, {}], handle)
    assert out[0].error.msg == "image is empty (0 bytes)" and out[0].error.code == "INVALID_ARG"
    assert out[1].error is None
