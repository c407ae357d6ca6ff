"""Merge per-shard top-k lists into one global ranking (items, best entry per item)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from visual_search.v1 import shard_pb2


@dataclass
class Candidate:
    """One result item while it is re-ranked; rank_score starts as the exact score."""

    item_id: str
    entry_id: int
    score: float
    metadata: shard_pb2.ItemMetadata
    box: tuple[float, ...]
    shard_id: int
    vector: np.ndarray | None = None  # float32 unit vector (only when the shard sent it)
    rank_score: float = 0.0
    exact_match: bool = False
    duplicates: list[str] = field(default_factory=list)

    @classmethod
    def from_hit(cls, hit: shard_pb2.SearchHit, shard_id: int) -> Candidate:
        vec = None
        if hit.vector_f16:
            vec = np.frombuffer(hit.vector_f16, dtype="<f2").astype(np.float32)
        return cls(
            item_id=hit.item_id,
            entry_id=hit.entry_id,
            score=float(hit.score),
            metadata=hit.metadata,
            box=tuple(hit.box),
            shard_id=shard_id,
            vector=vec,
            rank_score=float(hit.score),
        )


def merge_topk(per_shard: Iterable[tuple[int, Iterable[shard_pb2.SearchHit]]], k: int) -> list[Candidate]:
    """Global top-k by exact score; an item seen twice (replica skew) keeps its best hit.

    Ties break on item id so the order is deterministic whatever order the shards answered in.
    """
    best: dict[str, Candidate] = {}
    for shard_id, hits in per_shard:
        for hit in hits:
            cur = best.get(hit.item_id)
            if cur is None or hit.score > cur.score:
                best[hit.item_id] = Candidate.from_hit(hit, shard_id)
    ranked = sorted(best.values(), key=lambda c: (-c.score, c.item_id))
    return ranked[: max(0, k)]


def fuse_max(per_query: Iterable[Iterable[Candidate]]) -> list[Candidate]:
    """One ranking from several query vectors' rankings: each item scores its best over the queries,
    and the hit that gave that score (entry, box, vector) goes with it. Ties keep the earlier query's
    hit; the order breaks ties on item id, as merge_topk does.

    Exact for the fused top k when each list is its query's top k: an item in the top k by
    max(s1, s2) is in the top k of the query that gives it its max.
    """
    best: dict[str, Candidate] = {}
    for cands in per_query:
        for c in cands:
            cur = best.get(c.item_id)
            if cur is None or c.score > cur.score:
                best[c.item_id] = c
    return sorted(best.values(), key=lambda c: (-c.score, c.item_id))
