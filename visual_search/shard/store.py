"""Slot store: float16 vectors in a memory-mapped file plus per-slot metadata columns.

Every live entry occupies one slot (a row). Vectors live in `<dir>/vectors.f16` (memory-mapped,
outside the FAISS index) and are used for exact re-scoring; the file is a working copy rebuilt
from the latest snapshot at start, durability comes from the WAL + snapshots. Metadata is kept
columnar per slot (codes for strings) so a filter is a few vectorised numpy comparisons over all
slots. Freed slots are reused; the FAISS index refers to entry ids, never to slots, so reuse is
safe. Not thread-safe for writes: the engine serialises writers and excludes readers during
writes; concurrent readers are fine.

Entry id -> slot: `entry_slot` (a dict) is the record for writes; searches map their 100-1000
candidate ids with `slots_for_entries` in one call into a C++ hash map (`EntryTable`) that writes
update in place. A Python dict lookup per candidate cost ~0.7 ms per 1000 candidates; a binary
search (np.searchsorted over sorted ids) ~165 us per 1000 at 1M entries (~20 dependent cache
misses each); the map ~30 us.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visual_search.v1 import shard_pb2

_INITIAL_CAPACITY = 1024
# float16 bit pattern -> float32 value, all 65536 patterns (256 KiB, stays in cache): one np.take is
# ~3x faster than numpy's float16 -> float32 cast (~170 vs ~480 us per 1000 x 256 candidates) and
# bit-exact, NaN/Inf included.
_F16_TO_F32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


_M1, _M2, _M4, _H01 = (
    np.uint64(v) for v in (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101)
)


def hamming64(hashes: np.ndarray, h: int) -> np.ndarray:
    """Bit differences between each uint64 in `hashes` and `h`: SWAR popcount (numpy < 2 has no
    bitwise_count), a few vector ops, ~5-10 ms per million hashes on this machine."""
    x = np.asarray(hashes, dtype=np.uint64) ^ np.uint64(h)
    x -= (x >> np.uint64(1)) & _M1
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    x *= _H01
    x >>= np.uint64(56)
    return x


def f16_to_f32(a: np.ndarray) -> np.ndarray:
    """Exact float16 -> float32 conversion by table lookup."""
    return np.take(_F16_TO_F32, np.ascontiguousarray(a, dtype=np.float16).view(np.uint16))


class EntryTable:
    """Entry id -> slot for searches: FAISS's MapLong2Long (a C++ hash map) looked up for all
    candidates in one call (~3 us per 100 ids, ~30 us per 1000 at 1M entries; a numpy bucketed
    hash table took ~15 / ~50 us, mostly numpy call overhead). The map has no delete: a removed id
    maps to -1 until the map is rebuilt from the live ids (`dead` counts them). Readers only read;
    the engine excludes them during writes."""

    def __init__(self) -> None:
        import faiss  # here, not at module level: the gateway imports this module for filters

        self._faiss: Any = faiss  # Any: the stubs know neither the numpy add() nor search_multiple_c
        self._map: Any = faiss.MapLong2Long()
        self.dead = 0  # removed ids still in the map (as -1)

    def set(self, entry_id: int, slot: int) -> None:
        self._map.add(np.asarray([entry_id], dtype=np.int64), np.asarray([slot], dtype=np.int64))

    def remove(self, entry_id: int) -> None:
        self.set(entry_id, -1)
        self.dead += 1

    def build(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Replace the content with `ids` -> `slots`."""
        self._map = self._faiss.MapLong2Long()
        if len(ids):
            self._map.add(np.asarray(ids, dtype=np.int64), np.asarray(slots, dtype=np.int64))
        self.dead = 0

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot per id, -1 where absent (FAISS's -1 padding included)."""
        keys = np.ascontiguousarray(ids, dtype=np.int64)
        out = np.empty(len(keys), dtype=np.int64)
        if len(keys):
            sp = self._faiss.swig_ptr
            self._map.search_multiple_c(len(keys), sp(keys), sp(out))
        return out


class Vocab:
    """String <-> int32 code (codes are never reused; -1 = missing)."""

    def __init__(self, values: list[str] | None = None) -> None:
        self.values: list[str] = list(values or [])
        self.codes: dict[str, int] = {v: i for i, v in enumerate(self.values)}

    def code(self, value: str) -> int:
        c = self.codes.get(value)
        if c is None:
            c = len(self.values)
            self.values.append(value)
            self.codes[value] = c
        return c

    def lookup(self, value: str) -> int:
        return self.codes.get(value, -1)


@dataclass(slots=True)  # attributes inline in the object: fewer cache misses per search hit
class ItemRecord:
    item_id: str
    code: int  # dense per-item number, used to collapse entries to items
    metadata: shard_pb2.ItemMetadata
    entry_ids: list[int]
    boxes: list[tuple[float, ...]]
    slots: list[int] = field(default_factory=list)


class Store:
    def __init__(self, directory: str | os.PathLike[str], dim: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.path = self.dir / "vectors.f16"
        self.capacity = 0
        self.n_slots = 0  # high-water mark
        self.free: list[int] = []
        self.items: dict[str, ItemRecord] = {}
        self.item_by_code: dict[int, ItemRecord] = {}
        self._next_item_code = 0
        self.entry_slot: dict[int, int] = {}
        self.entry_table = EntryTable()  # vectorised mirror of entry_slot (see the module docstring)
        self.category = Vocab()
        self.region = Vocab()
        self.attr_vocab = Vocab()  # attribute values share one vocabulary
        self.vectors = np.zeros((0, dim), dtype=np.float16)
        self.slot_entry = np.zeros(0, dtype=np.int64)
        self.slot_item = np.zeros(0, dtype=np.int64)
        # The record of each slot's item (None = free): a search hit reads it directly, fewer
        # cache misses than slot_item -> item_by_code (~5 us a hit at 1M entries).
        self.slot_rec: list[ItemRecord | None] = []
        self.col_category = np.zeros(0, dtype=np.int32)
        self.col_region = np.zeros(0, dtype=np.int32)
        self.col_price = np.zeros(0, dtype=np.float64)
        self.col_available = np.zeros(0, dtype=bool)
        self.col_phash = np.zeros(0, dtype=np.uint64)  # the item's perceptual hash (0 = none)
        self.col_attrs: dict[str, np.ndarray] = {}
        if self.path.exists():
            self.path.unlink()  # a leftover working copy; the snapshot is the source of truth
        self._grow(_INITIAL_CAPACITY)

    # ---- capacity ---------------------------------------------------------------------------
    def _grow(self, min_capacity: int) -> None:
        new_cap = max(min_capacity, self.capacity * 2, _INITIAL_CAPACITY)
        with open(self.path, "ab") as f:
            f.truncate(new_cap * self.dim * 2)
        # The old mapping stays valid for readers holding it; the file only grows.
        self.vectors = np.memmap(self.path, dtype=np.float16, mode="r+", shape=(new_cap, self.dim))

        def grown(a: np.ndarray, fill: float | int | bool) -> np.ndarray:
            b = np.full(new_cap, fill, dtype=a.dtype)
            b[: len(a)] = a
            return b

        self.slot_entry = grown(self.slot_entry, -1)
        self.slot_item = grown(self.slot_item, -1)
        self.slot_rec.extend([None] * (new_cap - len(self.slot_rec)))
        self.col_category = grown(self.col_category, -1)
        self.col_region = grown(self.col_region, -1)
        self.col_price = grown(self.col_price, np.nan)
        self.col_available = grown(self.col_available, False)
        self.col_phash = grown(self.col_phash, 0)
        self.col_attrs = {k: grown(v, -1) for k, v in self.col_attrs.items()}
        self.capacity = new_cap

    def _alloc(self, n: int) -> list[int]:
        slots: list[int] = []
        while self.free and len(slots) < n:
            slots.append(self.free.pop())
        rest = n - len(slots)
        if rest:
            if self.n_slots + rest > self.capacity:
                self._grow(self.n_slots + rest)
            slots.extend(range(self.n_slots, self.n_slots + rest))
            self.n_slots += rest
        return slots

    # ---- mutations ----------------------------------------------------------------------------
    def owner_of(self, entry_id: int) -> str | None:
        slot = self.entry_slot.get(entry_id)
        if slot is None:
            return None
        rec = self.item_by_code.get(int(self.slot_item[slot]))
        return rec.item_id if rec else None

    def put_item(self, item: shard_pb2.Item, vectors: np.ndarray) -> np.ndarray:
        """Insert or replace an item; returns the entry ids (int64) of its new entries."""
        old = self.items.get(item.item_id)
        if old is not None:
            self.remove_item(item.item_id)
        for entry in item.entries:  # an entry id owned by another item moves to this one
            other = self.owner_of(entry.entry_id)
            if other is not None:
                self._remove_entry(other, entry.entry_id)
        code = self._next_item_code
        self._next_item_code += 1
        entry_ids = [int(e.entry_id) for e in item.entries]
        slots = self._alloc(len(entry_ids))
        md = shard_pb2.ItemMetadata()
        md.CopyFrom(item.metadata)
        rec = ItemRecord(item.item_id, code, md, entry_ids, [tuple(e.box) for e in item.entries], slots)
        self.items[item.item_id] = rec
        self.item_by_code[code] = rec
        s = np.asarray(slots, dtype=np.int64)
        self.vectors[s] = vectors.astype(np.float16)
        self.slot_entry[s] = entry_ids
        self.slot_item[s] = code
        for slot in slots:
            self.slot_rec[slot] = rec
        self._set_columns(s, md)
        self.col_phash[s] = md.phash
        for eid, slot in zip(entry_ids, slots, strict=True):
            self.entry_slot[eid] = slot
            self.entry_table.set(eid, slot)
        return np.asarray(entry_ids, dtype=np.int64)

    def _set_columns(self, s: np.ndarray, md: shard_pb2.ItemMetadata) -> None:
        """The filterable columns of slots `s` from metadata (attribute keys absent from md: -1)."""
        self.col_category[s] = self.category.code(md.category)
        self.col_region[s] = self.region.code(md.region)
        self.col_price[s] = md.price
        self.col_available[s] = md.available
        for key, old_col in self.col_attrs.items():
            if key not in md.attributes:
                old_col[s] = -1
        for key, value in md.attributes.items():
            col = self.col_attrs.get(key)
            if col is None:
                col = self.col_attrs[key] = np.full(self.capacity, -1, dtype=np.int32)
            col[s] = self.attr_vocab.code(value)

    def set_metadata(self, item_id: str, md: shard_pb2.ItemMetadata) -> None:
        """Replace a stored item's metadata (copy-on-write: readers holding the old message keep a
        consistent one); its vectors, entries and phash column stay."""
        rec = self.items[item_id]
        rec.metadata = md
        self._set_columns(np.asarray(rec.slots, dtype=np.int64), md)

    def _clear_slots(self, slots: list[int]) -> None:
        s = np.asarray(slots, dtype=np.int64)
        self.slot_entry[s] = -1
        self.slot_item[s] = -1
        for slot in slots:
            self.slot_rec[slot] = None
        self.col_phash[s] = 0
        for col in self.col_attrs.values():
            col[s] = -1
        self.free.extend(slots)

    def _remove_entry(self, item_id: str, entry_id: int) -> None:
        rec = self.items[item_id]
        idx = rec.entry_ids.index(entry_id)
        slot = rec.slots[idx]
        del rec.entry_ids[idx], rec.boxes[idx], rec.slots[idx]
        del self.entry_slot[entry_id]
        self.entry_table.remove(entry_id)
        self._compact_table()
        self._clear_slots([slot])
        if not rec.entry_ids:
            del self.items[item_id]
            del self.item_by_code[rec.code]

    def remove_item(self, item_id: str) -> bool:
        rec = self.items.pop(item_id, None)
        if rec is None:
            return False
        del self.item_by_code[rec.code]
        for eid in rec.entry_ids:
            del self.entry_slot[eid]
            self.entry_table.remove(eid)
        self._compact_table()
        self._clear_slots(rec.slots)
        return True

    def _compact_table(self) -> None:
        """Rebuild the lookup map once removed ids outnumber half the live ones (or 4096)."""
        if self.entry_table.dead > max(4096, len(self.entry_slot) // 2):
            n = len(self.entry_slot)
            self.entry_table.build(
                np.fromiter(self.entry_slot.keys(), dtype=np.int64, count=n),
                np.fromiter(self.entry_slot.values(), dtype=np.int64, count=n),
            )

    # ---- reads ----------------------------------------------------------------------------------
    @property
    def n_entries(self) -> int:
        return len(self.entry_slot)

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.slot_entry[: self.n_slots] >= 0)

    def slots_for_entries(self, entry_ids: np.ndarray) -> np.ndarray:
        """Slot of each entry id, -1 where the entry is not live (deleted / replaced / unknown)."""
        return self.entry_table.lookup(entry_ids)

    def gather(self, slots: np.ndarray) -> np.ndarray:
        """float32 copies of the rows at `slots`."""
        return f16_to_f32(np.asarray(self.vectors[slots]))

    def entry_box(self, rec: ItemRecord, entry_id: int) -> tuple[float, ...]:
        return rec.boxes[rec.entry_ids.index(entry_id)]

    def close(self) -> None:
        self.vectors = np.zeros((0, self.dim), dtype=np.float16)


def bulk_load(
    store: Store,
    records: list[tuple[str, shard_pb2.ItemMetadata, list[int], list[tuple[float, ...]]]],
    vectors: np.ndarray,
) -> None:
    """Fill an empty store from (item_id, metadata, entry_ids, boxes) records whose entries are
    the rows of `vectors` in order. Vectorised per column: snapshot loads of 1M items in seconds."""
    if store.n_slots:
        raise RuntimeError("bulk_load needs an empty store")
    n = len(vectors)
    if n > store.capacity:
        store._grow(n)
    store.vectors[:n] = vectors
    cat = np.empty(n, dtype=np.int32)
    reg = np.empty(n, dtype=np.int32)
    price = np.empty(n, dtype=np.float64)
    avail = np.empty(n, dtype=bool)
    phashes = np.empty(n, dtype=np.uint64)
    item_codes = np.empty(n, dtype=np.int64)
    all_ids: list[int] = []
    slot_recs: list[ItemRecord | None] = []
    attr_rows: dict[str, tuple[list[int], list[int]]] = {}
    pos = 0
    for code, (item_id, md, entry_ids, boxes) in enumerate(records):
        m = len(entry_ids)
        end = pos + m
        rec = ItemRecord(item_id, code, md, list(entry_ids), list(boxes), list(range(pos, end)))
        store.items[item_id] = rec
        store.item_by_code[code] = rec
        slot_recs.extend([rec] * m)
        cat[pos:end] = store.category.code(md.category)
        reg[pos:end] = store.region.code(md.region)
        price[pos:end] = md.price
        avail[pos:end] = md.available
        phashes[pos:end] = md.phash
        item_codes[pos:end] = code
        for key, value in md.attributes.items():
            rows, vals = attr_rows.setdefault(key, ([], []))
            vcode = store.attr_vocab.code(value)
            rows.extend(range(pos, end))
            vals.extend([vcode] * m)
        all_ids.extend(entry_ids)
        pos = end
    if pos != n:
        raise ValueError(f"records describe {pos} entries but {n} vectors were given")
    store._next_item_code = len(records)
    ids_arr = np.asarray(all_ids, dtype=np.int64)
    store.slot_entry[:n] = ids_arr
    store.slot_item[:n] = item_codes
    store.slot_rec[:n] = slot_recs
    store.col_category[:n] = cat
    store.col_region[:n] = reg
    store.col_price[:n] = price
    store.col_available[:n] = avail
    store.col_phash[:n] = phashes
    for key, (rows, vals) in attr_rows.items():
        col = store.col_attrs[key] = np.full(store.capacity, -1, dtype=np.int32)
        col[np.asarray(rows, dtype=np.int64)] = vals
    store.entry_slot = dict(zip(all_ids, range(n), strict=True))
    store.entry_table.build(ids_arr, np.arange(n, dtype=np.int64))
    store.n_slots = n
