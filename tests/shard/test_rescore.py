"""Batched exact re-scoring: the FAISS fp16 kernel over rows of the float16 store, entries -> items
for all queries at once, and the engine's batch path agreeing with its one-query path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.shard.helpers import DIM, MODEL, make_item, unit_vectors, upsert_req
from visual_search import ids
from visual_search.shard.engine import EngineConfig, ShardEngine, top_items
from visual_search.shard.filters import compile_filter
from visual_search.shard.index import IndexConfig
from visual_search.shard.rescore import Rescorer, best_entries_per_item
from visual_search.shard.store import f16_to_f32
from visual_search.v1 import shard_pb2 as pb


def test_rescorer_scores_are_exact_float16_inner_products() -> None:
    store = unit_vectors(3000, seed=1).astype(np.float16)
    q = unit_vectors(1, seed=2)[0]
    slots = np.random.default_rng(0).choice(3000, 700, replace=False)
    r = Rescorer(DIM)
    pos, scores = r.top(store, q, slots, 50)
    exact = f16_to_f32(store[slots]) @ q
    want = np.argsort(-exact)[:50]
    assert pos.tolist() == want.tolist()
    np.testing.assert_allclose(scores, exact[want], atol=1e-5)
    # fewer rows than asked for, then a bigger batch after a smaller one (scratch grows)
    pos, scores = r.top(store, q, slots[:7], 50)
    assert sorted(pos.tolist()) == list(range(7)) and len(scores) == 7
    pos, _ = r.top(store, q, np.arange(3000), 3000)
    assert sorted(pos.tolist()) == list(range(3000))


@pytest.mark.parametrize("seed", range(5))
def test_best_entries_per_item_matches_per_row_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_slots, rows, width, k = 400, 6, 60, 8
    item_of = rng.integers(0, 40, n_slots)  # ~10 entries per item
    slots = np.stack([rng.choice(n_slots, width, replace=False) for _ in range(rows)])
    scores = rng.standard_normal((rows, width)).astype(np.float32)
    order = np.argsort(-scores, axis=1)
    slots, scores = np.take_along_axis(slots, order, 1), np.take_along_axis(scores, order, 1)
    slots[2, 20:] = -1  # padding: a query with fewer candidates
    scores[2, 20:] = -np.inf
    out, found = best_entries_per_item(slots, scores, item_of, k)
    for i in range(rows):
        valid = slots[i] >= 0
        ref_slots, ref_scores = top_items(slots[i][valid], scores[i][valid], item_of, k)
        assert out[i][0].tolist() == ref_slots.tolist()
        np.testing.assert_array_equal(out[i][1], ref_scores)
        assert found[i] == len(np.unique(item_of[slots[i][valid]]))
        assert len(set(item_of[out[i][0]].tolist())) == len(out[i][0])


def _engine(path: Path) -> ShardEngine:
    # exact_subset_max=0: filtered queries take the ANN + mask path too (not the exact subset path)
    cfg = EngineConfig(index=IndexConfig(train_threshold=1_000_000, use_gpu=False), exact_subset_max=0)
    return ShardEngine(path, shard_id=0, model_version=MODEL, dim=DIM, config=cfg)


def test_batch_search_equals_one_query_at_a_time(tmp_path: Path) -> None:
    eng = _engine(tmp_path / "d")
    try:
        v = unit_vectors(1500, seed=4, clusters=20)
        items = [make_item(f"item-{i}", v[3 * i : 3 * i + 3], category=f"c{i % 4}") for i in range(500)]
        eng.upsert(upsert_req(items))
        eng.upsert(upsert_req([make_item("item-7", v[21:23])]))  # replaced: old entry ids stay in the index
        eng.delete(["item-9"])
        qs = unit_vectors(20, seed=5, clusters=20)
        flt = compile_filter(
            pb.Filter(clauses=[pb.FilterClause(field="category", in_set=pb.StringSet(values=["c1", "c2"]))])
        )
        for kw in ({}, {"rescore_k": 30}, {"flt": flt}):
            batch, _ = eng.search(qs, 10, **kw)  # type: ignore[arg-type]
            for q, hits in zip(qs, batch, strict=True):
                one, _ = eng.search(q[None, :], 10, **kw)  # type: ignore[arg-type]
                assert [(h.item_id, h.entry_id) for h in hits] == [(h.item_id, h.entry_id) for h in one[0]]
                assert [h.item_id for h in hits].count("item-9") == 0
                assert len({h.item_id for h in hits}) == len(hits) == 10
                # exact scores from the float16 store, best first
                for h in hits:
                    rec = eng.store.items[h.item_id]
                    slot = rec.slots[rec.entry_ids.index(h.entry_id)]
                    assert h.score == pytest.approx(
                        float(eng.store.gather(np.array([slot]))[0] @ q), abs=1e-5
                    )
                assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    finally:
        eng.close(final_snapshot=False)


def test_entry_nominated_twice_is_one_hit_with_the_live_vector(tmp_path: Path) -> None:
    eng = _engine(tmp_path / "d")
    try:
        v = unit_vectors(40, seed=6)
        eng.upsert(upsert_req([make_item(f"item-{i}", v[i]) for i in range(30)]))
        # Same item, same entry id, new vector: the index now holds the entry id twice.
        eng.upsert(upsert_req([make_item("item-3", v[35])]))
        res, _ = eng.search(np.stack([v[35], v[3]]), 30, rescore_k=100)
        for hits in res:
            assert [h.item_id for h in hits].count("item-3") == 1
        assert res[0][0].item_id == "item-3" and res[0][0].entry_id == ids.entry_id("item-3", 0)
        live = float(v[35].astype(np.float16).astype(np.float32) @ v[35])
        assert res[0][0].score == pytest.approx(live, abs=1e-5)
        hit = next(h for h in res[1] if h.item_id == "item-3")
        assert hit.score == pytest.approx(float(v[35].astype(np.float16).astype(np.float32) @ v[3]), abs=1e-5)
    finally:
        eng.close(final_snapshot=False)


def _brute_force(
    eng: ShardEngine, q: np.ndarray, k: int, nprobe: int, rescore_k: int
) -> list[tuple[str, int]]:
    """The same IVF-PQ candidates re-scored naively: every live candidate's exact float16 score,
    best entry per item, top k items by (score desc, entry id)."""
    _, cand = eng.index.search(q[None, :], rescore_k, nprobe)
    best: dict[str, tuple[float, int]] = {}
    for eid in set(cand[0].tolist()) - {-1}:
        slot = eng.store.entry_slot.get(eid)
        if slot is None:
            continue  # a stale code: deleted or replaced entry
        score = float(f16_to_f32(np.asarray(eng.store.vectors[slot])) @ q)
        item = eng.store.item_by_code[int(eng.store.slot_item[slot])].item_id
        if item not in best or score > best[item][0]:
            best[item] = (score, eid)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1]))[:k]
    return [(item, eid) for item, (_, eid) in ranked]


@pytest.mark.parametrize("entries_per_item", [1, 3])
def test_ivfpq_search_equals_brute_force_rescoring_of_its_candidates(
    tmp_path: Path, entries_per_item: int
) -> None:
    """Dense path (index holds each live entry once; one entry per item: top k directly) and, after
    writes leave stale codes in the index, the general path: both equal a naive re-score."""
    icfg = IndexConfig(train_threshold=1000, nlist=16, pq_m=8, use_gpu=False)
    cfg = EngineConfig(index=icfg, fsync=False)
    eng = ShardEngine(tmp_path / "d", shard_id=0, model_version=MODEL, dim=DIM, config=cfg)
    try:
        n_items = 1500 // entries_per_item
        v = unit_vectors(n_items * entries_per_item, seed=11, clusters=40)
        items = [
            make_item(f"item-{i}", v[i * entries_per_item : (i + 1) * entries_per_item])
            for i in range(n_items)
        ]
        eng.upsert(upsert_req(items))
        ok, msg = eng.rebuild(wait=True)
        assert ok and eng.index.trained, msg
        assert eng.index.ntotal == eng.store.n_entries  # the dense path applies
        qs = unit_vectors(15, seed=12, clusters=40)

        def check() -> None:
            for q in qs:
                for nprobe, rescore_k in ((4, 50), (8, 200)):
                    res, _ = eng.search(q[None, :], 10, nprobe=nprobe, rescore_k=rescore_k)
                    got = [(h.item_id, h.entry_id) for h in res[0]]
                    assert got == _brute_force(eng, q, 10, nprobe, rescore_k)

        check()
        # stale codes: a replaced item (its entry ids re-added) and deleted ones -> general path
        eng.upsert(upsert_req([make_item("item-5", unit_vectors(entries_per_item, seed=99))]))
        eng.delete([f"item-{i}" for i in range(20, 60)])
        assert eng.index.ntotal > eng.store.n_entries
        check()
    finally:
        eng.close(final_snapshot=False)
