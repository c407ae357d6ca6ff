"""Stable identities: entry ids and item -> shard placement.

An item (caller-given string id) yields several entries (one per detected object plus the whole
image). Entry ids are 63-bit integers (FAISS ids are signed int64) derived from (item id, entry
index), and every entry of an item lives on the shard chosen by a stable hash of the item id, so
an item's upsert or delete is atomic on one shard.
"""

from __future__ import annotations

import hashlib

MAX_ENTRIES_PER_ITEM = 256
MAX_ITEM_ID_BYTES = 256


def _digest64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def entry_id(item_id: str, entry_index: int) -> int:
    """63-bit id of entry `entry_index` of `item_id` (0 = whole image by convention)."""
    if not 0 <= entry_index < MAX_ENTRIES_PER_ITEM:
        raise ValueError(f"entry_index must be in [0, {MAX_ENTRIES_PER_ITEM}), got {entry_index}")
    return _digest64(item_id.encode("utf-8") + b"\x00" + entry_index.to_bytes(2, "little")) >> 1


def shard_for(item_id: str, num_shards: int) -> int:
    """Shard that owns `item_id` among `num_shards` (stable across processes and restarts)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return _digest64(b"shard:" + item_id.encode("utf-8")) % num_shards
