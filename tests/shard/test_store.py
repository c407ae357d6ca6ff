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
    assert store.entry_table.n == len(store.entry_slot)
    live = store.live_slots()
    np.testing.assert_array_equal(store.slots_for_entries(store.slot_entry[live]), live)


def test_empty_store_lookup(tmp_path: Path) -> None:
    store = Store(tmp_path / "live", DIM)
    np.testing.assert_array_equal(store.slots_for_entries(np.asarray([1, 2], dtype=np.int64)), [-1, -1])
    np.testing.assert_array_equal(store.slots_for_entries(np.zeros(0, dtype=np.int64)), [])


def test_entry_table_overflowing_buckets_under_churn() -> None:
    """Ids chosen to share a home bucket (overflow chains, wrap-around at the end of the table):
    lookups past the home bucket and deletes inside chains agree with a dict."""
    rng = np.random.default_rng(3)
    table = EntryTable(64)
    bits = table._bits
    last = (1 << bits) - 1
    # ids whose hash lands in the last bucket, so overflow chains wrap around to bucket 0
    pool = [i for i in range(1, 400_000) if table._home1(i) == last][:20]
    pool += rng.integers(0, 2**62, 10).tolist()  # 30 ids: the table never grows
    want: dict[int, int] = {}
    for step in range(3000):
        eid = int(pool[int(rng.integers(0, len(pool)))])
        if rng.random() < 0.6:
            want[eid] = step
            table.set(eid, step)
        else:
            want.pop(eid, None)
            table.remove(eid)
        if step % 50 == 0 or step > 2900:
            probe = np.asarray(pool + [-1, -5, 0], dtype=np.int64)
            got = table.lookup(probe)
            assert got.tolist() == [want.get(int(e), -1) for e in probe]
            assert table.n == len(want) and table._bits == bits
    assert int(table.rows[last, 6]) > 0  # the chains were really exercised
    table.build(np.asarray(pool, dtype=np.int64), np.arange(len(pool), dtype=np.int64))
    assert table.lookup(np.asarray(pool, dtype=np.int64)).tolist() == list(range(len(pool)))
    table.remove(int(pool[0]))
    assert table.lookup(np.asarray(pool, dtype=np.int64)).tolist() == [-1] + list(range(1, len(pool)))
