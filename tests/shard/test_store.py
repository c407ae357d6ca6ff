"""The vectorised entry id -> slot lookup agrees with the store's dict through every kind of write."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.shard.helpers import DIM, make_item, unit_vectors
from visual_search import ids
from visual_search.shard.store import EntryTable, Store, bulk_load
from visual_search.v1 import shard_pb2 as pb


def _check(store: Store, probe: np.ndarray) -> None:
    want = np.asarray([store.entry_slot.get(int(e), -1) for e in probe], dtype=np.int64)
    np.testing.assert_array_equal(store.slots_for_entries(probe), want)
    # each slot's record (what search hits read) is its item's, None for free slots
    owner = {s: rec for rec in store.items.values() for s in rec.slots}
    assert len(store.slot_rec) == store.capacity
    for slot, rec in enumerate(store.slot_rec):
        assert rec is owner.get(slot)


def test_slots_for_entries_matches_dict_under_churn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store = Store(tmp_path / "live", DIM)
    n0 = 3000
    vecs = unit_vectors(n0, seed=1).astype(np.float16)
    md = pb.ItemMetadata(category="c", price=1.0, available=True, region="eu")
    no_box: tuple[float, ...] = ()
    records = [(f"item-{i}", md, [ids.entry_id(f"item-{i}", 0)], [no_box]) for i in range(n0)]
    bulk_load(store, records, vecs)  # the sorted base
    every = np.asarray([ids.entry_id(f"item-{i}", j) for i in range(n0 + 3000) for j in range(3)])
    probe = np.concatenate([every, np.asarray([0, 1, 2**62, -5], dtype=np.int64)])
    _check(store, probe)
    for step in range(12_000):  # > the delta threshold: the delta is folded into the base
        i = int(rng.integers(0, n0 + 3000))
        op = rng.random()
        if op < 0.5:  # insert or replace, 1-3 entries
            m = int(rng.integers(1, 4))
            store.put_item(make_item(f"item-{i}", unit_vectors(m, seed=step)), unit_vectors(m, seed=step))
        elif op < 0.8:
            store.remove_item(f"item-{i}")
        else:  # an entry id moves to another item
            j = int(rng.integers(0, n0 + 3000))
            item = pb.Item(
                item_id=f"item-{i}",
                metadata=md,
                entries=[pb.Entry(entry_id=ids.entry_id(f"item-{j}", 0))],
            )
            store.put_item(item, unit_vectors(1, seed=step))
        if step % 500 == 0:
            _check(store, probe)
    _check(store, probe)
    assert store.entry_table.dead <= max(4096, len(store.entry_slot) // 2)  # the map was rebuilt
    live = store.live_slots()
    np.testing.assert_array_equal(store.slots_for_entries(store.slot_entry[live]), live)


def test_empty_store_lookup(tmp_path: Path) -> None:
    store = Store(tmp_path / "live", DIM)
    np.testing.assert_array_equal(store.slots_for_entries(np.asarray([1, 2], dtype=np.int64)), [-1, -1])
    np.testing.assert_array_equal(store.slots_for_entries(np.zeros(0, dtype=np.int64)), [])


def test_entry_table_removed_ids_and_rebuild() -> None:
    """Removed ids read -1 (the map keeps them as -1), a re-set id reads its new slot, and a
    rebuild keeps exactly the given ids."""
    table = EntryTable()
    ids_ = np.asarray([7, 2**62 + 5, 0, 123456789], dtype=np.int64)
    table.build(ids_, np.arange(4, dtype=np.int64))
    probe = np.concatenate([ids_, np.asarray([-1, -5, 8], dtype=np.int64)])
    assert table.lookup(probe).tolist() == [0, 1, 2, 3, -1, -1, -1]
    table.remove(7)
    table.set(0, 40)
    table.remove(999)  # absent: harmless
    assert table.lookup(probe).tolist() == [-1, 1, 40, 3, -1, -1, -1] and table.dead == 2
    table.set(7, 70)
    assert table.lookup(probe[:1]).tolist() == [70]
    table.build(ids_[1:2], np.asarray([5], dtype=np.int64))
    assert table.lookup(probe).tolist() == [-1, 5, -1, -1, -1, -1, -1] and table.dead == 0
    assert table.lookup(np.zeros(0, dtype=np.int64)).tolist() == []
