"""Real shard processes (shard 0 with two replicas, shard 1 with one) seeded with synthetic
vectors through the shard API, so gateway behaviour can be tested without Triton."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from visual_search import contract, ids
from visual_search.shard.process import ShardProcess
from visual_search.v1 import shard_pb2

MODEL = "test-model-v1"
N_ITEMS = 300


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, contract.EMBEDDING_DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@dataclass
class Cluster:
    shard0: list[ShardProcess]  # replicas of shard 0
    shard1: ShardProcess
    vectors: dict[str, np.ndarray]

    def spec(
        self, shard0_addresses: list[str] | None = None, shard1_addresses: list[str] | None = None
    ) -> str:
        s0 = shard0_addresses or [r.address for r in self.shard0]
        s1 = shard1_addresses or [self.shard1.address]
        return f"{','.join(s0)};{','.join(s1)}"

    def exact_top(self, q: np.ndarray, k: int, exclude: str = "") -> list[str]:
        """Brute-force top k item ids for q, ranked on the float16 vectors the shards store (and the
        float16 query the gateway sends): at 1024-d, near-ties in float32 would reorder."""
        ids_ = [i for i in self.vectors if i != exclude]

        def f16(x: np.ndarray) -> np.ndarray:
            return x.astype(np.float16).astype(np.float32)

        scores = f16(np.stack([self.vectors[i] for i in ids_])) @ f16(q)
        return [ids_[j] for j in np.argsort(-scores)[:k]]


def item_for(i: int, vec: np.ndarray) -> shard_pb2.Item:
    iid = f"item{i:04d}"
    md = shard_pb2.ItemMetadata(
        category=("shoes", "lamps", "bags")[i % 3],
        price=float(i % 50),
        available=i % 2 == 0,
        region=("eu", "us")[i % 2],
    )
    entry = shard_pb2.Entry(entry_id=ids.entry_id(iid, 0), vector_f16=vec.astype("<f2").tobytes())
    return shard_pb2.Item(item_id=iid, metadata=md, entries=[entry])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("cluster")
    shard0 = [ShardProcess(root / f"s0{r}", shard_id=0, model_version=MODEL) for r in "ab"]
    shard1 = ShardProcess(root / "s1", shard_id=1, model_version=MODEL)
    procs = [*shard0, shard1]
    for p in procs:
        p.start(wait=False)
    try:
        from visual_search.supervise import wait_healthy

        for p in procs:
            wait_healthy(p.address, 120, p.proc)
        vecs = unit_vectors(N_ITEMS)
        by_shard: dict[int, list[shard_pb2.Item]] = {0: [], 1: []}
        vectors = {}
        for i in range(N_ITEMS):
            item = item_for(i, vecs[i])
            vectors[item.item_id] = vecs[i]
            by_shard[ids.shard_for(item.item_id, 2)].append(item)
        for p in shard0:
            p.stub().Upsert(shard_pb2.UpsertRequest(items=by_shard[0], model_version=MODEL))
        shard1.stub().Upsert(shard_pb2.UpsertRequest(items=by_shard[1], model_version=MODEL))
        yield Cluster(shard0, shard1, vectors)
    finally:
        for p in procs:
            p.stop()
