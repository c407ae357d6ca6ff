"""The shard engine: store + ANN index + WAL + snapshots + background rebuild.

Concurrency model: one writer at a time (`_write_mutex`: WAL append+fsync, then apply), and a
readers-writer lock so searches run concurrently with each other and only wait for the short
in-memory apply of a write. A rebuild trains and fills a new index off to the side, catches up
with writes logged meanwhile, and swaps it in under the write lock (no query downtime).
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.internal.decoder import _DecodeVarint32
from google.protobuf.internal.encoder import _VarintBytes

from visual_search.shard import snapshot as snap
from visual_search.shard.filters import CompiledFilter
from visual_search.shard.index import AnnIndex, IndexConfig
from visual_search.shard.rwlock import RWLock
from visual_search.shard.store import Store, bulk_load, hamming64
from visual_search.shard.validation import apply_patch, check_patches, decode_upsert
from visual_search.shard.wal import OP_DELETE, OP_METADATA, OP_UPSERT, WriteAheadLog, fsync_dir
from visual_search.v1 import shard_pb2

log = logging.getLogger(__name__)
STAMP = "shard.json"


class StampMismatch(RuntimeError):
    """The data dir was created for another model version / dimension / shard id."""


class DeadlineExceeded(RuntimeError):
    pass


@dataclass(frozen=True)
class EngineConfig:
    index: IndexConfig = field(default_factory=IndexConfig)
    default_rescore_k: int = 1000
    exact_subset_max: int = 20_000  # filtered subsets this small are searched exactly
    max_overfetch: int = 20_000  # cap on ANN candidates fetched for a filtered query
    snapshot_interval_s: float = 300.0
    snapshot_wal_bytes: int = 256 * 1024 * 1024
    policy_interval_s: float = 2.0
    tombstone_ratio: float = 0.25  # rebuild when this share of the index is dead
    growth_factor: float = 2.0  # rebuild (re-choose nlist) after this growth since training
    wal_segment_bytes: int = 64 * 1024 * 1024
    fsync: bool = True


@dataclass
class Hit:
    item_id: str
    entry_id: int
    score: float
    metadata: shard_pb2.ItemMetadata
    box: tuple[float, ...]
    vector_f16: bytes = b""


@dataclass
class Timings:
    ann_s: float = 0.0
    rescore_s: float = 0.0
    filter_s: float = 0.0


def _write_delimited(msgs: Iterator[bytes]) -> bytes:
    out = io.BytesIO()
    for m in msgs:
        out.write(_VarintBytes(len(m)))
        out.write(m)
    return out.getvalue()


def _read_delimited(data: bytes) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        size, pos = _DecodeVarint32(data, pos)
        yield data[pos : pos + size]
        pos += size


def top_items(
    slots: np.ndarray, scores: np.ndarray, item_of: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best entry per item, top k items by score: (slots, scores), best first."""
    n = len(scores)
    if n == 0:
        return slots[:0], scores[:0]
    take = min(n, 4 * k)
    while True:
        if take < n:
            idx = np.argpartition(-scores, take - 1)[:take]
            order = idx[np.argsort(-scores[idx], kind="stable")]
        else:
            order = np.argsort(-scores, kind="stable")
        _, first = np.unique(item_of[slots[order]], return_index=True)
        if len(first) >= k or take >= n:
            break
        take = min(n, take * 4)
    best = order[np.sort(first)[:k]]
    return slots[best], scores[best]


