"""Partial results: a shard that misses the deadline or dies leaves the others' answer (R14)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.gateway.conftest import MODEL, Cluster
from tests.gateway.slowproxy import SlowProxy
from visual_search import client as vc
from visual_search.gateway.process import GatewayProcess, metric_value


def test_shard_missing_the_deadline_gives_partial_results(cluster: Cluster, tmp_path: Path) -> None:
    slow = [SlowProxy(r.port, delay_s=1.0).start() for r in cluster.shard0]
    try:
        spec = cluster.spec([p.address for p in slow])
        with (
            GatewayProcess(spec, model_version=MODEL, log_path=tmp_path / "gw.log") as gw,
            vc.Client(gw.address) as c,
        ):
            # warm-up: connections to the shards are set up on first use, not in the timed call
            c.search(vector=cluster.vectors["item0001"], model_version=MODEL, k=5, timeout=10)
            t0 = time.monotonic()
            res = c.search(vector=cluster.vectors["item0001"], model_version=MODEL, k=5, timeout=0.4)
            elapsed = time.monotonic() - t0
            assert res.partial and res.missing_shards == [0]
            assert res.hits and all(h.shard_id == 1 for h in res.hits)
            assert elapsed < 0.9  # the caller's deadline bounded the wait, not the 1 s shard
            assert metric_value(gw.metrics_text(), "vsearch_gateway_partial_results_total") >= 1
    finally:
        for p in slow:
            p.stop()


def test_no_shard_before_the_deadline_is_deadline_exceeded_not_unavailable(
    cluster: Cluster, tmp_path: Path
) -> None:
    slow = [SlowProxy(r.port, delay_s=2.0).start() for r in (*cluster.shard0, cluster.shard1)]
    try:
        spec = cluster.spec([p.address for p in slow[:2]], [slow[2].address])
        with (
            GatewayProcess(spec, model_version=MODEL, log_path=tmp_path / "gw.log") as gw,
            vc.Client(gw.address, retries=0) as c,
        ):
            with pytest.raises(vc.DeadlineExceeded):
                c.search(vector=cluster.vectors["item0003"], model_version=MODEL, k=5, timeout=0.5)
            time.sleep(0.3)  # the gateway records the call when its handler returns
            text = gw.metrics_text()
            # the gateway's own verdict (the client may see its local deadline first)
            labels = {"method": "Search", "code": "DEADLINE_EXCEEDED"}
            assert metric_value(text, "vsearch_gateway_requests_total", labels) == 1
            assert metric_value(text, "vsearch_gateway_requests_total", {"code": "UNAVAILABLE"}) == 0
    finally:
        for p in slow:
            p.stop()


def test_killed_shard_gives_partial_results_then_all_dead_is_unavailable(
    cluster: Cluster, tmp_path: Path
) -> None:
    gw = GatewayProcess(cluster.spec(), model_version=MODEL, log_path=tmp_path / "gw.log")
    with gw, vc.Client(gw.address, retries=0) as c:
        q = cluster.vectors["item0002"]
        assert not c.search(vector=q, model_version=MODEL, k=5).partial
        cluster.shard1.kill()
        res = c.search(vector=q, model_version=MODEL, k=5)
        assert res.partial and res.missing_shards == [1]
        assert len(res.hits) == 5 and all(h.shard_id == 0 for h in res.hits)
        cluster.shard0[0].kill()  # one replica of shard 0 left: still answers, fails over
        res = c.search(vector=q, model_version=MODEL, k=5)
        assert res.missing_shards == [1] and len(res.hits) == 5
        cluster.shard0[1].kill()
        with pytest.raises(vc.Unavailable, match="no shard answered"):
            c.search(vector=q, model_version=MODEL, k=5)
