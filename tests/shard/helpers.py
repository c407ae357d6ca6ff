"""Shared builders for shard tests."""

from __future__ import annotations

import numpy as np

from visual_search import contract, ids
from visual_search.v1 import shard_pb2 as pb

DIM = contract.EMBEDDING_DIM
MODEL = "test-model-v1"


def unit_vectors(n: int, seed: int = 0, clusters: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if clusters:
        centers = rng.standard_normal((clusters, DIM)).astype(np.float32)
        v = centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    else:
        v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def f16(v: np.ndarray) -> bytes:
    return v.astype("<f2").tobytes()


def make_item(
    item_id: str,
    vecs: np.ndarray,
    *,
    category: str = "shoes",
    price: float = 10.0,
    available: bool = True,
    region: str = "eu",
    attrs: dict[str, str] | None = None,
) -> pb.Item:
    vecs = np.atleast_2d(vecs)
    return pb.Item(
        item_id=item_id,
        metadata=pb.ItemMetadata(
            category=category, price=price, available=available, region=region, attributes=attrs or {}
        ),
        entries=[pb.Entry(entry_id=ids.entry_id(item_id, j), vector_f16=f16(v)) for j, v in enumerate(vecs)],
    )


def catalog(n: int, seed: int = 0, start: int = 0) -> tuple[list[pb.Item], np.ndarray]:
    """n single-entry items with varied metadata; item i has category c{i%5}, price i, region r{i%3}."""
    vecs = unit_vectors(n, seed)
    items = [
        make_item(
            f"item-{start + i}",
            vecs[i],
            category=f"c{(start + i) % 5}",
            price=float(start + i),
            available=(start + i) % 2 == 0,
            region=f"r{(start + i) % 3}",
            attrs={"color": ["red", "blue"][(start + i) % 2]},
        )
        for i in range(n)
    ]
    return items, vecs


def query(v: np.ndarray) -> pb.QueryVector:
    return pb.QueryVector(vector_f16=f16(v))


def upsert_req(items: list[pb.Item], model: str = MODEL) -> pb.UpsertRequest:
    return pb.UpsertRequest(items=items, model_version=model)