class ShardEngine:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        shard_id: int,
        model_version: str,
        dim: int,
        config: EngineConfig | None = None,
    ) -> None:
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard_id = shard_id
        self.model_version = model_version
        self.dim = dim
        self.cfg = config or EngineConfig()
        self._check_stamp()
        self._rw = RWLock()
        self._write_mutex = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._rebuild_lock = threading.Lock()
        self._rebuild_log: list[np.ndarray] | None = None
        self._rebuild_thread: threading.Thread | None = None
        self.rebuild_error: str | None = None
        self.store = Store(self.dir / "live", dim)
        self.index = AnnIndex.flat(dim)
        self.applied_seq = 0
        self.snapshot_seq = 0
        self.snapshot_time = time.time()
        self.index_built_at = time.time()
        self.trained_at_entries = 0
        self._load_snapshot()
        self.wal = WriteAheadLog(self.dir / "wal", self.cfg.wal_segment_bytes, self.cfg.fsync)
        self._replay()
        self._stop = threading.Event()
        self._policy_thread: threading.Thread | None = None
        # Called with the seconds from a write's WAL fsync until it is searchable (ingest lag, R12).
        self.on_ingest_lag: Callable[[float], None] | None = None

    # ---- identity ---------------------------------------------------------------------------
    def _check_stamp(self) -> None:
        path = self.dir / STAMP
        want = {"model_version": self.model_version, "dim": self.dim, "shard_id": self.shard_id}
        if path.exists():
            have = json.loads(path.read_text())
            for key, value in want.items():
                if have.get(key) != value:
                    raise StampMismatch(
                        f"{self.dir} was created for {key}={have.get(key)!r}, not {value!r}; "
                        "a new model version needs a new shard (re-embed into a fresh data dir)"
                    )
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**want, "created_unix": time.time()}))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.rename(tmp, path)
        fsync_dir(self.dir)

    # ---- recovery ---------------------------------------------------------------------------
    def _load_snapshot(self) -> None:
        found = snap.latest_valid(self.dir / "snapshots", log)
        if found is None:
            return
        path, manifest = found
        vectors = np.load(path / "vectors.npy", mmap_mode="r")
        records = []
        for raw in _read_delimited((path / "items.pb").read_bytes()):
            it = shard_pb2.StoredItem.FromString(raw)
            records.append(
                (
                    it.item_id,
                    it.metadata,
                    [e.entry_id for e in it.entries],
                    [tuple(e.box) for e in it.entries],
                )
            )
        bulk_load(self.store, records, vectors)
        if manifest["index"] == "flat":
            self._add_all_to(self.index)
        else:
            self.index = AnnIndex.deserialize(
                (path / "index.faiss").read_bytes(), manifest["index"], self.cfg.index.use_gpu
            )
        self.applied_seq = self.snapshot_seq = int(manifest["wal_sequence"])
        self.snapshot_time = float(manifest["created_unix"])
        self.index_built_at = float(manifest.get("index_built_unix", time.time()))
        self.trained_at_entries = int(manifest.get("trained_at_entries", 0))
        log.info(
            "snapshot loaded",
            extra={
                "path": str(path),
                "wal_sequence": self.applied_seq,
                "entries": self.store.n_entries,
                "index": self.index.description,
            },
        )

    def _add_all_to(self, index: AnnIndex) -> None:
        slots = self.store.live_slots()
        for a in range(0, len(slots), 65536):
            s = slots[a : a + 65536]
            index.add(self.store.slot_entry[s], self.store.gather(s))

    def _replay(self) -> None:
        n = 0
        for seq, op, payload in self.wal.replay(self.applied_seq):
            if op == OP_UPSERT:
                req = shard_pb2.UpsertRequest.FromString(payload)
                self._apply_upsert(decode_upsert(req, self.dim), seq)
            elif op == OP_DELETE:
                self._apply_delete(list(shard_pb2.DeleteRequest.FromString(payload).item_ids), seq)
            elif op == OP_METADATA:
                req_md = shard_pb2.UpdateMetadataRequest.FromString(payload)
                self._apply_metadata(self._plan_metadata(req_md.patches)[0], seq)
            n += 1
        if n:
            log.info("wal replayed", extra={"records": n, "wal_sequence": self.applied_seq})

    # ---- writes -----------------------------------------------------------------------------
    def _apply_upsert(self, decoded: list[tuple[shard_pb2.Item, np.ndarray]], seq: int) -> int:
        entries = 0
        with self._rw.write():
            for item, vecs in decoded:
                eids = self.store.put_item(item, vecs)
                self.index.add(eids, vecs)
                if self._rebuild_log is not None:
                    self._rebuild_log.append(eids)
                entries += len(eids)
            self.applied_seq = seq
        return entries

    def _apply_delete(self, item_ids: list[str], seq: int) -> list[str]:
        not_found = []
        with self._rw.write():
            for item_id in item_ids:
                if not self.store.remove_item(item_id):
                    not_found.append(item_id)
            self.applied_seq = seq
        return not_found

    def upsert(self, req: shard_pb2.UpsertRequest) -> tuple[int, int, int]:
        """Validate, log durably, apply. Returns (items, entries, wal_sequence)."""
        decoded = decode_upsert(req, self.dim)  # raises ValidationError before anything is written
        payload = shard_pb2.UpsertRequest(
            items=req.items, model_version=req.model_version
        ).SerializeToString()
        with self._write_mutex:
            seq = self.wal.append(OP_UPSERT, payload)
            durable = time.monotonic()
            entries = self._apply_upsert(decoded, seq)
            self._ingest_lag(durable)
        return len(decoded), entries, seq

    def delete(self, item_ids: list[str]) -> tuple[int, list[str], int]:
        with self._write_mutex:
            seq = self.wal.append(OP_DELETE, shard_pb2.DeleteRequest(item_ids=item_ids).SerializeToString())
            durable = time.monotonic()
            not_found = self._apply_delete(item_ids, seq)
            self._ingest_lag(durable)
        return len(set(item_ids)) - len(set(not_found)), not_found, seq

    def _plan_metadata(
        self, patches: Any
    ) -> tuple[list[tuple[str, shard_pb2.ItemMetadata]], list[str]]:
        """New metadata per known item (the store is not changed), and the unknown ids. Called with
        the write mutex held (or during replay), so the plan is what the apply will see."""
        plan, not_found = [], []
        for i, p in enumerate(patches):
            rec = self.store.items.get(p.item_id)
            if rec is None:
                not_found.append(p.item_id)
                continue
            plan.append((p.item_id, apply_patch(rec.metadata, p, f"patches[{i}] ({p.item_id!r})")))
        return plan, not_found

    def _apply_metadata(self, plan: list[tuple[str, shard_pb2.ItemMetadata]], seq: int) -> None:
        with self._rw.write():
            for item_id, md in plan:
                self.store.set_metadata(item_id, md)
            self.applied_seq = seq

    def update_metadata(self, patches: Any) -> tuple[int, list[str], int]:
        """Metadata-only patch of many items (vectors untouched): validate, log durably, apply.
        Returns (updated, unknown ids, wal_sequence). Nothing is logged when no id is known."""
        check_patches(patches)
        with self._write_mutex:
            plan, not_found = self._plan_metadata(patches)  # raises ValidationError before the WAL
            if not plan:
                return 0, not_found, self.applied_seq
            payload = shard_pb2.UpdateMetadataRequest(patches=patches).SerializeToString()
            seq = self.wal.append(OP_METADATA, payload)
            durable = time.monotonic()
            self._apply_metadata(plan, seq)
            self._ingest_lag(durable)
        return len(plan), not_found, seq

    def _ingest_lag(self, durable: float) -> None:
        if self.on_ingest_lag is not None:
            self.on_ingest_lag(time.monotonic() - durable)

    def bulk_import(
        self,
        records: list[tuple[str, shard_pb2.ItemMetadata, list[int], list[tuple[float, ...]]]],
        vectors: np.ndarray,
        index: AnnIndex | None = None,
    ) -> None:
        """Load an empty shard without the WAL (benchmarks, migrations); durable via a snapshot.
        `index`, if given, must already hold exactly these entries (by entry id)."""
        with self._write_mutex, self._rw.write():
            if self.store.n_entries or self.applied_seq:
                raise RuntimeError("bulk_import needs an empty shard")
            bulk_load(self.store, records, vectors)
            if index is None:
                self._add_all_to(self.index)
            else:
                self.index = index
                self.trained_at_entries = len(vectors)
        self.snapshot()

    # ---- reads ------------------------------------------------------------------------------
    def get(self, item_ids: list[str], include_vectors: bool) -> tuple[list[shard_pb2.StoredItem], list[str]]:
        found, missing = [], []
        with self._rw.read():
            for item_id in item_ids:
                rec = self.store.items.get(item_id)
                if rec is None:
                    missing.append(item_id)
                    continue
                out = shard_pb2.StoredItem(item_id=item_id, metadata=rec.metadata)
                for eid, box, slot in zip(rec.entry_ids, rec.boxes, rec.slots, strict=True):
                    e = out.entries.add(entry_id=eid, box=box)
                    if include_vectors:
                        e.vector_f16 = np.asarray(self.store.vectors[slot], dtype="<f2").tobytes()
                found.append(out)
        return found, missing

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        nprobe: int = 0,
        rescore_k: int = 0,
        flt: CompiledFilter | None = None,
        exact: bool = False,
        include_vectors: bool = False,
        deadline: Callable[[], bool] | None = None,
    ) -> tuple[list[list[Hit]], Timings]:
        """Top-k items per query (best entry per item), exact scores from the float16 store."""
        t = Timings()
        nprobe = nprobe or self.cfg.index.default_nprobe
        rescore_k = max(rescore_k or self.cfg.default_rescore_k, k)
        results: list[list[Hit]] = []
        with self._rw.read():
            store = self.store
            t0 = time.perf_counter()
            mask = flt.mask(store) if flt is not None else None
            n_match = int(mask.sum()) if mask is not None else store.n_entries
            t.filter_s += time.perf_counter() - t0
            if n_match == 0:
                return [[] for _ in range(len(queries))], t
            if exact or (mask is not None and n_match <= self.cfg.exact_subset_max):
                subset = np.flatnonzero(mask) if mask is not None else store.live_slots()
                per_query = self._exact(queries, subset, k, t)
            else:
                per_query = self._ann(queries, k, nprobe, rescore_k, mask, n_match, t, deadline)
            for slots, scores in per_query:
                results.append(self._hits(slots, scores, include_vectors))
        return results, t

    def exact_lookup(
        self, queries: np.ndarray, phash: int, max_distance: int, flt: CompiledFilter | None, limit: int
    ) -> list[list[Hit]]:
        """Hash-first exact match: items whose stored perceptual hash is within `max_distance` bits
        of `phash` (and that pass the filter), nearest hash first, at most `limit`; per query, each
        with its best entry's exact score. The hash is a per-slot column (col_phash) filled from
        the item metadata, so it is as durable as the metadata (WAL + snapshots), removed with the
        item on delete/replace, and untouched by metadata updates. One vectorised XOR + popcount
        over the slots (~5-10 ms per million entries)."""
        with self._rw.read():
            store = self.store
            n = store.n_slots
            dist = hamming64(store.col_phash[:n], phash)
            ok = (dist <= max_distance) & (store.col_phash[:n] != 0) & (store.slot_entry[:n] >= 0)
            if flt is not None:
                ok &= flt.mask(store)
            slots = np.flatnonzero(ok)
            if len(slots) == 0:
                return [[] for _ in range(len(queries))]
            codes = store.slot_item[slots]
            order = np.lexsort((codes, dist[slots]))  # nearest hash first, then by item
            _, first = np.unique(codes[order], return_index=True)
            item_codes = codes[order][np.sort(first)][:limit]
            results: list[list[Hit]] = []
            for q in queries:
                hits: list[Hit] = []
                for code in item_codes.tolist():
                    rec = store.item_by_code[code]
                    s = np.asarray(rec.slots, dtype=np.int64)
                    scores = store.gather(s) @ q
                    j = int(np.argmax(scores))
                    hits.append(self._hits(s[j : j + 1], scores[j : j + 1], False)[0])
                results.append(hits)
            return results

    def _ann(
        self,
        queries: np.ndarray,
        k: int,
        nprobe: int,
        rescore_k: int,
        mask: np.ndarray | None,
        n_match: int,
        t: Timings,
        deadline: Callable[[], bool] | None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        store = self.store
        fetch = rescore_k
        if mask is not None:  # over-fetch so ~rescore_k candidates survive the filter
            fetch = int(
                min(
                    max(rescore_k, self.cfg.max_overfetch),
                    rescore_k * store.n_entries / max(n_match, 1) * 1.2,
                )
            )
        t0 = time.perf_counter()
        _, cand = self.index.search(queries, fetch, nprobe)
        t.ann_s += time.perf_counter() - t0
        out = []
        n_items_match: int | None = None
        for qi in range(len(queries)):
            if deadline is not None and deadline():
                raise DeadlineExceeded(f"deadline exceeded after {qi} of {len(queries)} queries")
            t0 = time.perf_counter()
            ids = cand[qi]
            # Sorted ids make the searchsorted lookup cache-friendly (~2x); order is not needed.
            slots = store.slots_for_entries(np.sort(ids[ids >= 0]))
            slots = slots[slots >= 0]  # deleted / replaced entries (tombstones) drop out here
            if mask is not None:
                slots = slots[mask[slots]]
            slots = np.unique(slots)  # a re-inserted entry can be nominated twice
            t1 = time.perf_counter()
            t.filter_s += t1 - t0
            scores = store.gather(slots) @ queries[qi]
            best = top_items(slots, scores, store.slot_item, k)
            t.rescore_s += time.perf_counter() - t1
            if len(best[0]) < k:
                # Never silently short: if enough matching items exist, search them exactly.
                if n_items_match is None:
                    live = mask if mask is not None else store.slot_entry[: store.n_slots] >= 0
                    n_items_match = len(np.unique(store.slot_item[: store.n_slots][live]))
                if n_items_match > len(best[0]):
                    subset = np.flatnonzero(mask) if mask is not None else store.live_slots()
                    best = self._exact(queries[qi : qi + 1], subset, k, t)[0]
            out.append(best)
        return out

    def _exact(
        self, queries: np.ndarray, subset: np.ndarray, k: int, t: Timings
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        t0 = time.perf_counter()
        m = len(subset)
        scores = np.empty((len(queries), m), dtype=np.float32)
        chunk = 65536
        for a in range(0, m, chunk):
            scores[:, a : a + chunk] = queries @ self.store.gather(subset[a : a + chunk]).T
        out = [top_items(subset, scores[qi], self.store.slot_item, k) for qi in range(len(queries))]
        t.rescore_s += time.perf_counter() - t0
        return out

    def _hits(self, slots: np.ndarray, scores: np.ndarray, include_vectors: bool) -> list[Hit]:
        store = self.store
        hits = []
        for slot, score in zip(slots.tolist(), scores.tolist(), strict=True):
            rec = store.item_by_code[int(store.slot_item[slot])]
            eid = int(store.slot_entry[slot])
            vec = np.asarray(store.vectors[slot], dtype="<f2").tobytes() if include_vectors else b""
            hits.append(Hit(rec.item_id, eid, score, rec.metadata, store.entry_box(rec, eid), vec))
        return hits

    # ---- stats ------------------------------------------------------------------------------
    @property
    def tombstones(self) -> int:
        return max(0, self.index.ntotal - self.store.n_entries)

    @property
    def rebuilding(self) -> bool:
        return self._rebuild_lock.locked()

    def stats(self) -> dict[str, Any]:
        with self._rw.read():
            return {
                "items": len(self.store.items),
                "entries": self.store.n_entries,
                "tombstones": self.tombstones,
                "index_type": self.index.description,
                "trained": self.index.trained,
                "wal_sequence": self.applied_seq,
                "wal_bytes": self.wal.size_bytes,
                "seconds_since_snapshot": time.time() - self.snapshot_time,
                "index_age_seconds": time.time() - self.index_built_at,
                "rebuilding": self.rebuilding,
                "gpu": self.index.gpu,
                "index_bytes": self.index.memory_bytes(),
            }

    # ---- rebuild ------------------------------------------------------------------------------
    def rebuild(self, wait: bool = False) -> tuple[bool, str]:
        if not self._rebuild_lock.acquire(blocking=False):
            return False, "a rebuild is already running"
        self._rebuild_thread = threading.Thread(target=self._rebuild_run, name="rebuild", daemon=True)
        self._rebuild_thread.start()
        if wait:
            self._rebuild_thread.join()
            if self.rebuild_error:
                return True, f"rebuild failed: {self.rebuild_error}"
            return True, f"rebuilt: {self.index.description} with {self.index.ntotal} entries"
        return True, "rebuild started"

    def _rebuild_run(self) -> None:
        try:
            t0 = time.time()
            with self._rw.read():
                slots = self.store.live_slots()
                ids = self.store.slot_entry[slots].copy()
                vecs = self.store.gather(slots)
                self._rebuild_log = []  # writers are excluded while we hold the read lock
            cfg = self.cfg.index
            new = (
                AnnIndex.train_ivfpq(self.dim, vecs, cfg)
                if len(ids) >= cfg.min_train_entries
                else AnnIndex.flat(self.dim)
            )
            t_train = time.time() - t0
            for a in range(0, len(ids), 65536):
                new.add(ids[a : a + 65536], vecs[a : a + 65536])
            del vecs
            for final in (False, True):  # catch up under the read lock, then finish under the write lock
                lock = self._rw.write() if final else self._rw.read()
                with lock:
                    pending, self._rebuild_log = self._rebuild_log or [], []
                    if pending:
                        eids = np.unique(np.concatenate(pending))
                        s = self.store.slots_for_entries(eids)
                        keep = s >= 0
                        new.add(eids[keep], self.store.gather(s[keep]))
                    if final:
                        self.index = new
                        self._rebuild_log = None
                        self.index_built_at = time.time()
                        self.trained_at_entries = len(ids)
            self.rebuild_error = None
            log.info(
                "rebuild swapped in",
                extra={
                    "index": new.description,
                    "entries": len(ids),
                    "train_s": round(t_train, 2),
                    "total_s": round(time.time() - t0, 2),
                },
            )
        except Exception as exc:  # noqa: BLE001 - keep serving on the old index
            self.rebuild_error = str(exc)
            self._rebuild_log = None
            log.exception("rebuild failed; still serving the previous index")
        finally:
            self._rebuild_lock.release()

    def wait_rebuild(self, timeout: float | None = None) -> None:
        th = self._rebuild_thread
        if th is not None:
            th.join(timeout)

    def rebuild_due(self) -> str | None:
        n, cfg = self.store.n_entries, self.cfg
        if not self.index.trained:
            return "enough entries to train IVF-PQ" if n >= cfg.index.min_train_entries else None
        if self.index.ntotal and self.tombstones / self.index.ntotal > cfg.tombstone_ratio:
            return "tombstone ratio"
        if self.trained_at_entries and n > cfg.growth_factor * self.trained_at_entries:
            return "growth since training"
        return None

    # ---- snapshots ----------------------------------------------------------------------------
    def snapshot(self) -> tuple[int, str]:
        """Persist a consistent image (store, index, WAL position); then drop covered WAL."""
        with self._snapshot_lock:
            with self._rw.read():
                seq = self.applied_seq
                recs = [
                    (r.item_id, r.metadata, list(r.entry_ids), list(r.boxes))
                    for r in self.store.items.values()
                ]
                slots = np.fromiter(
                    (s for r in self.store.items.values() for s in r.slots),
                    dtype=np.int64,
                    count=self.store.n_entries,
                )
                vectors = np.asarray(self.store.vectors[slots], dtype=np.float16)
                index_desc = self.index.description
                index_bytes = self.index.serialize() if self.index.trained else b""
                built, trained_at = self.index_built_at, self.trained_at_entries
            buf = io.BytesIO()
            np.save(buf, vectors)
            items = _write_delimited(
                shard_pb2.StoredItem(
                    item_id=item_id,
                    metadata=md,
                    entries=[shard_pb2.Entry(entry_id=e, box=b) for e, b in zip(eids, boxes, strict=True)],
                ).SerializeToString()
                for item_id, md, eids, boxes in recs
            )
            files: dict[str, bytes | memoryview] = {"vectors.npy": buf.getbuffer(), "items.pb": items}
            if index_bytes:
                files["index.faiss"] = index_bytes
            path = snap.write_snapshot(
                self.dir / "snapshots",
                seq,
                files,
                {
                    "index": index_desc,
                    "index_built_unix": built,
                    "trained_at_entries": trained_at,
                    "model_version": self.model_version,
                    "dim": self.dim,
                    "shard_id": self.shard_id,
                    "entries": len(vectors),
                    "items": len(recs),
                },
            )
            self.snapshot_seq, self.snapshot_time = seq, time.time()
            kept = [int(p.name.split("-")[1]) for p in snap.list_snapshots(self.dir / "snapshots")]
            self.wal.drop_upto(min(kept))  # keep the WAL the older kept snapshot needs too
            log.info(
                "snapshot written", extra={"path": str(path), "wal_sequence": seq, "entries": len(vectors)}
            )
            return seq, str(path)

    def snapshot_due(self) -> bool:
        if self.wal.last_seq <= self.snapshot_seq:
            return False
        return (
            time.time() - self.snapshot_time > self.cfg.snapshot_interval_s
            or self.wal.size_bytes > self.cfg.snapshot_wal_bytes
        )

    # ---- lifecycle ----------------------------------------------------------------------------
    def start_policy(self) -> None:
        self._policy_thread = threading.Thread(target=self._policy_loop, name="policy", daemon=True)
        self._policy_thread.start()

    def _policy_loop(self) -> None:
        while not self._stop.wait(self.cfg.policy_interval_s):
            try:
                reason = None if self.rebuilding else self.rebuild_due()
                if reason:
                    log.info("policy rebuild", extra={"reason": reason})
                    self.rebuild(wait=False)
                if self.snapshot_due():
                    self.snapshot()
            except Exception:  # noqa: BLE001 - the policy must never kill the shard
                log.exception("policy step failed")

    def close(self, final_snapshot: bool = True) -> None:
        self._stop.set()
        if self._policy_thread is not None:
            self._policy_thread.join()
        self.wait_rebuild()
        if final_snapshot and self.wal.last_seq > self.snapshot_seq:
            self.snapshot()
        self.wal.close()
