"""Typed wrappers around tritonclient.grpc (sync) and tritonclient.grpc.aio for the ensembles.

Results are numpy arrays in original image pixels; server-side failures (a corrupt image, a
box outside the image) come back as InferenceError with Triton's message, so callers can
show the reason instead of a gRPC stack trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from visual_search.errors import public_message
from visual_search.triton import names as N


class InferenceError(RuntimeError):
    """A request Triton refused or failed; `message` is the server's reason."""

    def __init__(self, model: str, message: str, status: str | None = None) -> None:
        super().__init__(f"{model}: {message}")
        self.model, self.message, self.status = model, message, status


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # [N, 4] float32 x1, y1, x2, y2 in original image pixels
    scores: np.ndarray  # [N] float32
    classes: np.ndarray  # [N] int32 COCO ids


@dataclass(frozen=True)
class DetectionsWithDefaultEmbedding(Detections):
    embedding: np.ndarray  # [D] float16: the default (most salient) box, or the whole image if none


@dataclass(frozen=True)
class DetectionsWithDefaultWholeEmbeddings(Detections):
    # [M, D] float16: row 0 the default box, row 1 the whole image; M = 1 (whole image) if no box
    embeddings: np.ndarray


@dataclass(frozen=True)
class DetectionsWithEmbeddings(Detections):
    embeddings: np.ndarray  # [N, D] float16, one per object
    image_embedding: np.ndarray  # [D] float16, the whole image


def _image_input(image: bytes, mod: Any) -> Any:
    if not isinstance(image, bytes | bytearray | memoryview):
        raise TypeError(f"image must be encoded bytes, got {type(image).__name__}")
    t = mod.InferInput(N.IMAGE, [1], "BYTES")
    t.set_data_from_numpy(np.array([bytes(image)], dtype=np.object_))
    return t


def _inputs(model: str, image: bytes, box: Sequence[float] | None, mod: Any) -> list[Any]:
    inputs = [_image_input(image, mod)]
    if box is not None:
        b = np.asarray(box, np.float32).reshape(-1)
        if b.size != 4:
            raise ValueError(f"box must be 4 numbers x1,y1,x2,y2; got {b.size}")
        t = mod.InferInput(N.BOX, [4], "FP32")
        t.set_data_from_numpy(b)
        inputs.append(t)
    return inputs


def _outputs(model: str, mod: Any) -> list[Any]:
    names = {
        N.DETECT: (N.BOXES, N.SCORES, N.CLASSES),
        N.EMBED: (N.EMBEDDING,),
        N.DETECT_AND_EMBED: (N.BOXES, N.SCORES, N.CLASSES, N.EMBEDDINGS, N.IMAGE_EMBEDDING),
        N.DETECT_AND_EMBED_DEFAULT: (N.BOXES, N.SCORES, N.CLASSES, N.EMBEDDING),
        N.DETECT_AND_EMBED_DEFAULT_WHOLE: (N.BOXES, N.SCORES, N.CLASSES, N.EMBEDDING),
    }[model]
    return [mod.InferRequestedOutput(n) for n in names]


def _parse(model: str, result: Any) -> Any:
    def get(name: str) -> np.ndarray:
        a = result.as_numpy(name)
        if a is None:
            raise InferenceError(model, f"response lacks output {name}")
        return np.asarray(a)

    if model == N.EMBED:
        return get(N.EMBEDDING).reshape(-1)
    det = (get(N.BOXES).reshape(-1, 4), get(N.SCORES).reshape(-1), get(N.CLASSES).reshape(-1))
    if model == N.DETECT:
        return Detections(*det)
    if model == N.DETECT_AND_EMBED_DEFAULT:
        return DetectionsWithDefaultEmbedding(*det, get(N.EMBEDDING).reshape(-1))
    if model == N.DETECT_AND_EMBED_DEFAULT_WHOLE:
        emb = get(N.EMBEDDING)
        return DetectionsWithDefaultWholeEmbeddings(*det, emb.reshape(-1, emb.shape[-1]))
    emb = get(N.EMBEDDINGS)
    return DetectionsWithEmbeddings(*det, emb.reshape(-1, emb.shape[-1]), get(N.IMAGE_EMBEDDING).reshape(-1))


def _request(model: str, image: bytes, box: Sequence[float] | None, timeout_s: float) -> dict[str, Any]:
    """Keyword arguments of InferenceServerClient.infer (sync and aio take the same ones)."""
    return {
        "model_name": model,
        "inputs": _inputs(model, image, box, grpcclient),
        "outputs": _outputs(model, grpcclient),
        "client_timeout": timeout_s,
    }


