"""Indexing catalog items: decode -> pHash -> detect_and_embed (Triton) -> entries -> upsert.

Entries (ids.entry_id): 0 = the whole image, 1..n = detected objects, most salient first (so
"more like this" can take entry 1 as the item's main object). All entries of an item go to the
owning shard (ids.shard_for) in the same Upsert, which the shard applies all-or-nothing and makes
durable and searchable before answering. Any failure is reported for this item only.

Bulk ingest (IndexItems) overlaps the stages: up to `index_concurrency` items are in flight, at
most `index_triton_concurrency` of them on Triton at once (its dynamic batcher then batches the
detector and encoder across items), and prepared items are written by one ShardWriter per shard
that group-commits whatever is queued (up to `index_upsert_batch` items per Upsert: one WAL fsync
for the group) while the previous group is on the wire. Order per item id is kept by the caller
(`after`): a later version of an id is written only after the earlier one's write finished.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import numpy as np

from visual_search import ids
from visual_search.errors import public_message
from visual_search.gateway import validation as V
from visual_search.gateway.cpu import CpuPool, image_info
from visual_search.gateway.embedder import Embedder, InferenceError, inference_status
from visual_search.gateway.fanout import ShardCallError, ShardFanout, ShardUnavailable, WriteOutcome
from visual_search.v1 import search_pb2, shard_pb2


def _f16(vec: np.ndarray) -> bytes:
    v = np.asarray(vec, np.float32)
    v = v / max(float(np.linalg.norm(v)), 1e-12)
    return v.astype("<f2").tobytes()


def build_item(
    item_id: str, metadata: shard_pb2.ItemMetadata, image_vec: np.ndarray,
    boxes: np.ndarray, vecs: np.ndarray | None, item_phash: int,
) -> shard_pb2.Item:
    md = shard_pb2.ItemMetadata()
    md.CopyFrom(metadata)
    md.phash = item_phash
    entries = [shard_pb2.Entry(entry_id=ids.entry_id(item_id, 0), vector_f16=_f16(image_vec))]
    n = 0 if vecs is None else min(len(boxes), ids.MAX_ENTRIES_PER_ITEM - 1)
    for i in range(n):
        assert vecs is not None
        entries.append(
            shard_pb2.Entry(
                entry_id=ids.entry_id(item_id, i + 1), vector_f16=_f16(vecs[i]),
                box=[float(x) for x in boxes[i]],
            )
        )
    return shard_pb2.Item(item_id=item_id, metadata=md, entries=entries)


@dataclass
class _Pending:
    item: shard_pb2.Item
    deadline: float
    done: asyncio.Future[WriteOutcome]


class ShardWriter:
    """Group commit per shard: one Upsert (to every replica) carries every item queued while the
    previous one was in flight, up to `max_batch`; an item's write fails alone when the shard
    refuses the group for one bad item (the group is retried item by item)."""

    def __init__(self, fanout: ShardFanout, model_version: str, max_batch: int) -> None:
        self.fanout = fanout
        self.model_version = model_version
        self.max_batch = max(1, max_batch)
        self._queued: dict[int, list[_Pending]] = {}
        self._flushers: dict[int, asyncio.Task[None]] = {}

    async def write(self, shard: int, item: shard_pb2.Item, deadline: float) -> WriteOutcome:
        """Durable (on the write quorum) when it returns; raises as ShardFanout.write does."""
        p = _Pending(item, deadline, asyncio.get_running_loop().create_future())
        self._queued.setdefault(shard, []).append(p)
        if shard not in self._flushers:
            self._flushers[shard] = asyncio.create_task(self._flush(shard))
        return await p.done

    async def _flush(self, shard: int) -> None:
        try:
            await asyncio.sleep(0)  # let items that became ready in the same loop turn join
            while self._queued.get(shard):
                queue = self._queued[shard]
                group, self._queued[shard] = queue[: self.max_batch], queue[self.max_batch :]
                await self._send(shard, group)
        finally:
            del self._flushers[shard]

    async def _send(self, shard: int, group: list[_Pending]) -> None:
        deadline = min(p.deadline for p in group)
        req = shard_pb2.UpsertRequest(items=[p.item for p in group], model_version=self.model_version)
        try:
            wrote = await self.fanout.write(shard, "Upsert", req, deadline)
        except ShardCallError as e:
            if len(group) > 1 and e.code == grpc.StatusCode.INVALID_ARGUMENT:
                for p in group:  # find the one bad item; the others are written on their own
                    await self._send(shard, [p])
                return
            self._fail(group, e)
        except Exception as e:  # noqa: BLE001 - every waiter gets the failure, the stream goes on
            self._fail(group, e)
        else:
            for p in group:
                if not p.done.done():
                    p.done.set_result(wrote)

    @staticmethod
    def _fail(group: list[_Pending], e: BaseException) -> None:
        for p in group:
            if not p.done.done():
                p.done.set_exception(e)


class Indexer:
    def __init__(
        self, embedder: Embedder | None, fanout: ShardFanout, model_version: str,
        triton_concurrency: int = 4, upsert_batch: int = 64, cpu: CpuPool | None = None,
    ) -> None:
        self.embedder = embedder
        self.fanout = fanout
        self.model_version = model_version
        self.writer = ShardWriter(fanout, model_version, upsert_batch)
        self._triton = asyncio.Semaphore(max(1, triton_concurrency))
        self.cpu = cpu or CpuPool()

    async def index(
        self, req: search_pb2.IndexItemRequest, timeout: float,
        after: Callable[[], Awaitable[object]] | None = None,
    ) -> search_pb2.IndexItemResult:
        """Index one item; never raises for the item's own problems (they go in the result).
        `after`, if given, is awaited before the write (per-id order in a stream)."""
        token = self.fanout.metrics.write_started()
        try:
            return await self._index(req, timeout, after)
        finally:
            self.fanout.metrics.write_done(token)

    async def _index(
        self, req: search_pb2.IndexItemRequest, timeout: float,
        after: Callable[[], Awaitable[object]] | None,
    ) -> search_pb2.IndexItemResult:
        res = search_pb2.IndexItemResult(item_id=req.item_id)
        deadline = time.monotonic() + timeout
        try:
            V.check_item_id(req.item_id)
            info = await self.cpu.run(image_info, req.image)  # off the event loop, bounded
            if self.embedder is None:
                raise V.ApiError(grpc.StatusCode.UNAVAILABLE, "indexing needs Triton (not configured)")
            w, h, res.phash = info.width, info.height, info.phash
            async with self._triton:
                objs = await self.embedder.detect_and_embed(req.image, w, h, deadline - time.monotonic())
            if objs.image_embedding is None:
                raise InferenceError("detect_and_embed", "no whole-image embedding in the answer")
            item = build_item(
                req.item_id, req.metadata, objs.image_embedding, objs.boxes, objs.embeddings, res.phash
            )
            shard = ids.shard_for(req.item_id, self.fanout.num_shards)
            if after is not None:
                await asyncio.wait_for(after(), max(0.0, deadline - time.monotonic()))
            wrote = await self.writer.write(shard, item, deadline)  # the shard calls carry the deadline
            res.ok, res.entries, res.shard_id = True, len(item.entries), shard
            res.replicas_written, res.replicas = len(wrote.responses), wrote.replicas
        except V.ApiError as e:
            res.error_code, res.error = e.code.name, e.message
        except InferenceError as e:
            res.error_code, res.error = inference_status(e).name, f"inference failed: {e.message}"
        except ShardCallError as e:
            res.error_code, res.error = e.code.name, public_message(str(e))
        except ShardUnavailable as e:
            res.error_code, res.error = "UNAVAILABLE", public_message(str(e))
        except TimeoutError:
            res.error_code, res.error = "DEADLINE_EXCEEDED", "item not indexed before its deadline"
        return res
