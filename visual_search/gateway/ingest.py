"""Indexing one catalog item: decode -> pHash -> detect_and_embed (Triton) -> entries -> upsert.

Entries (ids.entry_id): 0 = the whole image, 1..n = detected objects, most salient first (so
"more like this" can take entry 1 as the item's main object). All entries go to the owning
shard (ids.shard_for) in one Upsert per replica, which the shard applies all-or-nothing and
makes durable and searchable before answering. Any failure is reported for this item only.
"""

from __future__ import annotations

import time

import grpc
import numpy as np

from visual_search import ids
from visual_search.gateway import validation as V
from visual_search.gateway.embedder import Embedder, InferenceError, inference_status
from visual_search.gateway.fanout import ShardCallError, ShardFanout, ShardUnavailable
from visual_search.gateway.phash import phash
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


class Indexer:
    def __init__(self, embedder: Embedder | None, fanout: ShardFanout, model_version: str) -> None:
        self.embedder = embedder
        self.fanout = fanout
        self.model_version = model_version

    async def index(self, req: search_pb2.IndexItemRequest, timeout: float) -> search_pb2.IndexItemResult:
        """Index one item; never raises for the item's own problems (they go in the result)."""
        res = search_pb2.IndexItemResult(item_id=req.item_id)
        deadline = time.monotonic() + timeout
        try:
            V.check_item_id(req.item_id)
            rgb = V.decode_image(req.image)
            if self.embedder is None:
                raise V.ApiError(grpc.StatusCode.UNAVAILABLE, "indexing needs Triton (not configured)")
            h, w = rgb.shape[:2]
            res.phash = phash(rgb)
            objs = await self.embedder.detect_and_embed(req.image, w, h, deadline - time.monotonic())
            assert objs.image_embedding is not None
            item = build_item(
                req.item_id, req.metadata, objs.image_embedding, objs.boxes, objs.embeddings, res.phash
            )
            shard = ids.shard_for(req.item_id, self.fanout.num_shards)
            up = shard_pb2.UpsertRequest(items=[item], model_version=self.model_version)
            await self.fanout.write(shard, "Upsert", up, deadline)
            res.ok, res.entries, res.shard_id = True, len(item.entries), shard
        except V.ApiError as e:
            res.error_code, res.error = e.code.name, e.message
        except InferenceError as e:
            res.error_code, res.error = inference_status(e).name, f"inference failed: {e.message}"
        except ShardCallError as e:
            res.error_code, res.error = e.code.name, str(e)
        except ShardUnavailable as e:
            res.error_code, res.error = "UNAVAILABLE", str(e)
        except TimeoutError:
            res.error_code, res.error = "DEADLINE_EXCEEDED", "item not indexed before its deadline"
        return res
