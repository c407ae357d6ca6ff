"""Re-embed the catalog through the NEW Triton into the NEW shards (cutover step 1).

Catalog source: the catalog manifest/folder `vsearch index` took (item id = image path without
extension; the shards keep no photos). Each item's metadata (price, availability, region,
attributes, pHash) is copied from the LIVE shards (Get), so edits made since indexing survive;
items the live shards no longer hold (deleted) are skipped. Items are embedded with bounded
concurrency (Triton batches them) and upserted per shard in batches to every new replica.
Progress and ETA go to stderr; finished item ids are appended to a state file after each
durable batch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from visual_search import ids
from visual_search.gateway import validation as V
from visual_search.gateway.config import ShardMap
from visual_search.gateway.embedder import TritonEmbedder
from visual_search.gateway.fanout import stamp_versions
from visual_search.gateway.ingest import build_item
from visual_search.gateway.phash import phash
from visual_search.shard import auth as shard_auth
from visual_search.shard.versions import HybridClock
from visual_search.v1 import shard_pb2, shard_pb2_grpc


@dataclass
class ReembedStats:
    total: int = 0
    resumed: int = 0  # already done in an earlier run (state file)
    embedded: int = 0
    skipped: list[str] | None = None  # not in the live shards (deleted since indexing)
    failed: dict[str, str] | None = None
    seconds: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


class _Shards:
    """Stubs of every replica of a shard map (Upsert to all replicas of the owner, Get from one)."""

    def __init__(self, spec: str) -> None:
        self.map = ShardMap.parse(spec)
        # every call carries the shard token (shard/auth.py; env VSEARCH_SHARD_TOKEN[_FILE])
        self.channels = [[shard_auth.aio_channel(a) for a in r] for r in self.map.shards]
        self.stubs = [[shard_pb2_grpc.SearchShardStub(c) for c in r] for r in self.channels]
        self.clock = HybridClock()  # one version per write for all replicas (shard/README "Replicas")

    async def get(self, item_ids: Sequence[str]) -> dict[str, shard_pb2.StoredItem]:
        by_shard: dict[int, list[str]] = {}
        for i in item_ids:
            by_shard.setdefault(ids.shard_for(i, self.map.num_shards), []).append(i)
        out: dict[str, shard_pb2.StoredItem] = {}
        for s, chunk in by_shard.items():
            resp = await self.stubs[s][0].Get(shard_pb2.GetRequest(item_ids=chunk), timeout=60)
            out.update({it.item_id: it for it in resp.items})
        return out

    async def upsert(self, shard: int, items: list[shard_pb2.Item], version: str) -> None:
        req = shard_pb2.UpsertRequest(items=items, model_version=version)
        req = stamp_versions("Upsert", req, self.clock)
        await asyncio.gather(*(stub.Upsert(req, timeout=120) for stub in self.stubs[shard]))

    async def close(self) -> None:
        for r in self.channels:
            for c in r:
                await c.close()


def _load_state(path: Path, target: dict[str, str]) -> set[str]:
    """Item ids already re-embedded for this target (same version + shards); else start over."""
    if not path.exists():
        return set()
    lines = path.read_text().splitlines()
    if not lines or json.loads(lines[0]) != target:
        raise SystemExit(f"{path} belongs to another cutover ({lines[0] if lines else 'empty'}); "
                         "remove it or pass another --state")
    return {i for line in lines[1:] for i in json.loads(line)}


async def reembed(
    catalog: Sequence[tuple[str, Path, str]], live_shards: str, new_shards: str, triton_url: str,
    new_version: str, state: Path, concurrency: int = 4, batch: int = 16,
    progress: Callable[[str], None] | None = None, stop_after: int | None = None,
) -> ReembedStats:
    """Re-embed `catalog` (item_id, photo path, category) into `new_shards`; see module doc.

    stop_after: stop after that many new items (a deliberately interrupted run, for tests).
    """
    say = progress or (lambda m: print(m, file=sys.stderr, flush=True))
    target = {"model_version": new_version, "shards": ShardMap.parse(new_shards).to_spec()}
    done = _load_state(state, target)
    if not state.exists():
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(target) + "\n")
    todo = [row for row in catalog if row[0] not in done]
    if stop_after is not None:
        todo = todo[:stop_after]
    st = ReembedStats(len(catalog), sum(1 for r in catalog if r[0] in done), skipped=[], failed={})
    live, new = _Shards(live_shards), _Shards(new_shards)
    if live.map.num_shards != new.map.num_shards:
        raise SystemExit(f"new shard map has {new.map.num_shards} shards, live {live.map.num_shards}")
    embedder = TritonEmbedder(triton_url)
    sem = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()

    async def one(item_id: str, path: Path, stored: shard_pb2.StoredItem) -> shard_pb2.Item | None:
        async with sem:
            try:
                image = path.read_bytes()
                rgb = V.decode_image(image)
                h, w = rgb.shape[:2]
                objs = await embedder.detect_and_embed(image, w, h, 120.0)
            except Exception as e:  # one bad photo must not stop the cutover: reported at the end
                assert st.failed is not None
                st.failed[item_id] = repr(e)
                return None
            assert objs.image_embedding is not None
            md = stored.metadata
            return build_item(item_id, md, objs.image_embedding, objs.boxes, objs.embeddings,
                              md.phash or phash(rgb))

    try:
        for start in range(0, len(todo), batch):
            rows = todo[start : start + batch]
            stored = await live.get([r[0] for r in rows])
            assert st.skipped is not None
            st.skipped += [r[0] for r in rows if r[0] not in stored]
            built = await asyncio.gather(*(one(i, p, stored[i]) for i, p, _c in rows if i in stored))
            by_shard: dict[int, list[shard_pb2.Item]] = {}
            for item in built:
                if item is not None:
                    by_shard.setdefault(ids.shard_for(item.item_id, new.map.num_shards), []).append(item)
            await asyncio.gather(*(new.upsert(s, items, new_version) for s, items in by_shard.items()))
            finished = [r[0] for r in rows if r[0] not in (st.failed or {})]
            with state.open("a") as f:  # only after the upserts are durable on every replica
                f.write(json.dumps(finished) + "\n")
            st.embedded += sum(len(v) for v in by_shard.values())
            n = start + len(rows)
            rate = n / (time.monotonic() - t0)
            say(f"re-embedded {n}/{len(todo)} (+{st.resumed} earlier) {rate:.1f} items/s, "
                f"ETA {(len(todo) - n) / rate if rate else 0:.0f}s")
    finally:
        st.seconds = time.monotonic() - t0
        await embedder.close()
        await live.close()
        await new.close()
    return st
