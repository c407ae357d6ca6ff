"""Replicas of one shard as real `vsearch shard` processes with `--peers`: seeding, catch-up
gating (NOT_SERVING and UNAVAILABLE reads until caught up), background anti-entropy and the
one-shot Repair call."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.shard.helpers import MODEL, catalog, query, upsert_req
from visual_search.gateway.process import metric_value
from visual_search.shard.process import ShardProcess
from visual_search.supervise import free_port, wait_healthy
from visual_search.v1 import shard_pb2 as pb

BASE = ["--faiss-threads", "1", "--train-threshold", "100000", "--grace", "2", "--log-level", "INFO"]


def pair(root: Path, *extra: str, metrics: bool = False) -> list[ShardProcess]:
    """Two replicas of shard 0 that name each other as peers (the first lists both, itself
    included, as the Helm chart does)."""
    ports = [free_port(), free_port()]
    peers = [f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[0]}"]
    return [
        ShardProcess(
            root / f"r{i}",
            port=ports[i],
            model_version=MODEL,
            metrics_port=free_port() if metrics else None,
            extra_args=[*BASE, "--peers", peers[i], *extra],
        )
        for i in range(2)
    ]


@pytest.fixture
def replicas(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[ShardProcess]]:
    procs = pair(tmp_path, *request.param)
    for p in procs:
        p.start(wait=False)
    try:
        for p in procs:
            wait_healthy(p.address, 120, p.proc)
        yield procs
    finally:
        for p in procs:
            p.stop()


def status(p: ShardProcess) -> pb.ReplicaStatusResponse:
    return p.stub().ReplicaStatus(pb.ReplicaStatusRequest(), timeout=10)


def health(p: ShardProcess) -> int:
    stub = health_pb2_grpc.HealthStub(p.channel())
    return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


def live_ids(p: ShardProcess, item_ids: list[str]) -> set[str]:
    got = p.stub().Get(pb.GetRequest(item_ids=item_ids), timeout=10)
    return {it.item_id for it in got.items}


@pytest.mark.parametrize("replicas", [["--repair-interval", "0.5"]], indirect=True)
def test_background_repair_copies_writes_a_replica_missed(replicas: list[ShardProcess]) -> None:
    a, b = replicas
    items, _ = catalog(260)
    a.stub().Upsert(upsert_req(items[:200]), timeout=30)  # b missed these (as if it was down)
    b.stub().Upsert(upsert_req(items[200:]), timeout=30)  # and a missed these
    a.stub().Delete(pb.DeleteRequest(item_ids=["item-1", "item-2"]), timeout=10)
    wait_for(lambda: status(a).digest == status(b).digest, 60, "replicas converge")
    names = [it.item_id for it in items]
    expected = set(names) - {"item-1", "item-2"}
    assert live_ids(a, names) == live_ids(b, names) == expected
    st = status(b)
    assert st.caught_up and st.items == 258 and st.delete_markers == 2
    assert {p.state for p in st.peers} == {"synced"} and st.peers[0].items_copied >= 200


@pytest.mark.parametrize("replicas", [["--repair-interval", "3600"]], indirect=True)
def test_repair_call_pulls_from_peers_now(replicas: list[ShardProcess]) -> None:
    a, b = replicas
    items, _ = catalog(50)
    a.stub().Upsert(upsert_req(items), timeout=30)
    assert status(a).digest != status(b).digest  # no background round for an hour
    resp = b.stub().Repair(pb.RepairRequest(), timeout=60)
    assert resp.items_copied == 50 and resp.digest == status(a).digest
    assert resp.peers[0].address == a.address and resp.peers[0].state == "synced"
    assert b.stub().Repair(pb.RepairRequest(), timeout=60).items_copied == 0
    more, _ = catalog(5, start=50)
    b.stub().Upsert(upsert_req(more), timeout=30)  # now a misses these: the command repairs both
    cmd = [sys.executable, "-m", "visual_search.cli", "shard", "repair", a.address, b.address, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["in_sync"], out.stdout + out.stderr
    assert [r["items"] for r in report["replicas"]] == [55, 55]
    assert [r["items_copied"] for r in report["replicas"]] == [5, 0]


def test_empty_replica_stays_not_serving_until_it_caught_up(tmp_path: Path) -> None:
    a, b = pair(tmp_path, "--repair-interval", "3600", "--peer-wait", "1", metrics=True)
    for p in (a, b):
        p.start(wait=False)
    try:
        for p in (a, b):
            wait_healthy(p.address, 120, p.proc)
        items, vecs = catalog(300)
        for p in (a, b):  # what the gateway does: the same versioned writes to both
            p.stub().Upsert(upsert_req([_versioned(it, 1000 + i) for i, it in enumerate(items)]), timeout=30)
        a.stop()
        b.kill()
        shutil.rmtree(b.data_dir)  # b comes back empty; its only peer is down
        b.start(wait=False)
        wait_for(lambda: _answers(b), 60, "b answers")
        time.sleep(2.0)  # past --peer-wait: an empty replica still must not serve
        assert health(b) == health_pb2.HealthCheckResponse.NOT_SERVING
        st = status(b)
        assert not st.caught_up and st.items == 0 and st.peers[0].state == "unreachable"
        assert scrape(b, "vsearch_shard_replica_caught_up") == 0
        with pytest.raises(grpc.RpcError) as err:
            b.stub().Search(pb.SearchRequest(queries=[query(vecs[0])], k=5, model_version=MODEL), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "catching up" in (
            err.value.details() or ""
        )
        late, _ = catalog(1, start=300)
        b.stub().Upsert(upsert_req(late), timeout=10)  # writes are taken while catching up
        a.start()
        wait_healthy(b.address, 60, b.proc)
        assert status(b).caught_up and status(b).items == 301
        assert scrape(b, "vsearch_shard_replica_caught_up") == 1
        assert scrape(b, "vsearch_shard_replica_items_copied") == 300
        hits = b.stub().Search(
            pb.SearchRequest(queries=[query(vecs[7])], k=1, model_version=MODEL), timeout=10
        )
        assert hits.results[0].hits[0].item_id == "item-7"
        a.stub().Repair(pb.RepairRequest(), timeout=60)  # a pulls the write only b took
        assert status(a).digest == status(b).digest
        assert [p.state for p in status(a).peers] == ["self", "synced"]
    finally:
        for p in (a, b):
            p.stop()


def _versioned(item: pb.Item, version: int) -> pb.Item:
    out = pb.Item()
    out.CopyFrom(item)
    out.version = version
    return out


def _answers(p: ShardProcess) -> bool:
    try:
        status(p)
        return True
    except grpc.RpcError:
        return False


def scrape(p: ShardProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{p.metrics_port}/metrics", timeout=10) as r:
        return metric_value(r.read().decode(), name, {"shard": "0"})
