"""In-process tests of the replication side of the engine: last-write-wins versions, delete
markers, the digest, and pulling a peer's state (full copy + WAL tail) with restarts in between."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.shard.helpers import DIM, MODEL, catalog, make_item, unit_vectors, upsert_req
from visual_search.shard.engine import EngineConfig, ShardEngine
from visual_search.shard.index import IndexConfig
from visual_search.v1 import shard_pb2 as pb


def open_engine(path: Path, **kw: object) -> ShardEngine:
    cfg = EngineConfig(index=IndexConfig(train_threshold=1_000_000), **kw)  # type: ignore[arg-type]
    return ShardEngine(path, shard_id=0, model_version=MODEL, dim=DIM, config=cfg)


def versioned(item: pb.Item, version: int) -> pb.Item:
    out = pb.Item()
    out.CopyFrom(item)
    out.version = version
    return out


def pull(dst: ShardEngine, src: ShardEngine) -> int:
    """What the replicator does for one peer: Sync from the last pulled sequence, apply."""
    have = dst.peer_seq.get(src.uid, 0)
    return sum(dst.apply_pulled(r) for r in src.sync_records(src.uid if have else "", have))


def state(eng: ShardEngine) -> dict[str, tuple[int, bytes]]:
    got, _ = eng.get(list(eng.store.items), include_vectors=True)
    return {it.item_id: (it.version, it.entries[0].vector_f16) for it in got}


def test_last_write_wins_per_item_including_deletes(tmp_path: Path) -> None:
    eng = open_engine(tmp_path / "a")
    v = unit_vectors(4, seed=3)
    assert eng.upsert(upsert_req([versioned(make_item("x", v[0]), 10)])).items == 1
    older = eng.upsert(upsert_req([versioned(make_item("x", v[1]), 5)]))
    assert (older.items, older.superseded) == (0, ["x"])
    assert eng.delete(["x"], version=7).superseded == ["x"]  # an older delete does not remove it
    assert state(eng)["x"][0] == 10
    out = eng.delete(["x", "never-seen"], version=20)
    assert (out.deleted, out.not_found, out.superseded) == (1, ["never-seen"], [])
    # the markers stop older writes that arrive late (a slow replica, a repair from a stale peer)
    assert eng.upsert(upsert_req([versioned(make_item("x", v[2]), 15)])).superseded == ["x"]
    assert eng.upsert(upsert_req([versioned(make_item("never-seen", v[2]), 19)])).superseded == ["never-seen"]
    assert "x" not in eng.store.items
    assert eng.upsert(upsert_req([versioned(make_item("x", v[3]), 30)])).items == 1
    digest = eng.versions.digest
    eng.close(final_snapshot=False)  # recovery by WAL replay keeps versions and markers
    eng = open_engine(tmp_path / "a")
    assert eng.versions.digest == digest and state(eng)["x"][0] == 30
    assert eng.versions.deleted == {"never-seen": 20}
    eng.close(final_snapshot=True)  # and so does recovery from a snapshot
    eng = open_engine(tmp_path / "a")
    assert eng.versions.digest == digest and eng.versions.deleted == {"never-seen": 20}
    eng.close(final_snapshot=False)


def test_unversioned_writes_get_increasing_versions_and_replace(tmp_path: Path) -> None:
    eng = open_engine(tmp_path / "a")
    v = unit_vectors(2, seed=4)
    item = make_item("y", v[0])
    eng.upsert(upsert_req([item]))
    first = state(eng)["y"][0]
    eng.upsert(upsert_req([make_item("y", v[1])]))  # re-inserting still replaces
    assert state(eng)["y"][0] > first and item.version == 0  # the caller's message is not changed
    eng.close(final_snapshot=False)


def test_same_writes_in_any_order_give_the_same_digest(tmp_path: Path) -> None:
    items, _ = catalog(60)
    writes: list[tuple[str, object]] = [("up", versioned(it, 100 + i)) for i, it in enumerate(items)]
    writes += [("up", versioned(items[i], 500 + i)) for i in range(10)]  # replacements
    writes += [("del", (items[i].item_id, 400 + i)) for i in range(5, 15)]  # some older, some newer
    a, b = open_engine(tmp_path / "a"), open_engine(tmp_path / "b")
    order = np.random.default_rng(0).permutation(len(writes))
    for eng, seq in ((a, range(len(writes))), (b, order)):
        for i in seq:
            kind, w = writes[int(i)]
            if kind == "up":
                eng.upsert(upsert_req([w]))  # type: ignore[list-item]
            else:
                item_id, version = w  # type: ignore[misc]
                eng.delete([item_id], version=version)
    assert a.versions.digest == b.versions.digest and state(a) == state(b)
    assert "item-12" not in a.store.items and "item-7" in a.store.items  # 407 < 507: the write wins
    a.close(final_snapshot=False)
    b.close(final_snapshot=False)


def test_pull_full_copy_then_wal_tail_across_restarts(tmp_path: Path) -> None:
    a, b = open_engine(tmp_path / "a"), open_engine(tmp_path / "b")
    items, _ = catalog(700)
    a.upsert(upsert_req(items[:500]))
    a.delete(["item-3", "item-4"])
    a.snapshot()  # the copy must come from the snapshot-era state plus the WAL after it
    a.upsert(upsert_req(items[500:600]))
    b.upsert(upsert_req(items[650:]))  # a write only b got
    assert pull(b, a) == 598 + 2  # full copy: live items + delete markers
    assert b.peer_seq[a.uid] == a.applied_seq
    assert set(state(a)) <= set(state(b)) and "item-3" not in b.store.items
    assert pull(a, b) == 50  # the other way round: only what a lacks (its own writes are held)
    assert a.versions.digest == b.versions.digest and state(a) == state(b)
    # later writes on a come as its WAL tail; restarts keep how far b has pulled
    a.upsert(upsert_req(items[600:650]))
    a.delete(["item-10"])
    b.close(final_snapshot=False)
    b = open_engine(tmp_path / "b")
    assert b.peer_seq[a.uid] > 0
    records = list(a.sync_records(a.uid, b.peer_seq[a.uid]))
    assert records and not any(r.full_copy for r in records)
    assert pull(b, a) == 51
    assert a.versions.digest == b.versions.digest and state(a) == state(b)
    assert pull(b, a) == 0 and pull(a, b) == 0  # converged: forwarding back and forth copies nothing
    a.close(final_snapshot=False)
    b.close(final_snapshot=False)


def test_wiped_peer_or_dropped_wal_means_a_full_copy(tmp_path: Path) -> None:
    a = open_engine(tmp_path / "a", wal_segment_bytes=4096)
    b = open_engine(tmp_path / "b")
    items, _ = catalog(300)
    a.upsert(upsert_req(items[:100]))
    pull(b, a)
    for i in range(100, 300, 20):
        a.upsert(upsert_req(items[i : i + 20]))
    a.snapshot()
    a.snapshot()  # two snapshots past b's position: the WAL b needs is gone
    assert not a.wal.covers(b.peer_seq[a.uid])
    records = list(a.sync_records(a.uid, b.peer_seq[a.uid]))
    assert records[0].full_copy
    assert pull(b, a) == 200
    assert a.versions.digest == b.versions.digest
    # a replica given someone else's uid (its peer was wiped and came back) gets a full copy too
    assert list(a.sync_records("another-uid", 1))[0].full_copy
    a.close(final_snapshot=False)
    b.close(final_snapshot=False)


def test_metadata_updates_are_versioned_and_reach_a_lagging_replica(tmp_path: Path) -> None:
    a, b = open_engine(tmp_path / "a"), open_engine(tmp_path / "b")
    v = unit_vectors(2, seed=9)
    for eng in (a, b):
        eng.upsert(upsert_req([versioned(make_item("m", v[0]), 10), versioned(make_item("n", v[1]), 10)]))
    out = a.update_metadata([pb.MetadataPatch(item_id="m", price=42.0)], version=20)
    assert (out.updated, out.superseded) == (1, []) and a.versions.live["m"] == 20
    # an older patch arriving late (slow replica, retried request) does not undo the newer one
    late = a.update_metadata([pb.MetadataPatch(item_id="m", price=1.0)], version=15)
    assert (late.updated, late.superseded) == (0, ["m"])
    assert a.get(["m"], include_vectors=False)[0][0].metadata.price == 42.0
    assert a.versions.digest != b.versions.digest  # b missed the patch
    assert pull(b, a) >= 1  # repair carries the patched item, vectors and version included
    got = b.get(["m"], include_vectors=True)[0][0]
    assert got.metadata.price == 42.0 and got.version == 20 and got.entries[0].vector_f16
    assert a.versions.digest == b.versions.digest
    b.close(final_snapshot=False)  # the pulled patch survives a restart of the replica
    b = open_engine(tmp_path / "b")
    assert b.get(["m"], include_vectors=False)[0][0].metadata.price == 42.0
    assert b.versions.digest == a.versions.digest
    a.close(final_snapshot=False)
    b.close(final_snapshot=False)
