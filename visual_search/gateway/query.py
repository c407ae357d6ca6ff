"""Turn a public Search request into query vectors: which box of which photo, or which vector.

Image queries (R1, R2): unset selection = the most salient detection (confidence x area), or the
whole image when nothing is detected; with the gateway's query strategy "max" (the default) that
box AND the whole image are searched, each item keeping its better score of the two.
`box_index` = a detection as Detect() orders them; `box` = an explicit box; `all_objects` = one
query per detection; `whole_image` = no detection at all (all four exactly as asked).
Vector queries must carry the served model version (R6). Item-id queries ("more like this") use
the item's stored vector of its most salient object (entry 1, as indexed), else the whole image.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from grpc import StatusCode

from visual_search import ids
from visual_search.gateway import validation as V
from visual_search.gateway.cpu import CpuPool, image_info
from visual_search.gateway.embedder import Embedder, Objects
from visual_search.gateway.fanout import ShardFanout
from visual_search.gateway.labels import class_name
from visual_search.v1 import search_pb2

T = TypeVar("T")
# ResultList.query_strategy of a default photo query under the "max" strategy.
MAX_DEFAULT_WHOLE = "max(default-box,whole-image)"


@dataclass
class QuerySpec:
    vector: np.ndarray  # float32 unit vector
    box: tuple[float, ...] = ()  # query-side box; () = whole image / no photo
    detection_index: int = -1
    class_name: str = ""
    strategy: str = ""  # ResultList.query_strategy: how the query side was chosen
    # More vectors searched for this same result list: each item keeps its best score over `vector`
    # and these (the "max" strategy: the default box, then the whole image here).
    also: tuple[np.ndarray, ...] = ()

    @property
    def vectors(self) -> list[np.ndarray]:
        """Every vector this result list searches, `vector` first (one shard query each)."""
        return [self.vector, *self.also]


@dataclass
class ResolvedQuery:
    specs: list[QuerySpec]
    triton_s: float = 0.0
    query_phash: int = 0
    exclude_item: str | None = None
    stage_s: dict[str, float] = field(default_factory=dict)  # decode/detect/embed wall time


def _spec_from_object(objs: Objects, i: int, vec: np.ndarray, strategy: str) -> QuerySpec:
    return QuerySpec(
        vector=vec,
        box=tuple(float(v) for v in objs.boxes[i]),
        detection_index=i,
        class_name=class_name(int(objs.classes[i])),
        strategy=strategy,
    )


async def _resolve_image(
    q: search_pb2.ImageQuery, embedder: Embedder | None, deadline: float, single_call_default: bool,
    cpu: CpuPool, query_strategy: str = "max",
) -> ResolvedQuery:
    stages: dict[str, float] = {}  # decode / detect / embed seconds, for the stage histogram

    async def timed(stage: str, call: Awaitable[T]) -> T:
        t = time.monotonic()
        try:
            return await call
        finally:
            stages[stage] = stages.get(stage, 0.0) + time.monotonic() - t

    t_dec = time.monotonic()
    info = await cpu.run(image_info, q.image)  # decode + pHash in the bounded pool, off the loop
    w, h = info.width, info.height
    stages["decode"] = time.monotonic() - t_dec
    if embedder is None:
        raise V.ApiError(StatusCode.UNAVAILABLE, "image queries need Triton, which this gateway has not got")
    t0 = time.monotonic()
    sel = q.WhichOneof("selection")

    def left() -> float:
        return deadline - time.monotonic()

    specs: list[QuerySpec]
    if sel == "whole_image":
        vec = await timed("embed", embedder.embed(q.image, None, left()))
        specs = [QuerySpec(vec, strategy="whole-image")]
    elif sel == "box":
        box = V.check_box(q.box, w, h)
        vec = await timed("embed", embedder.embed(q.image, box.tolist(), left()))
        specs = [QuerySpec(vec, tuple(map(float, box)), strategy="box")]
    elif sel == "all_objects":
        objs = await timed("detect", embedder.detect_and_embed(q.image, w, h, left()))
        if len(objs) and objs.embeddings is not None:
            specs = [_spec_from_object(objs, i, objs.embeddings[i], "all-objects") for i in range(len(objs))]
        else:
            assert objs.image_embedding is not None
            specs = [QuerySpec(objs.image_embedding, strategy="whole-image")]
    elif sel is None and single_call_default and query_strategy == "max":
        # Default box and whole image, both embedded in one Triton round trip (one encoder batch).
        objs, vecs = await timed("detect", embedder.detect_and_embed_default_whole(q.image, w, h, left()))
        if len(objs):
            spec = _spec_from_object(objs, 0, vecs[0], MAX_DEFAULT_WHOLE)
            spec.also = (vecs[1],)
            specs = [spec]
        else:
            specs = [QuerySpec(vecs[0], strategy="whole-image")]
    elif sel is None and single_call_default:
        # Default box: detections and the chosen box's embedding in one Triton round trip.
        objs, vec = await timed("detect", embedder.detect_and_embed_default(q.image, w, h, left()))
        specs = [_spec_from_object(objs, 0, vec, "default-box") if len(objs)
                 else QuerySpec(vec, strategy="whole-image")]
    else:
        objs = await timed("detect", embedder.detect(q.image, w, h, left()))
        idx = int(q.box_index) if sel == "box_index" else 0
        if sel == "box_index" and idx >= len(objs):
            raise V.invalid(f"box_index {idx} out of range: the photo has {len(objs)} detected objects")
        if len(objs):
            vec = await timed("embed", embedder.embed(q.image, objs.boxes[idx].tolist(), left()))
            specs = [_spec_from_object(objs, idx, vec, "box-index" if sel == "box_index" else "default-box")]
        else:
            vec = await timed("embed", embedder.embed(q.image, None, left()))
            specs = [QuerySpec(vec, strategy="whole-image")]
    triton_s = time.monotonic() - t0
    return ResolvedQuery(specs, triton_s=triton_s, query_phash=info.phash, stage_s=stages)


async def _resolve_item(item_id: str, fanout: ShardFanout, deadline: float) -> ResolvedQuery:
    V.check_item_id(item_id)
    resp = await fanout.get(item_id, deadline, include_vectors=True)
    if not resp.items:
        raise V.ApiError(StatusCode.NOT_FOUND, f"item {item_id!r} is not indexed")
    item = resp.items[0]
    by_id = {e.entry_id: e for e in item.entries}
    entry = by_id.get(ids.entry_id(item_id, 1)) or by_id.get(ids.entry_id(item_id, 0)) or item.entries[0]
    if entry.vector_f16:
        vec = np.frombuffer(entry.vector_f16, dtype="<f2").astype(np.float32)
    else:
        vec = np.asarray(entry.vector_f32, np.float32)
    vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
    return ResolvedQuery(
        [QuerySpec(vec, tuple(entry.box), strategy="item")],
        query_phash=int(item.metadata.phash),
        exclude_item=item_id,
    )


async def resolve(
    req: search_pb2.QueryRequest,
    embedder: Embedder | None,
    fanout: ShardFanout,
    served_version: str,
    deadline: float,
    single_call_default: bool = True,
    cpu: CpuPool | None = None,
    query_strategy: str = "max",
) -> ResolvedQuery:
    kind = req.WhichOneof("query")
    if kind == "image":
        pool = cpu or CpuPool(inline=True)
        return await _resolve_image(req.image, embedder, deadline, single_call_default, pool, query_strategy)
    if kind == "vector":
        t = time.monotonic()
        vec = V.decode_query_vector(req.vector, served_version)
        return ResolvedQuery([QuerySpec(vec, strategy="vector")], stage_s={"decode": time.monotonic() - t})
    if kind == "item_id":
        return await _resolve_item(req.item_id, fanout, deadline)
    raise V.invalid("query is empty: set image, vector or item_id")