def _error(model: str, e: InferenceServerException) -> InferenceError:
    return InferenceError(model, public_message(e.message() or str(e)), e.status())


class TritonClient:
    """Blocking client: detect / embed / detect_and_embed on one gRPC channel."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.url, self.timeout_s = url, timeout_s
        self._c = grpcclient.InferenceServerClient(url)

    def _infer(self, model: str, image: bytes, box: Sequence[float] | None = None) -> Any:
        try:
            r = self._c.infer(**_request(model, image, box, self.timeout_s))
        except InferenceServerException as e:
            raise _error(model, e) from None
        return _parse(model, r)

    def detect(self, image: bytes) -> Detections:
        result: Detections = self._infer(N.DETECT, image)
        return result

    def embed(self, image: bytes, box: Sequence[float] | None = None) -> np.ndarray:
        """One float16 [D] embedding of the image, or of `box` (x1,y1,x2,y2 pixels) inside it."""
        result: np.ndarray = self._infer(N.EMBED, image, box)
        return result

    def detect_and_embed(self, image: bytes) -> DetectionsWithEmbeddings:
        result: DetectionsWithEmbeddings = self._infer(N.DETECT_AND_EMBED, image)
        return result

    def detect_and_embed_default(self, image: bytes) -> DetectionsWithDefaultEmbedding:
        """Detections + the embedding of the default box (whole image if none), in one round trip."""
        result: DetectionsWithDefaultEmbedding = self._infer(N.DETECT_AND_EMBED_DEFAULT, image)
        return result

    def detect_and_embed_default_whole(self, image: bytes) -> DetectionsWithDefaultWholeEmbeddings:
        """Detections + [default box, whole image] embeddings (whole image alone if no box), one trip."""
        result: DetectionsWithDefaultWholeEmbeddings = self._infer(N.DETECT_AND_EMBED_DEFAULT_WHOLE, image)
        return result

    def encoder_version(self, model: str = N.EMBED) -> str:
        """The encoder version the serving repository reports (config parameter)."""
        cfg = self._c.get_model_config(model, as_json=True)["config"]
        return str(cfg.get("parameters", {}).get(N.ENCODER_VERSION_PARAM, {}).get("string_value", ""))

    def statistics(self, model: str = "") -> dict[str, Any]:
        stats: dict[str, Any] = self._c.get_inference_statistics(model, as_json=True)
        return stats

    def is_ready(self) -> bool:
        try:
            return bool(self._c.is_server_ready())
        except InferenceServerException:
            return False

    def close(self) -> None:
        self._c.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTritonClient:
    """asyncio client (tritonclient.grpc.aio): the same calls, awaitable."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.url, self.timeout_s = url, timeout_s
        self._c = aioclient.InferenceServerClient(url)

    async def _infer(self, model: str, image: bytes, box: Sequence[float] | None = None) -> Any:
        try:
            r = await self._c.infer(**_request(model, image, box, self.timeout_s))
        except InferenceServerException as e:
            raise _error(model, e) from None
        return _parse(model, r)

    async def detect(self, image: bytes) -> Detections:
        result: Detections = await self._infer(N.DETECT, image)
        return result

    async def embed(self, image: bytes, box: Sequence[float] | None = None) -> np.ndarray:
        result: np.ndarray = await self._infer(N.EMBED, image, box)
        return result

    async def detect_and_embed(self, image: bytes) -> DetectionsWithEmbeddings:
        result: DetectionsWithEmbeddings = await self._infer(N.DETECT_AND_EMBED, image)
        return result

    async def detect_and_embed_default(self, image: bytes) -> DetectionsWithDefaultEmbedding:
        result: DetectionsWithDefaultEmbedding = await self._infer(N.DETECT_AND_EMBED_DEFAULT, image)
        return result

    async def detect_and_embed_default_whole(self, image: bytes) -> DetectionsWithDefaultWholeEmbeddings:
        model = N.DETECT_AND_EMBED_DEFAULT_WHOLE
        result: DetectionsWithDefaultWholeEmbeddings = await self._infer(model, image)
        return result

    async def infer(self, model: str, image: bytes, box: Sequence[float] | None = None) -> Any:
        """Dispatch by ensemble name (used by the benchmark)."""
        return await self._infer(model, image, box)

    async def close(self) -> None:
        await self._c.close()

    async def __aenter__(self) -> AsyncTritonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
