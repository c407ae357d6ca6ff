"""Metadata-only updates and the hash-first exact lookup on the shard: engine (real FAISS, WAL,
snapshots) and a real shard process over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.shard.helpers import DIM, MODEL, catalog, make_item, unit_vectors, upsert_req
from visual_search.shard.engine import EngineConfig, ShardEngine
from visual_search.shard.filters import compile_filter
from visual_search.shard.index import IndexConfig
from visual_search.shard.process import ShardProcess
from visual_search.shard.validation import ValidationError
from visual_search.v1 import shard_pb2 as pb

ARGS = ["--faiss-threads", "1", "--pq-bits", "4", "--train-threshold", "100000", "--grace", "2"]


def open_engine(path: Path) -> ShardEngine:
    cfg = EngineConfig(index=IndexConfig(train_threshold=1_000_000, pq_bits=4))
    return ShardEngine(path, shard_id=0, model_version=MODEL, dim=DIM, config=cfg)


def flt(*clauses: pb.FilterClause) -> pb.Filter:
    return pb.Filter(clauses=list(clauses))


def ids_matching(eng: ShardEngine, q: np.ndarray, f: pb.Filter, k: int = 50) -> set[str]:
    res, _ = eng.search(q[None, :], k, flt=compile_filter(f), exact=True)
    return {h.item_id for h in res[0]}


def test_patch_sets_only_given_fields_filters_see_it_and_it_survives_wal_and_snapshot(tmp_path: Path) -> None:
    d = tmp_path / "d"
    eng = open_engine(d)
    items, vecs = catalog(40)  # item-i: category c{i%5}, price i, available i%2==0, attrs color
    items[7].metadata.phash = 0xABCDEF
    eng.upsert(upsert_req(items))
    patches = [
        pb.MetadataPatch(item_id="item-7", price=999.0, available=False, attributes={"size": "xl"}),
        pb.MetadataPatch(item_id="item-8", category="sale", remove_attributes=["color"]),
        pb.MetadataPatch(item_id="item-9", replace_attributes=True, attributes={"size": "s"}),
        pb.MetadataPatch(item_id="nope", price=1.0),
    ]
    out = eng.update_metadata(patches)
    assert (out.updated, out.not_found, out.superseded) == (3, ["nope"], []) and out.wal_sequence > 0

    def check(e: ShardEngine) -> None:
        (it7, it8, it9), _ = e.get(["item-7", "item-8", "item-9"], include_vectors=True)
        assert it7.metadata.price == 999.0 and not it7.metadata.available
        assert it7.metadata.category == "c2" and it7.metadata.region == "r1"  # untouched fields kept
        assert dict(it7.metadata.attributes) == {"color": "blue", "size": "xl"}
        assert it7.metadata.phash == 0xABCDEF  # never patched
        assert np.frombuffer(it7.entries[0].vector_f16, "<f2").astype(np.float32) @ vecs[7] > 0.999
        assert it8.metadata.category == "sale" and dict(it8.metadata.attributes) == {}
        assert dict(it9.metadata.attributes) == {"size": "s"}
        q = vecs[7]
        rng = pb.Range(min=500.0)
        assert ids_matching(e, q, flt(pb.FilterClause(field="price", range=rng))) == {"item-7"}
        assert ids_matching(e, q, flt(pb.FilterClause(field="category", equals="sale"))) == {"item-8"}
        assert ids_matching(e, q, flt(pb.FilterClause(field="attr.size", equals="s"))) == {"item-9"}
        blue = ids_matching(e, q, flt(pb.FilterClause(field="attr.color", equals="blue")))
        assert "item-9" not in blue and "item-7" in blue  # replaced vs merged attributes
        assert "item-7" in ids_matching(e, q, flt(pb.FilterClause(field="available", bool_equals=False)))

    check(eng)
    eng.close(final_snapshot=False)  # crash after the fsync: recovery replays the WAL record
    eng2 = open_engine(d)
    check(eng2)
    eng2.snapshot()
    eng2.close(final_snapshot=False)
    eng3 = open_engine(d)  # from the snapshot (the WAL before it is covered)
    check(eng3)
    eng3.close(final_snapshot=False)


def test_bad_patches_write_nothing(tmp_path: Path) -> None:
    eng = open_engine(tmp_path / "d")
    items, _ = catalog(5)
    eng.upsert(upsert_req(items))
    seq = eng.applied_seq
    bad = [
        [],
        [pb.MetadataPatch(item_id="item-1")],  # changes nothing
        [pb.MetadataPatch(item_id="item-1", price=1.0), pb.MetadataPatch(item_id="item-1", price=2.0)],
        [pb.MetadataPatch(item_id="item-1", price=float("nan"))],
        [pb.MetadataPatch(item_id="", price=1.0)],
        [pb.MetadataPatch(item_id="item-1", attributes={"a": "1"}, remove_attributes=["a"])],
        [pb.MetadataPatch(item_id="item-2", price=5.0),  # fine, but the next one exceeds 64 attributes
         pb.MetadataPatch(item_id="item-1", attributes={f"k{i}": "v" for i in range(64)})],
    ]
    for patches in bad:
        with pytest.raises(ValidationError):
            eng.update_metadata(patches)
    assert eng.applied_seq == seq and eng.wal.last_seq == seq
    assert eng.get(["item-2"], False)[0][0].metadata.price == 2.0
    eng.close(final_snapshot=False)


def test_exact_lookup_finds_hash_neighbours_respects_filter_and_deletes(tmp_path: Path) -> None:
    eng = open_engine(tmp_path / "d")
    vecs = unit_vectors(30, seed=3)
    base = 0x0123_4567_89AB_CDEF
    items = [make_item(f"i{j}", vecs[j], available=j != 2) for j in range(30)]
    items[1].metadata.phash = base
    items[2].metadata.phash = base ^ 0b111  # 3 bits away
    items[3].metadata.phash = base ^ 0xFFFF  # 16 bits away
    eng.upsert(upsert_req(items))
    q = vecs[20][None, :]
    hits = eng.exact_lookup(q, base, 6, None, 10)[0]
    assert [h.item_id for h in hits] == ["i1", "i2"]  # nearest hash first; i3 too far; none for 0
    assert hits[0].score == pytest.approx(float(vecs[1] @ vecs[20]), abs=2e-3)
    avail = compile_filter(flt(pb.FilterClause(field="available", bool_equals=True)))
    assert [h.item_id for h in eng.exact_lookup(q, base, 6, avail, 10)[0]] == ["i1"]
    eng.delete(["i1"])
    assert [h.item_id for h in eng.exact_lookup(q, base, 6, None, 10)[0]] == ["i2"]
    eng.upsert(upsert_req([make_item("i2", vecs[2])]))  # replaced by a photo without a hash
    assert eng.exact_lookup(q, base, 6, None, 10)[0] == []
    eng.close(final_snapshot=False)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardProcess]:
    d = tmp_path_factory.mktemp("srv")
    with ShardProcess(d / "data", model_version=MODEL, extra_args=ARGS) as s:
        items, _ = catalog(200)
        for i, it in enumerate(items):
            it.metadata.phash = 1000 + i
        s.stub().Upsert(upsert_req(items), timeout=30)
        yield s


def test_update_metadata_rpc_then_filtered_search_and_restart(shard: ShardProcess) -> None:
    stub = shard.stub()
    _, vecs = catalog(200)
    q = pb.QueryVector(vector_f16=vecs[10].astype("<f2").tobytes())
    region_x = pb.Filter(clauses=[pb.FilterClause(field="region", equals="x-new")])
    search = pb.SearchRequest(queries=[q], k=5, filter=region_x, model_version=MODEL)
    assert not stub.Search(search).results[0].hits
    req = pb.UpdateMetadataRequest(
        patches=[pb.MetadataPatch(item_id=f"item-{i}", region="x-new") for i in (10, 11)]
        + [pb.MetadataPatch(item_id="missing", region="x-new")]
    )
    resp = stub.UpdateMetadata(req, timeout=10)
    assert resp.updated == 2 and list(resp.not_found) == ["missing"] and resp.wal_sequence > 0
    hits = stub.Search(search).results[0].hits
    assert {h.item_id for h in hits} == {"item-10", "item-11"}
    assert hits[0].item_id == "item-10" and hits[0].metadata.phash == 1010  # the hash is kept
    with pytest.raises(grpc.RpcError) as e:
        stub.UpdateMetadata(pb.UpdateMetadataRequest(patches=[pb.MetadataPatch(item_id="item-1")]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "changes nothing" in (e.value.details() or "")
    shard.kill()  # SIGKILL: the acknowledged update must come back from the WAL
    shard.start()
    stub = shard.stub()
    assert {h.item_id for h in stub.Search(search).results[0].hits} == {"item-10", "item-11"}


def test_search_with_phash_returns_exact_hits_outside_the_vector_hits(shard: ShardProcess) -> None:
    stub = shard.stub()
    _, vecs = catalog(200)
    q = pb.QueryVector(vector_f16=vecs[0].astype("<f2").tobytes())
    req = pb.SearchRequest(queries=[q], k=1, model_version=MODEL, phash=1000 + 150, phash_max_distance=0)
    res = stub.Search(req).results[0]
    assert [h.item_id for h in res.hits] == ["item-0"]
    assert [h.item_id for h in res.exact_hits] == ["item-150"]
    too_far = pb.SearchRequest(queries=[q], k=1, model_version=MODEL, phash=5, phash_max_distance=17)
    with pytest.raises(grpc.RpcError) as e:
        stub.Search(too_far)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
