"""The gateway's view of Triton: detect / embed / detect_and_embed with per-call deadlines.

Wraps engineer C's ensembles (visual_search.triton) and adds what the gateway needs on top:
the caller's remaining deadline becomes Triton's client timeout, detections come back ordered by
salience (confidence x area / image area; the first one is the default box, R1), and embedding
norms are observed for drift monitoring.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from visual_search import preprocess
from visual_search.triton import client as tc
from visual_search.triton import names as N

log = logging.getLogger("visual_search.gateway.embedder")

InferenceError = tc.InferenceError


def inference_status(e: InferenceError) -> grpc.StatusCode:
    """Map a Triton failure to the status the caller sees (the image was validated before)."""
    s = (e.status or "").upper()
    if "DEADLINE" in s:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if "INVALID" in s:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class Objects:
    """Detections of one photo, most salient first."""

    boxes: np.ndarray  # [N, 4] float32 pixels
    scores: np.ndarray  # [N]
    classes: np.ndarray  # [N] int
    salience: np.ndarray  # [N]
    embeddings: np.ndarray | None = None  # [N, D] float32 (detect_and_embed only)
    image_embedding: np.ndarray | None = None  # [D] float32 whole image

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def order_by_salience(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, width: int, height: int,
    embeddings: np.ndarray | None = None, image_embedding: np.ndarray | None = None,
) -> Objects:
    sal = preprocess.salience(boxes, scores, width, height)
    order = np.argsort(-sal, kind="stable")
    return Objects(
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4)[order],
        scores=np.asarray(scores, np.float32).reshape(-1)[order],
        classes=np.asarray(classes).reshape(-1)[order].astype(np.int64),
        salience=sal[order],
        embeddings=None if embeddings is None else np.asarray(embeddings, np.float32)[order],
        image_embedding=None if image_embedding is None else np.asarray(image_embedding, np.float32),
    )


class Embedder(Protocol):
    async def detect(self, image: bytes, width: int, height: int, timeout: float) -> Objects: ...
    async def embed(self, image: bytes, box: Sequence[float] | None, timeout: float) -> np.ndarray: ...
    async def detect_and_embed(self, image: bytes, width: int, height: int, timeout: float) -> Objects: ...
    async def detect_and_embed_default(
        self, image: bytes, width: int, height: int, timeout: float
    ) -> tuple[Objects, np.ndarray]: ...
    async def detect_and_embed_default_whole(
        self, image: bytes, width: int, height: int, timeout: float
    ) -> tuple[Objects, np.ndarray]: ...
    async def model_version(self) -> str: ...
    async def close(self) -> None: ...


class TritonEmbedder:
    """Embedder over Triton gRPC (one aio channel, shared by all requests)."""

    def __init__(self, url: str, on_vector: Any = None) -> None:
        self.url = url
        self._c = aioclient.InferenceServerClient(url)
        self._on_vector = on_vector  # callable(norm) for the drift histogram

    async def _infer(self, model: str, image: bytes, box: Sequence[float] | None, timeout: float) -> Any:
        try:
            r = await self._c.infer(**tc._request(model, image, box, max(0.001, timeout)))
        except InferenceServerException as e:
            err = tc._error(model, e)
            # one structured line per failed Triton call; no image, box or message content
            log.warning(
                "triton call failed",
                extra={
                    "event": "triton_call_failed",
                    "model": model,
                    "status": err.status or "",
                    "url": self.url,
                },
            )
            raise err from None
        return tc._parse(model, r)

    def _observe(self, vecs: np.ndarray) -> None:
        if self._on_vector is not None and vecs.size:
            for n in np.linalg.norm(vecs.reshape(-1, vecs.shape[-1]).astype(np.float32), axis=1):
                self._on_vector(float(n))

    async def detect(self, image: bytes, width: int, height: int, timeout: float) -> Objects:
        d = await self._infer(N.DETECT, image, None, timeout)
        return order_by_salience(d.boxes, d.scores, d.classes, width, height)

    async def embed(self, image: bytes, box: Sequence[float] | None, timeout: float) -> np.ndarray:
        v = np.asarray(await self._infer(N.EMBED, image, box, timeout), np.float32).reshape(-1)
        self._observe(v)
        return v

    async def detect_and_embed(self, image: bytes, width: int, height: int, timeout: float) -> Objects:
        d = await self._infer(N.DETECT_AND_EMBED, image, None, timeout)
        self._observe(np.asarray(d.embeddings))
        self._observe(np.asarray(d.image_embedding))
        return order_by_salience(
            d.boxes, d.scores, d.classes, width, height, d.embeddings, d.image_embedding
        )

    async def detect_and_embed_default(
        self, image: bytes, width: int, height: int, timeout: float
    ) -> tuple[Objects, np.ndarray]:
        """Detections (most salient first) + the embedding of objects[0], or of the whole image if none.

        One Triton round trip: Triton picks the box with preprocess.default_box_index, which agrees
        with order_by_salience's first element by construction.
        """
        d = await self._infer(N.DETECT_AND_EMBED_DEFAULT, image, None, timeout)
        vec = np.asarray(d.embedding, np.float32).reshape(-1)
        self._observe(vec)
        return order_by_salience(d.boxes, d.scores, d.classes, width, height), vec

    async def detect_and_embed_default_whole(
        self, image: bytes, width: int, height: int, timeout: float
    ) -> tuple[Objects, np.ndarray]:
        """Detections (most salient first) + float32 [M, D]: objects[0]'s embedding then the whole
        image's (M = 2), or the whole image's alone (M = 1) when nothing was detected.

        One Triton round trip, one encoder batch; the "max" query strategy searches both rows.
        """
        model = N.DETECT_AND_EMBED_DEFAULT_WHOLE
        d = await self._infer(model, image, None, timeout)
        vecs = np.asarray(d.embeddings, np.float32)
        objs = order_by_salience(d.boxes, d.scores, d.classes, width, height)
        want = 2 if len(objs) else 1
        if vecs.ndim != 2 or vecs.shape[0] != want:  # a repository not matching this gateway
            raise InferenceError(model, f"returned {vecs.shape[0]} embeddings for {len(objs)} detections; "
                                 f"expected {want}")
        self._observe(vecs)
        return objs, vecs

    async def model_version(self) -> str:
        cfg = await self._c.get_model_config(N.EMBED, as_json=True)
        params = cfg["config"].get("parameters", {})
        return str(params.get(N.ENCODER_VERSION_PARAM, {}).get("string_value", ""))

    async def is_ready(self) -> bool:
        try:
            return bool(await self._c.is_server_ready())
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await self._c.close()
