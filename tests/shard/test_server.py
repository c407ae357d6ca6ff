"""Against a real `vsearch shard` process on loopback: API, bad inputs, health, reflection,
metrics, deadlines, SIGTERM/SIGKILL recovery."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.shard.helpers import MODEL, catalog, f16, make_item, query, unit_vectors, upsert_req
from visual_search import contract
from visual_search.shard.process import ShardProcess
from visual_search.supervise import free_port
from visual_search.v1 import shard_pb2 as pb

DIM = contract.EMBEDDING_DIM

ARGS = ["--faiss-threads", "1", "--pq-bits", "4", "--train-threshold", "100000", "--grace", "2"]


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardProcess]:
    d = tmp_path_factory.mktemp("srv")
    with ShardProcess(d / "data", model_version=MODEL, metrics_port=free_port(), extra_args=ARGS) as s:
        items, _ = catalog(300)
        s.stub().Upsert(upsert_req(items), timeout=30)
        yield s


def code_of(fn, *a, **kw) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        fn(*a, **kw)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_search_get_stats(shard: ShardProcess) -> None:
    stub = shard.stub()
    _, vecs = catalog(300)
    resp = stub.Search(
        pb.SearchRequest(
            queries=[query(vecs[7]), query(vecs[8])], k=5, model_version=MODEL, include_vectors=True
        ),
        timeout=10,
    )
    assert [r.hits[0].item_id for r in resp.results] == ["item-7", "item-8"]
    assert resp.model_version == MODEL and resp.results[0].hits[0].metadata.category == "c2"
    assert len(resp.results[0].hits[0].vector_f16) == 2 * contract.EMBEDDING_DIM
    got = stub.Get(pb.GetRequest(item_ids=["item-7", "ghost"], include_vectors=True), timeout=10)
    assert [i.item_id for i in got.items] == ["item-7"] and list(got.not_found) == ["ghost"]
    assert got.items[0].entries[0].vector_f16 == f16(vecs[7])
    stats = stub.Stats(pb.StatsRequest(), timeout=10)
    assert stats.items >= 300 and stats.index_type == "flat" and stats.model_version == MODEL


def test_stream_upsert_and_delete(shard: ShardProcess) -> None:
    stub = shard.stub()
    v = unit_vectors(3, seed=42)
    reqs = [upsert_req([make_item(f"s{i}", v[i])]) for i in range(3)]
    resp = stub.UpsertStream(iter(reqs), timeout=10)
    assert resp.upserted_items == 3 and resp.upserted_entries == 3
    hit = stub.Search(pb.SearchRequest(queries=[query(v[1])], k=1, model_version=MODEL), timeout=10)
    assert hit.results[0].hits[0].item_id == "s1"
    d = stub.Delete(pb.DeleteRequest(item_ids=["s1", "never-existed"]), timeout=10)
    assert d.deleted == 1 and list(d.not_found) == ["never-existed"]
    hit = stub.Search(pb.SearchRequest(queries=[query(v[1])], k=3, model_version=MODEL), timeout=10)
    assert "s1" not in [h.item_id for h in hit.results[0].hits]


def _good_q() -> pb.QueryVector:
    return query(unit_vectors(1, seed=1)[0])


BAD_SEARCHES = {
    "nan": (
        pb.SearchRequest(queries=[pb.QueryVector(vector_f32=[float("nan")] * DIM)], k=5, model_version=MODEL),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "inf": (
        pb.SearchRequest(
            queries=[pb.QueryVector(vector_f32=[float("inf")] + [0.0] * 255)], k=5, model_version=MODEL
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "wrong_dim": (
        pb.SearchRequest(queries=[pb.QueryVector(vector_f32=[0.0625] * 128)], k=5, model_version=MODEL),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "wrong_dim_f16": (
        pb.SearchRequest(queries=[pb.QueryVector(vector_f16=b"\0" * 10)], k=5, model_version=MODEL),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "zero": (
        pb.SearchRequest(queries=[pb.QueryVector(vector_f32=[0.0] * DIM)], k=5, model_version=MODEL),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "not_normalised": (
        pb.SearchRequest(queries=[pb.QueryVector(vector_f32=[0.5] * DIM)], k=5, model_version=MODEL),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "k0": (pb.SearchRequest(queries=[_good_q()], k=0, model_version=MODEL), grpc.StatusCode.INVALID_ARGUMENT),
    "k_big": (
        pb.SearchRequest(queries=[_good_q()], k=contract.MAX_K + 1, model_version=MODEL),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "nprobe_big": (
        pb.SearchRequest(queries=[_good_q()], k=5, nprobe=contract.MAX_NPROBE + 1, model_version=MODEL),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "empty_batch": (pb.SearchRequest(queries=[], k=5, model_version=MODEL), grpc.StatusCode.INVALID_ARGUMENT),
    "oversize_batch": (
        pb.SearchRequest(queries=[_good_q()] * (contract.MAX_QUERY_BATCH + 1), k=5, model_version=MODEL),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "other_version": (
        pb.SearchRequest(queries=[_good_q()], k=5, model_version="v999"),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    "no_version": (pb.SearchRequest(queries=[_good_q()], k=5), grpc.StatusCode.INVALID_ARGUMENT),
    "unknown_field": (
        pb.SearchRequest(
            queries=[_good_q()],
            k=5,
            model_version=MODEL,
            filter=pb.Filter(clauses=[pb.FilterClause(field="colour", equals="red")]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "range_on_string": (
        pb.SearchRequest(
            queries=[_good_q()],
            k=5,
            model_version=MODEL,
            filter=pb.Filter(clauses=[pb.FilterClause(field="category", range=pb.Range(min=1))]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "empty_range": (
        pb.SearchRequest(
            queries=[_good_q()],
            k=5,
            model_version=MODEL,
            filter=pb.Filter(clauses=[pb.FilterClause(field="price", range=pb.Range(min=5, max=1))]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "no_op": (
        pb.SearchRequest(
            queries=[_good_q()],
            k=5,
            model_version=MODEL,
            filter=pb.Filter(clauses=[pb.FilterClause(field="price")]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SEARCHES))
def test_bad_search_inputs(shard: ShardProcess, case: str) -> None:
    req, expected = BAD_SEARCHES[case]
    try:
        shard.stub().Search(req, timeout=10)
        pytest.fail("accepted a bad request")
    except grpc.RpcError as exc:
        assert exc.code() == expected
        assert exc.details()  # a message saying what is wrong


def test_slightly_off_norm_is_renormalised(shard: ShardProcess) -> None:
    _, vecs = catalog(300)
    resp = shard.stub().Search(
        pb.SearchRequest(
            queries=[pb.QueryVector(vector_f32=(vecs[9] * 1.005).tolist())], k=1, model_version=MODEL
        ),
        timeout=10,
    )
    assert resp.results[0].hits[0].item_id == "item-9" and resp.results[0].hits[0].score <= 1.001


def test_bad_upserts_write_nothing(shard: ShardProcess) -> None:
    stub = shard.stub()
    before = stub.Stats(pb.StatsRequest(), timeout=10).wal_sequence
    v = unit_vectors(2, seed=5)
    good = make_item("bad-batch-good", v[0])
    cases = {
        "dup_item": [good, make_item("bad-batch-good", v[1])],
        "nan_vec": [
            good,
            pb.Item(item_id="x", entries=[pb.Entry(entry_id=1, vector_f32=[float("nan")] * DIM)]),
        ],
        "no_entries": [good, pb.Item(item_id="y")],
        "empty_id": [pb.Item(item_id="", entries=good.entries)],
        "dup_entry": [good, pb.Item(item_id="z", entries=good.entries)],
        "bad_box": [pb.Item(item_id="b", entries=[pb.Entry(entry_id=5, vector_f16=f16(v[0]), box=[1, 2])])],
        "nan_price": [
            pb.Item(item_id="p", metadata=pb.ItemMetadata(price=float("nan")), entries=good.entries)
        ],
        "both_forms": [
            pb.Item(
                item_id="f", entries=[pb.Entry(entry_id=6, vector_f16=f16(v[0]), vector_f32=v[0].tolist())]
            )
        ],
    }
    for name, items in cases.items():
        assert code_of(stub.Upsert, upsert_req(items), timeout=10) == grpc.StatusCode.INVALID_ARGUMENT, name
    assert code_of(stub.Upsert, upsert_req([]), timeout=10) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code_of(stub.Upsert, upsert_req([good], model="v0"), timeout=10)
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert stub.Stats(pb.StatsRequest(), timeout=10).wal_sequence == before  # all-or-nothing
    assert list(stub.Get(pb.GetRequest(item_ids=["bad-batch-good"]), timeout=10).not_found) == [
        "bad-batch-good"
    ]


_vec = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=300),
    st.builds(
        lambda n, s: (unit_vectors(1, seed=s)[0][:n]).tolist(),
        st.sampled_from([contract.EMBEDDING_DIM, contract.EMBEDDING_DIM - 1, contract.EMBEDDING_DIM + 1]),
        st.integers(0, 50),
    ),
)
_clause = st.builds(
    lambda f, op, s: (
        pb.FilterClause(field=f, **{op: s})
        if op != "range"
        else pb.FilterClause(field=f, range=pb.Range(min=float(len(s)), max=float(len(s) * 2)))
    ),
    st.sampled_from(["category", "price", "available", "region", "attr.color", "attr.", "bogus", ""]),
    st.sampled_from(["equals", "range"]),
    st.text(max_size=5),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    vecs=st.lists(_vec, min_size=0, max_size=3),
    k=st.integers(0, 1200),
    nprobe=st.integers(0, 70000),
    rescore=st.integers(0, 11000),
    version=st.sampled_from([MODEL, "", "other"]),
    clauses=st.lists(_clause, max_size=3),
    exact=st.booleans(),
)
def test_property_random_search_requests(
    shard: ShardProcess,
    vecs,
    k,
    nprobe,
    rescore,
    version,
    clauses,  # type: ignore[no-untyped-def]
    exact,
) -> None:
    """Any request shape gets OK or a client-error status (never INTERNAL/UNKNOWN), OK answers are
    well-formed, and the shard keeps serving."""
    req = pb.SearchRequest(
        queries=[pb.QueryVector(vector_f32=v) for v in vecs],
        k=k,
        nprobe=nprobe,
        rescore_k=rescore,
        model_version=version,
        filter=pb.Filter(clauses=clauses),
        exact=exact,
    )
    stub = shard.stub()
    try:
        resp = stub.Search(req, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), (
            exc.details()
        )
    else:
        assert len(resp.results) == len(vecs)
        for r in resp.results:
            scores = [h.score for h in r.hits]
            assert len(r.hits) <= k and scores == sorted(scores, reverse=True)
            assert len({h.item_id for h in r.hits}) == len(r.hits)
    assert stub.Stats(pb.StatsRequest(), timeout=10).items >= 300


def test_health_reflection_metrics(shard: ShardProcess) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(shard.channel())
    resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"visual_search.v1.SearchShard", "grpc.health.v1.Health"} <= names
    shard.stub().Search(pb.SearchRequest(queries=[_good_q()], k=3, model_version=MODEL), timeout=10)
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{shard.metrics_port}/metrics", timeout=10).read().decode()
    )
    for metric in (
        'vsearch_shard_search_stage_seconds_count{shard="0",stage="ann"}',
        "vsearch_shard_vectors",
        "vsearch_shard_tombstones",
        "vsearch_shard_wal_bytes",
        "vsearch_shard_snapshot_age_seconds",
        "vsearch_shard_index_age_seconds",
    ):
        assert metric in text


def test_deadline_exceeded_then_still_serving(shard: ShardProcess) -> None:
    big = pb.SearchRequest(queries=[_good_q()] * 256, k=100, exact=True, model_version=MODEL)
    assert code_of(shard.stub().Search, big, timeout=0.001) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert shard.stub().Stats(pb.StatsRequest(), timeout=10).items >= 300


def test_sigkill_and_sigterm_recovery(tmp_path: Path) -> None:
    s = ShardProcess(tmp_path / "data", model_version=MODEL, extra_args=ARGS)
    s.start()
    items, vecs = catalog(200)
    for a in range(0, 200, 20):
        s.stub().Upsert(upsert_req(items[a : a + 20]), timeout=10)
    s.stub().Delete(pb.DeleteRequest(item_ids=["item-0", "item-1"]), timeout=10)
    s.kill()  # no final snapshot: recovery is WAL replay alone
    s.start()
    stats = s.stub().Stats(pb.StatsRequest(), timeout=10)
    assert stats.items == 198
    got = s.stub().Get(pb.GetRequest(item_ids=[f"item-{i}" for i in range(200)]), timeout=10)
    assert sorted(got.not_found) == ["item-0", "item-1"]
    resp = s.stub().Search(pb.SearchRequest(queries=[query(vecs[150])], k=1, model_version=MODEL), timeout=10)
    assert resp.results[0].hits[0].item_id == "item-150"
    assert s.stop() == 0  # SIGTERM: drain + final snapshot
    snaps = list((tmp_path / "data" / "snapshots").glob("snap-*"))
    assert snaps, "no final snapshot on SIGTERM"
    s.start()
    assert s.stub().Stats(pb.StatsRequest(), timeout=10).items == 198
    s.stop()


def test_refuses_to_start_with_other_model_version(tmp_path: Path) -> None:
    with ShardProcess(tmp_path / "data", model_version=MODEL, extra_args=ARGS):
        pass
    other = ShardProcess(tmp_path / "data", model_version="v2", extra_args=ARGS)
    proc = subprocess.run(other.command(), capture_output=True, timeout=60, check=False)
    assert proc.returncode == 2 and b"model_version" in proc.stderr
