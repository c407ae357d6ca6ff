"""In-process tests of the shard engine: search semantics, freshness, filters, rebuild, recovery."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.shard.helpers import DIM, MODEL, catalog, make_item, unit_vectors, upsert_req
from visual_search import ids
from visual_search.shard import snapshot as snap
from visual_search.shard.engine import EngineConfig, ShardEngine, StampMismatch
from visual_search.shard.filters import compile_filter
from visual_search.shard.index import IndexConfig, choose_nlist
from visual_search.v1 import shard_pb2 as pb


def cfg(threshold: int = 1_000_000, pq_bits: int = 4, **kw: object) -> EngineConfig:
    """Tests train fast-scan PQ32x4fs: PQ32x8 training takes seconds to minutes on busy cores."""
    index = IndexConfig(train_threshold=threshold, max_train_points=20_000, pq_bits=pq_bits)
    return EngineConfig(index=index, **kw)  # type: ignore[arg-type]


def open_engine(path: Path, **kw: object) -> ShardEngine:
    return ShardEngine(path, shard_id=0, model_version=MODEL, dim=DIM, config=cfg(**kw))  # type: ignore[arg-type]


def top_ids(eng: ShardEngine, q: np.ndarray, k: int = 10, **kw: object) -> list[str]:
    res, _ = eng.search(q[None, :], k, **kw)  # type: ignore[arg-type]
    return [h.item_id for h in res[0]]


def exact_top(vecs: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[int]:
    s = vecs @ q
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    return [int(i) for i in np.argsort(-s)[:k] if np.isfinite(s[i])]


def filt(*clauses: pb.FilterClause) -> pb.Filter:
    return pb.Filter(clauses=list(clauses))


@pytest.fixture
def eng(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = open_engine(tmp_path / "d")
    yield e
    e.close(final_snapshot=False)


def test_search_returns_self_first_with_exact_score(eng: ShardEngine) -> None:
    items, vecs = catalog(500)
    eng.upsert(upsert_req(items))
    for i in (0, 17, 499):
        res, _ = eng.search(vecs[i][None, :], 5)
        assert res[0][0].item_id == f"item-{i}"
        expected = float(vecs[i].astype(np.float16).astype(np.float32) @ vecs[i])
        assert res[0][0].score == pytest.approx(expected, abs=1e-5)
        assert [h.item_id for h in res[0]] == [f"item-{j}" for j in exact_top(vecs, vecs[i], 5)]


def test_results_are_items_best_entry_wins(eng: ShardEngine) -> None:
    v = unit_vectors(6, seed=3)
    eng.upsert(upsert_req([make_item("multi", v[:3]), make_item("single", v[3])]))
    res, _ = eng.search(v[1][None, :], 10)
    hits = res[0]
    assert [h.item_id for h in hits].count("multi") == 1
    assert hits[0].item_id == "multi" and hits[0].entry_id == ids.entry_id("multi", 1)
    assert len(hits) == 2


def test_replace_and_delete_take_effect_immediately(eng: ShardEngine) -> None:
    items, vecs = catalog(200)
    eng.upsert(upsert_req(items))
    new = unit_vectors(1, seed=99)[0]
    eng.upsert(upsert_req([make_item("item-5", new, category="bags")]))
    assert top_ids(eng, new, 1) == ["item-5"]
    assert "item-5" not in top_ids(eng, vecs[5], 3)
    got, _ = eng.get(["item-5"], include_vectors=False)
    assert got[0].metadata.category == "bags" and len(got[0].entries) == 1
    deleted, not_found, _, _ = eng.delete(["item-5", "nope"])
    assert (deleted, not_found) == (1, ["nope"])
    assert "item-5" not in top_ids(eng, new, 10)
    assert eng.stats()["items"] == 199
    assert eng.tombstones == 2  # the replaced and the deleted vector still sit in the index


FILTER_CASES = [
    (pb.FilterClause(field="category", equals="c2"), lambda i: i % 5 == 2),
    (pb.FilterClause(field="region", in_set=pb.StringSet(values=["r0", "r1"])), lambda i: i % 3 != 2),
    (pb.FilterClause(field="price", range=pb.Range(min=100, max=250)), lambda i: 100 <= i <= 250),
    (pb.FilterClause(field="price", range=pb.Range(max=30)), lambda i: i <= 30),
    (pb.FilterClause(field="available", bool_equals=False), lambda i: i % 2 == 1),
    (pb.FilterClause(field="attr.color", equals="red"), lambda i: i % 2 == 0),
    (pb.FilterClause(field="attr.size", equals="xl"), lambda i: False),
]


@pytest.mark.parametrize("clause,pred", FILTER_CASES)
def test_filters_exact_subset(eng: ShardEngine, clause: pb.FilterClause, pred) -> None:  # type: ignore[no-untyped-def]
    items, vecs = catalog(1000)
    eng.upsert(upsert_req(items))
    allowed = np.array([pred(i) for i in range(1000)])
    q = unit_vectors(1, seed=7)[0]
    got = top_ids(eng, q, 10, flt=compile_filter(filt(clause)))
    assert got == [f"item-{i}" for i in exact_top(vecs, q, 10, allowed)]


def test_selective_filter_on_ivfpq_never_short(tmp_path: Path) -> None:
    """rescore_k tiny + a 1%-selective filter: over-fetch / exact fallback must still fill k."""
    eng = open_engine(tmp_path / "d", threshold=2000, exact_subset_max=5)
    items, vecs = catalog(4000, seed=1)
    eng.upsert(upsert_req(items))
    eng.rebuild(wait=True)
    assert eng.index.trained
    flt = compile_filter(filt(pb.FilterClause(field="price", range=pb.Range(min=0, max=39))))
    for seed in range(5):
        q = unit_vectors(1, seed=100 + seed)[0]
        got = top_ids(eng, q, 20, rescore_k=20, nprobe=1, flt=flt)
        assert len(got) == 20
        assert all(int(g.split("-")[1]) <= 39 for g in got)
    eng.close(final_snapshot=False)


@pytest.mark.parametrize("pq_bits", [4, pytest.param(8, marks=pytest.mark.slow)])
def test_training_transition_and_recall(tmp_path: Path, pq_bits: int) -> None:
    eng = open_engine(tmp_path / "d", threshold=3000, pq_bits=pq_bits)
    vecs = unit_vectors(4000, seed=2, clusters=40)  # IVF needs structure; uniform 256-d has none
    items = [make_item(f"item-{i}", v) for i, v in enumerate(vecs)]
    eng.upsert(upsert_req(items))
    assert not eng.index.trained and eng.rebuild_due()
    started, msg = eng.rebuild(wait=True)
    assert started and eng.index.trained, msg
    suffix = "x4fs" if pq_bits == 4 else ""
    pca = f"PCA{IndexConfig.pca_dim}," if DIM > IndexConfig.pca_dim > 0 else ""  # wide vectors: PCA first
    assert eng.index.description == f"{pca}IVF{choose_nlist(4000)},PQ32{suffix}"
    assert eng.tombstones == 0 and eng.rebuild_due() is None
    qs = vecs[:30] + 0.1 * unit_vectors(30, seed=5)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    hits = sum(
        len(set(top_ids(eng, q, 10, nprobe=16)) & {f"item-{i}" for i in exact_top(vecs, q, 10)}) for q in qs
    )
    assert hits / 300 >= 0.9
    eng.close(final_snapshot=False)


def test_policy_trains_in_background(tmp_path: Path) -> None:
    eng = open_engine(tmp_path / "d", threshold=2000, policy_interval_s=0.05)
    eng.start_policy()
    items, _ = catalog(2500)
    eng.upsert(upsert_req(items))
    deadline = time.monotonic() + 60
    while not eng.index.trained and time.monotonic() < deadline:
        time.sleep(0.05)
    assert eng.index.trained
    eng.close(final_snapshot=False)


def test_rebuild_while_querying_and_writing(tmp_path: Path) -> None:
    eng = open_engine(tmp_path / "d", threshold=2000)
    items, vecs = catalog(3000)
    eng.upsert(upsert_req(items))
    errors: list[BaseException] = []
    stop = threading.Event()
    n_queries = 0

    def querier() -> None:
        nonlocal n_queries
        try:
            while not stop.is_set():
                i = n_queries % 3000
                res, _ = eng.search(vecs[i][None, :], 5)
                if res[0][0].item_id != f"item-{i}":
                    raise AssertionError(f"lost item-{i} during rebuild")
                n_queries += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    th = threading.Thread(target=querier)
    th.start()
    started, _ = eng.rebuild(wait=False)
    assert started
    assert eng.rebuild(wait=False)[0] is False  # one at a time
    late, late_vecs = catalog(300, seed=9, start=3000)
    for a in range(0, 300, 50):  # writes during the rebuild must survive the swap
        eng.upsert(upsert_req(late[a : a + 50]))
    eng.delete(["item-1"])
    eng.wait_rebuild()
    stop.set()
    th.join()
    assert not errors, errors
    assert n_queries > 0 and eng.index.trained
    for i in (0, 150, 299):
        assert top_ids(eng, late_vecs[i], 1) == [f"item-{3000 + i}"]
    assert "item-1" not in top_ids(eng, vecs[1], 5)
    eng.close(final_snapshot=False)


def test_recovery_from_wal_only_and_snapshot_plus_wal(tmp_path: Path) -> None:
    d = tmp_path / "d"
    eng = open_engine(d, threshold=800)
    items, vecs = catalog(2000)
    eng.upsert(upsert_req(items[:1000]))
    eng.rebuild(wait=True)
    eng.snapshot()
    eng.upsert(upsert_req(items[1000:]))
    eng.delete(["item-3"])
    eng.close(final_snapshot=False)  # like a crash after the last fsync
    eng2 = open_engine(d, threshold=800)
    assert eng2.index.trained  # index came from the snapshot, not retrained
    assert eng2.stats()["items"] == 1999
    assert top_ids(eng2, vecs[1500], 1) == ["item-1500"]
    assert "item-3" not in top_ids(eng2, vecs[3], 5)
    eng2.close(final_snapshot=False)


def test_corrupt_latest_snapshot_falls_back(tmp_path: Path) -> None:
    d = tmp_path / "d"
    eng = open_engine(d)
    items, vecs = catalog(300)
    eng.upsert(upsert_req(items[:100]))
    eng.snapshot()
    eng.upsert(upsert_req(items[100:]))
    eng.snapshot()
    eng.close(final_snapshot=False)
    latest = snap.list_snapshots(d / "snapshots")[-1]
    (latest / "vectors.npy").write_bytes(b"garbage")
    eng2 = open_engine(d)
    assert eng2.stats()["items"] == 300  # older snapshot + WAL it still needs
    assert top_ids(eng2, vecs[250], 1) == ["item-250"]
    eng2.close(final_snapshot=False)


def test_stamp_refuses_other_model_version(tmp_path: Path) -> None:
    open_engine(tmp_path / "d").close()
    with pytest.raises(StampMismatch, match="model_version"):
        ShardEngine(tmp_path / "d", shard_id=0, model_version="other", dim=DIM, config=cfg())


def test_threshold_below_pq_codebook_size_stays_flat_instead_of_failing(tmp_path: Path) -> None:
    # 8-bit PQ needs 256 training points per codebook; a lower threshold must not break rebuilds
    eng = open_engine(tmp_path / "d", threshold=40, pq_bits=8)
    items, vecs = catalog(100)
    eng.upsert(upsert_req(items))
    assert eng.rebuild_due() is None
    started, message = eng.rebuild(wait=True)
    assert started and "failed" not in message and not eng.index.trained
    assert top_ids(eng, vecs[7])[0] == items[7].item_id  # still searchable, exactly
    eng.close(final_snapshot=False)
