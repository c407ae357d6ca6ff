"""Per-shard time budget on real processes: a shard stopped with SIGSTOP (alive, connected, silent)
must not hold the query until the caller's deadline; the answer comes from the other shard within
the budget, partial=true, naming the stalled one."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from tests.gateway.conftest import MODEL, Cluster
from visual_search import client as vc
from visual_search.gateway.process import GatewayProcess
from visual_search.v1 import search_pb2

DEADLINE_S = 20.0  # the caller's deadline: the stalled shard must not make anyone wait for it


def timed_search(c: vc.Client, cluster: Cluster, **kw: object) -> tuple[vc.SearchResult, float]:
    t0 = time.monotonic()
    res = c.search(vector=cluster.vectors["item0002"], model_version=MODEL, k=5, timeout=DEADLINE_S, **kw)
    return res, time.monotonic() - t0


def test_per_request_budget_answers_without_the_stalled_shard(cluster: Cluster, tmp_path: Path) -> None:
    with (
        GatewayProcess(cluster.spec(), model_version=MODEL, log_path=tmp_path / "gw.log") as gw,
        vc.Client(gw.address, retries=0) as c,
    ):
        res, _ = timed_search(c, cluster)
        assert not res.partial
        os.kill(cluster.shard1.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            opts = search_pb2.SearchOptions(shard_budget_ms=300)
            for _ in range(3):
                res, elapsed = timed_search(c, cluster, options=opts)
                assert res.partial and res.missing_shards == [1]
                assert res.hits and all(h.shard_id == 0 for h in res.hits)
                assert elapsed < 3.0, elapsed  # the 300 ms budget, not the 20 s deadline
        finally:
            os.kill(cluster.shard1.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        res, _ = timed_search(c, cluster)
        assert not res.partial  # resumed: both shards answer again


def test_default_budget_follows_recent_p99_and_cap(cluster: Cluster, tmp_path: Path) -> None:
    args = ["--shard-budget-max-ms", "2000", "--shard-budget-min-ms", "150"]
    with (
        GatewayProcess(
            cluster.spec(), model_version=MODEL, log_path=tmp_path / "gw.log", extra_args=args
        ) as gw,
        vc.Client(gw.address, retries=0) as c,
    ):
        for _ in range(30):  # enough samples for a p99: budget = max(150 ms, 1.5 x p99)
            assert not timed_search(c, cluster)[0].partial
        os.kill(cluster.shard1.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            res, elapsed = timed_search(c, cluster)
            assert res.partial and res.missing_shards == [1] and res.hits
            assert elapsed < 1.5, elapsed  # well under the 2 s cap: the budget came from the p99
        finally:
            os.kill(cluster.shard1.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]


def test_budget_drops_slow_shards_but_never_turns_a_slow_answer_into_none(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Both shards stalled past the budget (an overloaded host): the query waits for the first one
    (up to the budget cap) instead of failing with UNAVAILABLE."""
    pids = [p.proc.pid for p in [*cluster.shard0, cluster.shard1]]  # type: ignore[union-attr]
    with (
        GatewayProcess(cluster.spec(), model_version=MODEL, log_path=tmp_path / "gw.log") as gw,
        vc.Client(gw.address, retries=0) as c,
    ):
        assert not timed_search(c, cluster)[0].partial
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        resume = threading.Timer(0.5, lambda: [os.kill(pid, signal.SIGCONT) for pid in pids])
        resume.start()
        try:
            opts = search_pb2.SearchOptions(shard_budget_ms=100)
            res, elapsed = timed_search(c, cluster, options=opts)
            assert res.hits  # an answer, not UNAVAILABLE
            if not res.partial:  # both shards made it (the usual case): the right item first
                assert res.hits[0].item_id == "item0002"
            assert 0.4 < elapsed < 3.0, elapsed  # waited for the stalled shards, not the deadline
        finally:
            resume.join()
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
