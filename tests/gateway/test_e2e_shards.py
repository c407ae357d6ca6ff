"""End to end on real processes: shard replicas + `vsearch gateway`, synthetic vectors (no Triton).

Covers vector and item-id queries, filters, re-rank, deletes, errors at the boundary, auth and
hedging (a replica slowed by a fault-injection proxy; the hedge to the other replica wins).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.gateway.conftest import MODEL, Cluster
from tests.gateway.slowproxy import SlowProxy
from visual_search import client as vc
from visual_search import contract
from visual_search.gateway.process import GatewayProcess, metric_value
from visual_search.v1 import search_pb2, search_pb2_grpc

D = contract.EMBEDDING_DIM


@pytest.fixture(scope="module")
def gateway(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    with GatewayProcess(
        cluster.spec(), model_version=MODEL, log_path=log, extra_args=["--max-message-mb", "1"]
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[vc.Client]:
    with vc.Client(gateway.address, timeout=10, retries=0) as c:
        yield c


def test_vector_query_returns_global_exact_topk_from_both_shards(cluster: Cluster, client: vc.Client) -> None:
    q = cluster.vectors["item0007"]
    res = client.search(
        vector=q, model_version=MODEL, k=10, options=search_pb2.SearchOptions(no_business_rerank=True)
    )
    got = [h.item_id for h in res.hits]
    assert got == cluster.exact_top(q, 10)
    assert res.hits[0].score == pytest.approx(1.0, abs=2e-3)
    assert res.model_version == MODEL and not res.partial
    assert {h.shard_id for h in res.hits} == {0, 1}
    assert res.timings_ms["fanout"] > 0 and res.timings_ms["total"] >= res.timings_ms["fanout"]


def test_more_like_this_uses_the_stored_vector_and_excludes_the_item(
    cluster: Cluster, client: vc.Client
) -> None:
    res = client.search(item_id="item0042", k=5, options=search_pb2.SearchOptions(no_business_rerank=True))
    expected = cluster.exact_top(cluster.vectors["item0042"], 5, exclude="item0042")
    assert [h.item_id for h in res.hits] == expected
    with_self = client.search(item_id="item0042", k=1, options=search_pb2.SearchOptions(include_self=True))
    assert with_self.hits[0].item_id == "item0042"


def test_filters_are_applied(cluster: Cluster, client: vc.Client) -> None:
    q = cluster.vectors["item0001"]
    res = client.search(vector=q, model_version=MODEL, k=20, filters=["category=lamps", "price=10..30"])
    assert res.hits and all(h.category == "lamps" and 10 <= h.price <= 30 for h in res.hits)
    res = client.search(vector=q, model_version=MODEL, k=20, filters=["available=true", "region=eu|us"])
    assert res.hits and all(h.available for h in res.hits)


def test_business_rerank_boosts_the_users_region(cluster: Cluster, client: vc.Client) -> None:
    q = cluster.vectors["item0003"]
    opts = search_pb2.SearchOptions(user_region="eu")
    res = client.search(vector=q, model_version=MODEL, k=10, options=opts)
    for h in res.hits:
        boost = (0.02 if h.available else 0.0) + (0.02 if h.region == "eu" else 0.0)
        assert h.rank_score == pytest.approx(h.score + boost, abs=1e-5)
    assert [h.rank_score for h in res.hits] == sorted((h.rank_score for h in res.hits), reverse=True)


@pytest.mark.parametrize(
    ("query", "code", "text"),
    [
        (
            dict(vector=np.ones(D) / np.sqrt(D), model_version="other-model", k=5),
            grpc.StatusCode.FAILED_PRECONDITION,
            "other-model",
        ),
        (
            dict(vector=np.ones(D) / np.sqrt(D), model_version="", k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "model_version",
        ),
        (
            dict(vector=np.ones(128) / np.sqrt(128), model_version=MODEL, k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "bytes",
        ),
        (
            dict(vector=np.full(D, np.nan), model_version=MODEL, k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (dict(vector=np.ones(D), model_version=MODEL, k=5), grpc.StatusCode.INVALID_ARGUMENT, "norm"),
        (dict(item_id="item0001", k=0), grpc.StatusCode.INVALID_ARGUMENT, "k=0"),
        (dict(item_id="item0001", k=100_000), grpc.StatusCode.INVALID_ARGUMENT, "k=100000"),
        (dict(item_id="no-such-item", k=5), grpc.StatusCode.NOT_FOUND, "no-such-item"),
        (dict(item_id="item0001", k=5, filters=["colour=red"]), grpc.StatusCode.INVALID_ARGUMENT, "colour"),
        (dict(item_id="item0001", k=5, filters=["price=5..1"]), grpc.StatusCode.INVALID_ARGUMENT, "min"),
        (dict(image=b"not an image", k=5), grpc.StatusCode.INVALID_ARGUMENT, "cannot decode"),
        (dict(image=b"", k=5), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ],
)
def test_bad_queries_get_clear_errors(
    client: vc.Client, query: dict, code: grpc.StatusCode, text: str
) -> None:
    with pytest.raises(vc.VisualSearchError) as ei:
        client.search(**query)
    assert ei.value.code == code
    assert text in ei.value.message


def test_empty_query_and_oversize_message(gateway: GatewayProcess, client: vc.Client) -> None:
    with pytest.raises(vc.InvalidArgument, match="query is empty"):
        client.search_raw(search_pb2.QueryRequest(k=5))
    big = search_pb2.QueryRequest(k=5)
    big.image.image = b"\xff" * (2 * 1024 * 1024)  # gateway runs with --max-message-mb 1
    with pytest.raises(vc.ResourceExhausted):
        client.search_raw(big)


def test_delete_takes_effect_immediately(cluster: Cluster, client: vc.Client) -> None:
    q = cluster.vectors["item0299"]
    assert client.search(vector=q, model_version=MODEL, k=1).hits[0].item_id == "item0299"
    deleted, not_found = client.delete(["item0299", "never-indexed"])
    assert (deleted, not_found) == (1, ["never-indexed"])
    assert "item0299" not in [h.item_id for h in client.search(vector=q, model_version=MODEL, k=5).hits]
    with pytest.raises(vc.NotFound):
        client.search(item_id="item0299", k=5)


def test_index_without_triton_reports_per_item_errors(client: vc.Client) -> None:
    bus = (Path(__file__).parents[1] / "data" / "bus.jpg").read_bytes()
    items = [vc.IndexItem("bad", b"garbage"), vc.IndexItem("", bus), vc.IndexItem("good", bus)]
    res = {r.item_id: r for r in client.index(items)}
    assert not res["bad"].ok and res["bad"].error_code == "INVALID_ARGUMENT"
    assert "cannot decode" in res["bad"].error
    assert not res[""].ok and "item_id is empty" in res[""].error
    assert not res["good"].ok and res["good"].error_code == "UNAVAILABLE"  # no Triton here


def test_token_auth(cluster: Cluster, tmp_path: Path) -> None:
    with GatewayProcess(
        cluster.spec(),
        model_version=MODEL,
        log_path=tmp_path / "gw.log",
        env={"VSEARCH_AUTH_TOKEN": "s3cret"},
    ) as gw:
        q = cluster.vectors["item0001"]
        for token in (None, "wrong"):
            with vc.Client(gw.address, token=token, retries=0) as c, pytest.raises(vc.Unauthenticated):
                c.search(vector=q, model_version=MODEL, k=1)
        with vc.Client(gw.address, token="s3cret") as c:
            assert c.search(vector=q, model_version=MODEL, k=1).hits[0].item_id == "item0001"
        with grpc.insecure_channel(gw.address) as ch:  # health needs no token
            st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert st.status == health_pb2.HealthCheckResponse.SERVING
            stub = search_pb2_grpc.VisualSearchStub(ch)
            with pytest.raises(grpc.RpcError) as ei:
                stub.DeleteItems(search_pb2.DeleteItemsRequest(item_ids=["x"]), timeout=5)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_slow_replica_is_hedged_and_the_hedge_wins(cluster: Cluster, tmp_path: Path) -> None:
    slow = SlowProxy(cluster.shard0[0].port, delay_s=0.3).start()
    try:
        spec = cluster.spec([slow.address, cluster.shard0[1].address])
        args = ["--hedge-delay-ms", "20", "--no-adaptive-hedge"]
        with GatewayProcess(spec, model_version=MODEL, log_path=tmp_path / "gw.log", extra_args=args) as gw:
            q = cluster.vectors["item0005"]
            with vc.Client(gw.address) as c:
                c.search(vector=q, model_version=MODEL, k=3)  # warm up connections
                times = []
                for _ in range(8):
                    t0 = time.monotonic()
                    res = c.search(vector=q, model_version=MODEL, k=3)
                    times.append(time.monotonic() - t0)
                    assert not res.partial and res.hits[0].item_id == "item0005"
            text = gw.metrics_text()
        won = metric_value(text, "vsearch_gateway_hedges_total", {"shard": "0", "outcome": "won"})
        sent = metric_value(text, "vsearch_gateway_hedges_total", {"shard": "0", "outcome": "sent"})
        assert won >= 3 and sent >= won  # round robin sends about half the queries to the slow one first
        assert max(times) < 0.25, times  # never waited for the 300 ms replica
    finally:
        slow.stop()
