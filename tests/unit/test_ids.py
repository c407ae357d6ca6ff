"""Entry ids and shard placement are stable, in range, and spread items across shards."""

from __future__ import annotations

import collections

import pytest

from visual_search import ids


def test_entry_ids_are_stable_distinct_and_63_bit() -> None:
    a = [ids.entry_id("sku-1", i) for i in range(10)]
    assert a == [ids.entry_id("sku-1", i) for i in range(10)]
    assert len(set(a)) == 10
    assert all(0 <= x < 2**63 for x in a)
    assert ids.entry_id("sku-1", 0) != ids.entry_id("sku-2", 0)


def test_entry_index_out_of_range() -> None:
    with pytest.raises(ValueError, match="entry_index"):
        ids.entry_id("x", ids.MAX_ENTRIES_PER_ITEM)


def test_shard_placement_is_stable_and_balanced() -> None:
    counts = collections.Counter(ids.shard_for(f"item-{i}", 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 850  # roughly uniform
    assert ids.shard_for("abc", 7) == ids.shard_for("abc", 7)
    with pytest.raises(ValueError):
        ids.shard_for("abc", 0)
