"""Write quorum against three real replicas of one shard (`--peers` between them): writes are
acknowledged on the quorum and report under-replication, a replica that missed writes catches up,
and every replica ends up with the same versioned writes (digest)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.gateway.conftest import MODEL, item_for, unit_vectors
from visual_search import client as vc
from visual_search import ids
from visual_search.gateway.config import GatewayConfig, ShardMap
from visual_search.gateway.fanout import ShardFanout, ShardUnavailable
from visual_search.gateway.metrics import GatewayMetrics
from visual_search.gateway.process import GatewayProcess
from visual_search.shard.process import ShardProcess
from visual_search.supervise import free_port, wait_healthy
from visual_search.v1 import search_pb2, search_pb2_grpc, shard_pb2

ARGS = ["--faiss-threads", "1", "--grace", "2", "--repair-interval", "0.5"]


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[ShardProcess]]:
    ports = [free_port() for _ in range(3)]
    procs = [
        ShardProcess(
            tmp_path / f"r{i}",
            port=ports[i],
            model_version=MODEL,
            extra_args=[*ARGS, "--peers", ",".join(f"127.0.0.1:{p}" for p in ports if p != ports[i])],
        )
        for i in range(3)
    ]
    for p in procs:
        p.start(wait=False)
    try:
        for p in procs:
            wait_healthy(p.address, 120, p.proc)
        yield procs
    finally:
        for p in procs:
            p.stop()


def digests(procs: list[ShardProcess]) -> set[int]:
    return {p.stub().ReplicaStatus(shard_pb2.ReplicaStatusRequest(), timeout=10).digest for p in procs}


def upsert(items: list[shard_pb2.Item]) -> shard_pb2.UpsertRequest:
    return shard_pb2.UpsertRequest(items=items, model_version=MODEL)


def test_quorum_acks_reports_and_the_missing_replica_catches_up(trio: list[ShardProcess]) -> None:
    vecs = unit_vectors(40, seed=5)
    items = [item_for(i, vecs[i]) for i in range(40)]
    spec = ShardMap((tuple(p.address for p in trio),))

    async def run() -> None:
        majority = ShardFanout(GatewayConfig(shard_map=spec), GatewayMetrics())
        every = ShardFanout(GatewayConfig(shard_map=spec, write_quorum="all"), GatewayMetrics())
        try:
            out = await majority.write(0, "Upsert", upsert(items[:20]), time.monotonic() + 30)
            assert (len(out.responses), out.replicas, out.under_replicated) == (3, 3, False)
            assert len(digests(trio)) == 1  # one gateway version per write: replicas agree at once
            trio[2].kill()
            out = await majority.write(0, "Upsert", upsert(items[20:]), time.monotonic() + 30)
            assert (len(out.responses), out.under_replicated) == (2, True)
            assert list(out.failed) == [trio[2].address]
            out = await majority.write(
                0, "Delete", shard_pb2.DeleteRequest(item_ids=["item0001"]), time.monotonic() + 30
            )
            assert out.under_replicated and out.responses[0].deleted == 1
            with pytest.raises(ShardUnavailable, match="below the write quorum"):
                await every.write(0, "Upsert", upsert(items[:1]), time.monotonic() + 30)
        finally:
            await majority.close()
            await every.close()

    asyncio.run(run())
    trio[2].start()  # same data dir: it missed 20 upserts, a delete and the refused write
    t0 = time.monotonic()
    while len(digests(trio)) != 1:
        assert time.monotonic() - t0 < 60, "the restarted replica did not catch up"
        time.sleep(0.2)
    got = trio[2].stub().Get(shard_pb2.GetRequest(item_ids=[it.item_id for it in items]), timeout=10)
    assert len(got.items) == 39 and list(got.not_found) == ["item0001"]


def test_gateway_delete_names_under_replicated_items(trio: list[ShardProcess], tmp_path: Path) -> None:
    spec = ",".join(p.address for p in trio)
    vecs = unit_vectors(10, seed=6)
    trio[0].stub().Upsert(upsert([item_for(i, vecs[i]) for i in range(10)]), timeout=30)
    with GatewayProcess(spec, model_version=MODEL, log_path=tmp_path / "gw.log") as gw:
        trio[1].kill()
        with grpc.insecure_channel(gw.address) as ch:
            stub = search_pb2_grpc.VisualSearchStub(ch)
            resp = stub.DeleteItems(
                search_pb2.DeleteItemsRequest(item_ids=["item0003", "item0004"]), timeout=30
            )
        assert list(resp.under_replicated) == ["item0003", "item0004"]


def test_gateway_never_reads_a_replica_that_is_catching_up(tmp_path: Path) -> None:
    """The issue's symptom: a new empty replica answered searches with nothing and no `partial`.
    Now it refuses reads until caught up: the gateway reads its peer, or reports the shard missing."""
    never_up = f"127.0.0.1:{free_port()}"  # b's only peer never answers: b cannot catch up
    a = ShardProcess(tmp_path / "a", shard_id=0, model_version=MODEL, extra_args=ARGS)
    b = ShardProcess(tmp_path / "b", shard_id=0, model_version=MODEL, extra_args=[*ARGS, "--peers", never_up])
    c = ShardProcess(tmp_path / "c", shard_id=1, model_version=MODEL, extra_args=ARGS)
    procs = [a, b, c]
    try:
        for p in procs:
            p.start(wait=p is not b)
        t0 = time.monotonic()
        while True:  # b is up (answers ReplicaStatus) but never healthy
            try:
                assert not b.stub().ReplicaStatus(shard_pb2.ReplicaStatusRequest(), timeout=5).caught_up
                break
            except grpc.RpcError:
                assert time.monotonic() - t0 < 60, "b did not start"
                time.sleep(0.1)
        vecs = unit_vectors(60, seed=7)
        items = [item_for(i, vecs[i]) for i in range(60)]
        on0 = [it for it in items if ids.shard_for(it.item_id, 2) == 0]
        a.stub().Upsert(upsert(on0), timeout=30)
        c.stub().Upsert(upsert([it for it in items if ids.shard_for(it.item_id, 2) == 1]), timeout=30)
        queries = [vecs[int(it.item_id[4:])] for it in on0[:8]]
        spec = f"{a.address},{b.address};{c.address}"
        with (
            GatewayProcess(spec, model_version=MODEL, log_path=tmp_path / "gw.log") as gw,
            vc.Client(gw.address, timeout=10, retries=0) as cl,
        ):
            for it, q in zip(on0, queries, strict=False):  # round-robin starts on b for half of them
                res = cl.search(vector=q, model_version=MODEL, k=3)
                assert res.hits[0].item_id == it.item_id and not res.partial
        spec = f"{b.address};{c.address}"  # shard 0's only replica is catching up
        with (
            GatewayProcess(spec, model_version=MODEL, log_path=tmp_path / "gw.log") as gw,
            vc.Client(gw.address, timeout=10, retries=0) as cl,
        ):
            res = cl.search(vector=queries[0], model_version=MODEL, k=3)
        assert res.partial and res.missing_shards == [0]
        assert res.hits and all(h.shard_id == 1 for h in res.hits)
    finally:
        for p in procs:
            p.stop()
