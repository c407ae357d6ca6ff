"""The shard engine: store + ANN index + WAL + snapshots + background rebuild.

Concurrency model: one writer at a time (`_write_mutex`: WAL append+fsync, then apply), and a
readers-writer lock so searches run concurrently with each other and only wait for the short
in-memory apply of a write. A rebuild trains and fills a new index off to the side, catches up
with writes logged meanwhile, and swaps it in under the write lock (no query downtime).

Replication (README "Replicas"): every write carries a last-write-wins version (versions.py); a
write older than what the replica holds is superseded, not applied. Writes pulled from a peer are
logged as one OP_SYNC record each, which also carries how far this replica has pulled that peer's
WAL, so a restart resumes the pull where it stopped.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
from google.protobuf.internal.decoder import _DecodeVarint32
from google.protobuf.internal.encoder import _VarintBytes

from visual_search.shard import snapshot as snap
from visual_search.shard.config import EngineConfig
from visual_search.shard.filters import CompiledFilter
from visual_search.shard.index import AnnIndex
from visual_search.shard.rescore import Rescorer, best_entries_per_item
from visual_search.shard.rwlock import RWLock
from visual_search.shard.store import ItemRecord, Store, bulk_load, hamming64
from visual_search.shard.validation import apply_patch, check_patches, decode_upsert
from visual_search.shard.versions import VersionBook
from visual_search.shard.wal import OP_DELETE, OP_METADATA, OP_SYNC, OP_UPSERT, WriteAheadLog, fsync_dir
from visual_search.v1 import shard_pb2

log = logging.getLogger(__name__)
STAMP = "shard.json"


class StampMismatch(RuntimeError):
    """The data dir was created for another model version / dimension / shard id."""


class DeadlineExceeded(RuntimeError):
    pass


class SyncGap(RuntimeError):
    """The WAL no longer holds a record a pull needs (dropped by a snapshot mid-stream): the
    puller keeps what it has and asks again (it gets a full copy)."""


class UpsertOutcome(NamedTuple):
    items: int
    entries: int
    wal_sequence: int
    superseded: list[str]  # not applied: a newer version of them is held


class DeleteOutcome(NamedTuple):
    deleted: int
    not_found: list[str]
    wal_sequence: int
    superseded: list[str]


class MetadataOutcome(NamedTuple):
    updated: int
    not_found: list[str]
    wal_sequence: int
    superseded: list[str]


Decoded = list[tuple[shard_pb2.Item, np.ndarray]]
DELETE_MARKERS_FILE = "deleted.pb"


@dataclass(slots=True)
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
        self.versions = VersionBook()
        # Peer replica uid -> that peer's WAL sequence this replica has pulled up to.
        self.peer_seq: dict[str, int] = {}
        self.index = AnnIndex.flat(dim)
        self.rescorer = Rescorer(dim)
        self.applied_seq = 0
        self.snapshot_seq = 0
        self.snapshot_time = time.time()
        self.index_built_at = time.time()
        self.trained_at_entries = 0
        # Unix time this replica last applied a write (live write, peer pull or repair): the
        # freshness alert compares it with the newest write the gateway acknowledged for the shard.
        # Recovery restores it from the snapshot manifest and the WAL's mtime, not "now".
        self.last_write_unix = 0.0
        self._replaying = False
        self._load_snapshot()
        self.wal = WriteAheadLog(self.dir / "wal", self.cfg.wal_segment_bytes, self.cfg.fsync)
        self._replay()
        self._stop = threading.Event()
        self._policy_thread: threading.Thread | None = None
        # Called with the seconds from a write's WAL fsync until it is searchable (ingest lag, R12).
        self.on_ingest_lag: Callable[[float], None] | None = None

    # ---- identity ---------------------------------------------------------------------------
    def _check_stamp(self) -> None:
        """Check (or write) shard.json; it also holds this data dir's replica uid, which peers use
        to tell a replica that was wiped (new uid, new WAL sequence space) from one that was not."""
        path = self.dir / STAMP
        want = {"model_version": self.model_version, "dim": self.dim, "shard_id": self.shard_id}
        have: dict[str, Any] = {"created_unix": time.time()}
        if path.exists():
            have = json.loads(path.read_text())
            for key, value in want.items():
                if have.get(key) != value:
                    raise StampMismatch(
                        f"{self.dir} was created for {key}={have.get(key)!r}, not {value!r}; "
                        "a new model version needs a new shard (re-embed into a fresh data dir)"
                    )
            if have.get("replica_uid"):
                self.uid: str = have["replica_uid"]
                return
        self.uid = uuid.uuid4().hex
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**have, **want, "replica_uid": self.uid}))
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
            self.versions.set_live(it.item_id, it.version)
        bulk_load(self.store, records, vectors)
        if (path / DELETE_MARKERS_FILE).exists():
            for raw in _read_delimited((path / DELETE_MARKERS_FILE).read_bytes()):
                marker = shard_pb2.ItemVersion.FromString(raw)
                self.versions.set_deleted(marker.item_id, marker.version)
        self.peer_seq = {str(k): int(v) for k, v in manifest.get("peer_seq", {}).items()}
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
        self.last_write_unix = float(manifest.get("last_write_unix", 0.0))
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

    def _touch(self) -> None:
        if not self._replaying:
            self.last_write_unix = time.time()

    def _replay(self) -> None:
        self._replaying = True
        try:
            n = self._replay_records()
        finally:
            self._replaying = False
        segs = list((self.dir / "wal").glob("wal-*.log"))
        if n and segs:  # the newest replayed write is no newer than the WAL's last append
            self.last_write_unix = max(self.last_write_unix, max(p.stat().st_mtime for p in segs))

    def _replay_records(self) -> int:
        n = 0
        for seq, op, payload in self.wal.replay(self.applied_seq):
            if op == OP_UPSERT:
                req = shard_pb2.UpsertRequest.FromString(payload)
                self._apply_upsert(decode_upsert(req, self.dim), seq)
            elif op == OP_DELETE:
                dreq = shard_pb2.DeleteRequest.FromString(payload)
                self._apply_delete(list(dreq.item_ids), dreq.version, seq)
            elif op == OP_METADATA:
                req_md = shard_pb2.UpdateMetadataRequest.FromString(payload)
                plan_md = self._plan_metadata(req_md.patches, req_md.version)[0]
                self._apply_metadata(plan_md, req_md.version, seq)
            elif op == OP_SYNC:
                self._apply_sync(shard_pb2.SyncRecord.FromString(payload), seq)
            n += 1
        if n:
            log.info("wal replayed", extra={"records": n, "wal_sequence": self.applied_seq})
        return n

    # ---- writes -----------------------------------------------------------------------------
    def _put(self, item: shard_pb2.Item, vecs: np.ndarray) -> int:
        """Store + index one item (caller holds the write lock); returns its entry count."""
        # An entry id owned by another item moves to this one; an item left without entries is gone.
        owners = {self.store.owner_of(e.entry_id) for e in item.entries} - {None, item.item_id}
        eids = self.store.put_item(item, vecs)
        for other in owners:
            if other is not None and other not in self.store.items:
                self.versions.forget_live(other)
        self.versions.set_live(item.item_id, item.version)
        self.index.add(eids, vecs)
        if self._rebuild_log is not None:
            self._rebuild_log.append(eids)
        return len(eids)

    def _remove(self, item_id: str, version: int) -> bool:
        """Delete one item and leave a marker at `version` (caller holds the write lock)."""
        found = self.store.remove_item(item_id)
        self.versions.set_deleted(item_id, version)
        return found

    def _apply_upsert(self, decoded: Decoded, seq: int) -> int:
        entries = 0
        with self._rw.write():
            for item, vecs in decoded:
                # version 0 = a record written before versions existed: replays in WAL order
                if item.version == 0 or self.versions.newer(item.item_id, item.version):
                    entries += self._put(item, vecs)
            self.applied_seq = seq
            self._touch()
        return entries

    def _apply_delete(self, item_ids: list[str], version: int, seq: int) -> tuple[list[str], list[str]]:
        """Returns (not_found, superseded)."""
        not_found, superseded = [], []
        with self._rw.write():
            for item_id in dict.fromkeys(item_ids):
                if version and not self.versions.newer(item_id, version):
                    superseded.append(item_id)
                elif not self._remove(item_id, version):
                    not_found.append(item_id)
            self.applied_seq = seq
            self._touch()
        return not_found, superseded

    def _stamp(self, item: shard_pb2.Item) -> shard_pb2.Item:
        """The item with a version: its own, or this replica's clock (a copy; callers keep theirs)."""
        if item.version:
            return item
        out = shard_pb2.Item()
        out.CopyFrom(item)
        out.version = self.versions.clock.now()
        return out

    def upsert(self, req: shard_pb2.UpsertRequest) -> UpsertOutcome:
        """Validate, drop what a newer write supersedes, log durably, apply."""
        decoded = decode_upsert(req, self.dim)  # raises ValidationError before anything is written
        with self._write_mutex:
            fresh: Decoded = []
            superseded = []
            for item, vecs in decoded:
                item = self._stamp(item)
                if self.versions.newer(item.item_id, item.version):
                    fresh.append((item, vecs))
                else:
                    superseded.append(item.item_id)
            if not fresh:
                return UpsertOutcome(0, 0, self.applied_seq, superseded)
            payload = shard_pb2.UpsertRequest(
                items=[item for item, _ in fresh], model_version=req.model_version
            ).SerializeToString()
            seq = self.wal.append(OP_UPSERT, payload)
            durable = time.monotonic()
            entries = self._apply_upsert(fresh, seq)
            self._ingest_lag(durable)
        return UpsertOutcome(len(fresh), entries, seq, superseded)

    def delete(self, item_ids: list[str], version: int = 0) -> DeleteOutcome:
        """Delete at `version` (0 = this replica's clock); a marker is kept for every id, found or
        not, so a repair cannot bring back an older write of it."""
        with self._write_mutex:
            version = version or self.versions.clock.now()
            payload = shard_pb2.DeleteRequest(item_ids=item_ids, version=version).SerializeToString()
            seq = self.wal.append(OP_DELETE, payload)
            durable = time.monotonic()
            not_found, superseded = self._apply_delete(item_ids, version, seq)
            self._ingest_lag(durable)
        n = len(dict.fromkeys(item_ids)) - len(not_found) - len(superseded)
        return DeleteOutcome(n, not_found, seq, superseded)

    # ---- replication ------------------------------------------------------------------------
    def _decode_pulled(self, rec: shard_pb2.SyncRecord) -> Decoded:
        if not rec.items:
            return []
        return decode_upsert(
            shard_pb2.UpsertRequest(items=rec.items, model_version=self.model_version), self.dim
        )

    def _apply_sync(self, rec: shard_pb2.SyncRecord, seq: int, decoded: Decoded | None = None) -> None:
        """Apply a logged pull record (already filtered to newer writes) and its watermark."""
        if decoded is None:
            decoded = self._decode_pulled(rec)
        with self._rw.write():
            for item, vecs in decoded:
                if self.versions.newer(item.item_id, item.version):
                    self._put(item, vecs)
            for marker in rec.deleted:
                if self.versions.newer(marker.item_id, marker.version):
                    self._remove(marker.item_id, marker.version)
            if rec.seq:
                self.peer_seq[rec.replica_uid] = max(self.peer_seq.get(rec.replica_uid, 0), rec.seq)
            self.applied_seq = seq
            self._touch()

    def apply_pulled(self, rec: shard_pb2.SyncRecord) -> int:
        """Apply what a peer sent (SyncRecord from its Sync stream): only writes newer than what is
        held are logged and applied. Returns how many items and markers were applied."""
        # Most pulled writes are already held (they also came straight from the gateway): skip
        # them before the costly decode. Versions only grow, so what is stale now stays stale.
        maybe = shard_pb2.SyncRecord(replica_uid=rec.replica_uid, seq=rec.seq)
        maybe.items.extend(i for i in rec.items if self.versions.newer(i.item_id, i.version))
        decoded = self._decode_pulled(maybe)
        with self._write_mutex:
            keep = shard_pb2.SyncRecord(replica_uid=rec.replica_uid, seq=rec.seq)
            fresh = [(i, v) for i, v in decoded if self.versions.newer(i.item_id, i.version)]
            keep.items.extend(i for i, _ in fresh)
            keep.deleted.extend(m for m in rec.deleted if self.versions.newer(m.item_id, m.version))
            n = len(keep.items) + len(keep.deleted)
            # The end of a full copy is logged even when empty, so a restart does not copy again;
            # other records with nothing new only move the watermark in memory (the data is held).
            if n or (rec.full_copy and rec.seq):
                seq = self.wal.append(OP_SYNC, keep.SerializeToString())
                self._apply_sync(keep, seq, fresh)
            elif rec.seq:
                with self._rw.write():
                    self.peer_seq[rec.replica_uid] = max(self.peer_seq.get(rec.replica_uid, 0), rec.seq)
        return n

    def note_in_sync(self, peer_uid: str, peer_seq: int) -> None:
        """Digests matched: this replica holds everything the peer held at `peer_seq`."""
        with self._rw.write():
            self.peer_seq[peer_uid] = max(self.peer_seq.get(peer_uid, 0), peer_seq)

    def replica_status(self) -> dict[str, Any]:
        with self._rw.read():
            return {
                "replica_uid": self.uid,
                "applied_seq": self.applied_seq,
                "oldest_wal_seq": self.wal.first_seq(),
                "digest": self.versions.digest,
                "items": len(self.store.items),
                "delete_markers": len(self.versions.deleted),
            }

    def sync_records(self, peer_uid: str, after_seq: int, batch: int = 256) -> Iterator[shard_pb2.SyncRecord]:
        """What a peer needs to catch up with this replica: the WAL records after `after_seq`, or,
        when those are not all in the WAL any more (or `peer_uid` is not this data dir's uid), a
        full copy of the current state followed by the WAL records after the copy's sequence.
        Copying current state and then replaying later records is safe because every write is
        versioned: re-applying one the copy already showed is a no-op."""
        if peer_uid != self.uid or after_seq > self.applied_seq or not self.wal.covers(after_seq):
            with self._rw.read():
                after_seq = self.applied_seq
                item_ids = list(self.store.items)
                markers = list(self.versions.deleted.items())
            for a in range(0, len(item_ids), batch):
                rec = shard_pb2.SyncRecord(replica_uid=self.uid, full_copy=True)
                with self._rw.read():
                    for item_id in item_ids[a : a + batch]:
                        stored = self.store.items.get(item_id)
                        if stored is not None:
                            s = self._stored(stored, include_vectors=True)
                            rec.items.add(
                                item_id=item_id, metadata=s.metadata, entries=s.entries, version=s.version
                            )
                yield rec
            for a in range(0, len(markers), 16 * batch):
                rec = shard_pb2.SyncRecord(replica_uid=self.uid, full_copy=True)
                rec.deleted.extend(
                    shard_pb2.ItemVersion(item_id=i, version=v) for i, v in markers[a : a + 16 * batch]
                )
                yield rec
            yield shard_pb2.SyncRecord(replica_uid=self.uid, seq=after_seq, full_copy=True)
        expect = after_seq + 1
        for seq, op, payload in self.wal.replay(after_seq):
            if seq != expect:
                raise SyncGap(f"WAL record {expect} is gone (next is {seq}); pull again for a full copy")
            expect += 1
            rec = shard_pb2.SyncRecord(replica_uid=self.uid, seq=seq)
            if op == OP_UPSERT:
                rec.items.extend(shard_pb2.UpsertRequest.FromString(payload).items)
            elif op == OP_DELETE:
                dreq = shard_pb2.DeleteRequest.FromString(payload)
                rec.deleted.extend(
                    shard_pb2.ItemVersion(item_id=i, version=dreq.version) for i in dreq.item_ids
                )
            elif op == OP_METADATA:  # the patched items as held now (a later write of one is newer still)
                with self._rw.read():
                    for p in shard_pb2.UpdateMetadataRequest.FromString(payload).patches:
                        stored = self.store.items.get(p.item_id)
                        if stored is not None:
                            st = self._stored(stored, include_vectors=True)
                            rec.items.add(
                                item_id=p.item_id, metadata=st.metadata, entries=st.entries,
                                version=st.version,
                            )
            elif op == OP_SYNC:  # forwarded: what this replica pulled from a third one
                got = shard_pb2.SyncRecord.FromString(payload)
                rec.items.extend(got.items)
                rec.deleted.extend(got.deleted)
            yield rec

    def _plan_metadata(
        self, patches: Any, version: int
    ) -> tuple[list[tuple[str, shard_pb2.ItemMetadata]], list[str], list[str]]:
        """New metadata per known item that `version` supersedes (the store is not changed), the
        unknown ids, and the ids a newer write already replaced. Called with the write mutex held
        (or during replay), so the plan is what the apply will see."""
        plan, not_found, superseded = [], [], []
        for i, p in enumerate(patches):
            rec = self.store.items.get(p.item_id)
            if rec is None:
                not_found.append(p.item_id)
                continue
            if version and not self.versions.newer(p.item_id, version):
                superseded.append(p.item_id)
                continue
            plan.append((p.item_id, apply_patch(rec.metadata, p, f"patches[{i}] ({p.item_id!r})")))
        return plan, not_found, superseded

    def _apply_metadata(self, plan: list[tuple[str, shard_pb2.ItemMetadata]], version: int, seq: int) -> None:
        """A metadata patch is a new version of the whole item (last write wins between replicas:
        a peer that missed it pulls the item at this version)."""
        with self._rw.write():
            for item_id, md in plan:
                self.store.set_metadata(item_id, md)
                if version:
                    self.versions.set_live(item_id, version)
            self.applied_seq = seq
            self._touch()

    def update_metadata(self, patches: Any, version: int = 0) -> MetadataOutcome:
        """Metadata-only patch of many items (vectors untouched) at `version` (0 = this replica's
        clock): validate, log durably, apply. Nothing is logged when no patch applies."""
        check_patches(patches)
        with self._write_mutex:
            version = version or self.versions.clock.now()
            plan, not_found, superseded = self._plan_metadata(patches, version)  # may raise ValidationError
            if not plan:
                return MetadataOutcome(0, not_found, self.applied_seq, superseded)
            payload = shard_pb2.UpdateMetadataRequest(patches=patches, version=version).SerializeToString()
            seq = self.wal.append(OP_METADATA, payload)
            durable = time.monotonic()
            self._apply_metadata(plan, version, seq)
            self._ingest_lag(durable)
        return MetadataOutcome(len(plan), not_found, seq, superseded)

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
            for rec in records:
                self.versions.set_live(rec[0], 0)
            if index is None:
                self._add_all_to(self.index)
            else:
                self.index = index
                self.trained_at_entries = len(vectors)
        self.snapshot()

    # ---- reads ------------------------------------------------------------------------------
    def _stored(self, rec: ItemRecord, include_vectors: bool) -> shard_pb2.StoredItem:
        """One stored item as a message (caller holds the read lock)."""
        out = shard_pb2.StoredItem(
            item_id=rec.item_id, metadata=rec.metadata, version=self.versions.live.get(rec.item_id, 0)
        )
        for eid, box, slot in zip(rec.entry_ids, rec.boxes, rec.slots, strict=True):
            e = out.entries.add(entry_id=eid, box=box)
            if include_vectors:
                e.vector_f16 = np.asarray(self.store.vectors[slot], dtype="<f2").tobytes()
        return out

    def get(self, item_ids: list[str], include_vectors: bool) -> tuple[list[shard_pb2.StoredItem], list[str]]:
        found, missing = [], []
        with self._rw.read():
            for item_id in item_ids:
                rec = self.store.items.get(item_id)
                if rec is None:
                    missing.append(item_id)
                    continue
                found.append(self._stored(rec, include_vectors))
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
        t1 = time.perf_counter()
        t.ann_s += t1 - t0
        # Whole batch at once. Sorted ids per row put an entry nominated twice (re-inserted: old +
        # new code in the index) side by side, and fix the order rows are scored in (ties).
        cand.sort(axis=1)
        slots = store.slots_for_entries(cand.ravel()).reshape(cand.shape)
        nq = len(queries)
        # Every item one entry (the common catalog): the best k entries are the best k items.
        one_entry = store.n_entries == len(store.items)
        take = k if one_entry else 4 * k  # best entries scored per query; more if they hold < k items
        workers = faiss.omp_get_max_threads()
        flat: np.ndarray | None = None
        starts: np.ndarray | None = None
        no_padding = cand[0, 0] >= 0 if nq == 1 else bool((cand[:, 0] >= 0).all())
        if mask is None and no_padding and self.index.ntotal == store.n_entries:
            # Dense: the index holds each live entry exactly once (no stale codes), so every
            # candidate is a distinct live entry; no padding either (ids sorted: -1 would be first).
            t2 = time.perf_counter()
            t.filter_s += t2 - t1
            top = self.rescorer.top_dense(store.vectors, queries, slots, take, deadline, workers=workers)
        else:
            ok = slots >= 0  # deleted / replaced entries (tombstones) and FAISS's -1 padding drop out
            ok[:, 1:] &= cand[:, 1:] != cand[:, :-1]
            if mask is not None:
                ok &= mask[slots]
            flat = slots[ok]
            starts = np.concatenate(([0], np.cumsum(ok.sum(axis=1))))
            t2 = time.perf_counter()
            t.filter_s += t2 - t1
            top = self.rescorer.top_batch(
                store.vectors, queries, flat, starts, take, deadline, workers=workers
            )
        if top is None:
            raise DeadlineExceeded(f"deadline exceeded while re-scoring {nq} queries")
        rescore_before = t.rescore_s  # _exact below adds its own share
        top_slots, top_scores = top
        if one_entry and flat is None:  # dense: every row holds min(take, candidates) distinct items
            out = [(top_slots[i], top_scores[i]) for i in range(nq)]
            short: list[int] = list(range(nq)) if top_slots.shape[1] < k else []
        else:
            if one_entry:
                found = (top_slots >= 0).sum(axis=1)
                out = [(top_slots[i, :n], top_scores[i, :n]) for i, n in enumerate(found.tolist())]
            else:
                out, found = best_entries_per_item(top_slots, top_scores, store.slot_item, k)
            short = np.flatnonzero(found < k).tolist()
        n_items_match: int | None = None
        for qi in short:
            rows = slots[qi] if flat is None or starts is None else flat[starts[qi] : starts[qi + 1]]
            if len(rows) > take:  # many entries of few items: score them all
                pos, sc = self.rescorer.top(store.vectors, queries[qi], rows, len(rows))
                out[qi] = best_entries_per_item(rows[pos][None, :], sc[None, :], store.slot_item, k)[0][0]
            if len(out[qi][0]) < k:
                # Never silently short: if enough matching items exist, search them exactly.
                if n_items_match is None:
                    live = mask if mask is not None else store.slot_entry[: store.n_slots] >= 0
                    n_items_match = len(np.unique(store.slot_item[: store.n_slots][live]))
                if n_items_match > len(out[qi][0]):
                    subset = np.flatnonzero(mask) if mask is not None else store.live_slots()
                    out[qi] = self._exact(queries[qi : qi + 1], subset, k, t)[0]
        t.rescore_s = rescore_before + time.perf_counter() - t2
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
        """Hit objects for the final top k only (columns read once per call, not per hit)."""
        store = self.store
        slot_rec = store.slot_rec
        hits = []
        eids = store.slot_entry[slots].tolist()
        for slot, eid, score in zip(slots.tolist(), eids, scores.tolist(), strict=True):
            rec = slot_rec[slot]
            assert rec is not None  # a live slot (the caller holds the read lock)
            boxes = rec.boxes
            box = boxes[0] if len(boxes) == 1 else store.entry_box(rec, eid)
            vec = np.asarray(store.vectors[slot], dtype="<f2").tobytes() if include_vectors else b""
            hits.append(Hit(rec.item_id, eid, score, rec.metadata, box, vec))
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
                    (
                        r.item_id,
                        r.metadata,
                        list(r.entry_ids),
                        list(r.boxes),
                        self.versions.live.get(r.item_id, 0),
                    )
                    for r in self.store.items.values()
                ]
                markers = list(self.versions.deleted.items())
                peer_seq = dict(self.peer_seq)
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
                    version=version,
                ).SerializeToString()
                for item_id, md, eids, boxes, version in recs
            )
            files: dict[str, bytes | memoryview] = {
                "vectors.npy": buf.getbuffer(),
                "items.pb": items,
                DELETE_MARKERS_FILE: _write_delimited(
                    shard_pb2.ItemVersion(item_id=i, version=v).SerializeToString() for i, v in markers
                ),
            }
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
                    "last_write_unix": self.last_write_unix,
                    "model_version": self.model_version,
                    "dim": self.dim,
                    "shard_id": self.shard_id,
                    "entries": len(vectors),
                    "items": len(recs),
                    "peer_seq": peer_seq,
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
