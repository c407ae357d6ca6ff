"""Gateway generation switch on real processes (no Triton): two shard sets stamped with two model
versions, item-id queries running continuously while the admin API switches and rolls back.

Version B's vectors are an orthogonal rotation of A's, like a re-projected encoder: rankings
agree, vectors do not, so a query that mixed versions would be refused or return nonsense.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from visual_search import contract, ids
from visual_search.client import Client, VisualSearchError
from visual_search.gateway.admin import AdminClient
from visual_search.gateway.process import GatewayProcess
from visual_search.shard.process import ShardProcess
from visual_search.supervise import free_port, wait_healthy
from visual_search.v1 import admin_pb2, admin_pb2_grpc, shard_pb2

V_A, V_B = "test-enc-a", "test-enc-b"
N_ITEMS = 200
TOKEN = "admin-secret"


def _vectors(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((N_ITEMS, contract.EMBEDDING_DIM)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    # a signed permutation: orthogonal AND exact in float16 (a dense rotation's float16 rounding
    # reorders near-tied neighbours of random 1024-d vectors, which is not what this test is about)
    perm = rng.permutation(contract.EMBEDDING_DIM)
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), contract.EMBEDDING_DIM)
    return a, (a[:, perm] * signs).astype(np.float32)


def _seed(procs: list[ShardProcess], vecs: np.ndarray, version: str) -> None:
    by_shard: dict[int, list[shard_pb2.Item]] = {0: [], 1: []}
    for i, v in enumerate(vecs):
        iid = f"item{i:04d}"
        e = shard_pb2.Entry(entry_id=ids.entry_id(iid, 0), vector_f16=v.astype("<f2").tobytes())
        by_shard[ids.shard_for(iid, 2)].append(shard_pb2.Item(item_id=iid, entries=[e]))
    for p in procs:
        p.stub().Upsert(shard_pb2.UpsertRequest(items=by_shard[p.shard_id], model_version=version))


@dataclass
class Setup:
    a: list[ShardProcess]
    b: list[ShardProcess]
    gw: GatewayProcess
    admin_port: int
    state: Path

    def spec(self, procs: list[ShardProcess]) -> str:
        return ";".join(p.address for p in procs)

    def admin(self, token: str | None = TOKEN) -> AdminClient:
        return AdminClient(f"127.0.0.1:{self.admin_port}", token=token, timeout=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("gens")
    a = [ShardProcess(root / f"a{s}", shard_id=s, model_version=V_A) for s in (0, 1)]
    b = [ShardProcess(root / f"b{s}", shard_id=s, model_version=V_B) for s in (0, 1)]
    procs = [*a, *b]
    gw = None
    try:
        for p in procs:
            p.start(wait=False)
        for p in procs:
            wait_healthy(p.address, 120, p.proc)
        va, vb = _vectors(7)
        _seed(a, va, V_A)
        _seed(b, vb, V_B)
        port, state = free_port(), root / "generation.json"
        gw = GatewayProcess(
            ";".join(p.address for p in a), log_path=root / "gw.log",
            extra_args=["--admin-port", str(port), "--generation-file", str(state)],
            env={"VSEARCH_ADMIN_TOKEN": TOKEN},
        ).start()
        yield Setup(a, b, gw, port, state)
    finally:
        if gw is not None:
            gw.stop()
        for p in procs:
            p.stop()


def _top(c: Client, item: str) -> tuple[str, list[str]]:
    r = c.search(item_id=item, k=5)
    return r.model_version, [h.item_id for h in r.hits]


def test_switch_under_load_never_mixes_versions_and_rolls_back(setup: Setup) -> None:
    items = [f"item{i:04d}" for i in range(0, N_ITEMS, 7)]
    with Client(setup.gw.address, timeout=10) as c:
        before = {it: _top(c, it) for it in items}
    assert {v for v, _ in before.values()} == {V_A}

    seen: list[tuple[int, float, float, str]] = []  # worker, sent, answered, version
    errors: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with Client(setup.gw.address, timeout=10, retries=0) as c:
            i = worker
            while not stop.is_set():
                it = items[i % len(items)]
                try:
                    t0 = time.monotonic()
                    v, top = _top(c, it)
                    seen.append((worker, t0, time.monotonic(), v))
                    if top != before[it][1]:  # a rotation keeps rankings: any change = mixed vectors
                        errors.append(f"{it} on {v}: {top} != {before[it][1]}")
                except VisualSearchError as e:
                    errors.append(f"{it}: {e.code.name} {e}")
                i += 3

    threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        with setup.admin() as adm:
            t_switch = time.monotonic()
            r = adm.switch(setup.spec(setup.b), expect_model_version=V_B)
            t_done = time.monotonic()
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert r.current.model_version == V_B and r.previous.model_version == V_A
    assert r.current.number == r.previous.number + 1
    for w in range(3):  # each worker's sequential queries: A..A then B..B, one clean cut
        versions = [v for wk, _, _, v in seen if wk == w]
        first_b = versions.index(V_B)
        assert set(versions[:first_b]) == {V_A} and set(versions[first_b:]) == {V_B}
    assert all(v == V_A for _, _, done, v in seen if done < t_switch)
    assert all(v == V_B for _, sent, _, v in seen if sent > t_done)
    assert len(seen) > 20
    assert r.swap_ms < 5 and r.prepare_ms > 0
    print(f"\nswitch: prepare {r.prepare_ms:.1f} ms, swap {r.swap_ms:.4f} ms, {len(seen)} queries, 0 failed")

    # the state file says B; rollback returns to A with the same answers
    assert V_B in setup.state.read_text()
    with setup.admin() as adm:
        rb = adm.rollback()
        assert rb.current.model_version == V_A and rb.previous.model_version == V_B
    with Client(setup.gw.address, timeout=10) as c:
        assert {it: _top(c, it) for it in items} == before


def test_refused_switches_leave_the_live_generation_alone(setup: Setup) -> None:
    with setup.admin() as adm:
        live = adm.generations().current
        with pytest.raises(grpc.RpcError) as e:  # version other than announced
            adm.switch(setup.spec(setup.b), expect_model_version="something-else")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as e:  # half old, half new
            adm.switch(f"{setup.a[0].address};{setup.b[1].address}")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        dead = f"127.0.0.1:{free_port()}"
        with pytest.raises(grpc.RpcError) as e:  # a replica down
            adm.switch(f"{setup.b[0].address},{dead};{setup.b[1].address}")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as e:  # other shard count = other placement
            adm.switch(setup.b[0].address)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert adm.generations().current == live


def test_admin_needs_its_token_and_is_not_on_the_public_port(setup: Setup) -> None:
    with setup.admin(token=None) as adm, pytest.raises(grpc.RpcError) as e:
        adm.generations()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with setup.admin(token="wrong") as adm, pytest.raises(grpc.RpcError) as e:
        adm.rollback()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(setup.gw.address) as ch, pytest.raises(grpc.RpcError) as e:
        admin_pb2_grpc.GatewayAdminStub(ch).GetGenerations(admin_pb2.GetGenerationsRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_restart_resumes_the_switched_generation(setup: Setup, tmp_path: Path) -> None:
    with setup.admin() as adm:
        if adm.generations().current.model_version != V_B:
            adm.switch(setup.spec(setup.b), expect_model_version=V_B)
    setup.gw.stop()
    setup.gw.start()  # same flags (live = A), but the state file says B is current
    with Client(setup.gw.address, timeout=10) as c:
        assert c.search(item_id="item0003", k=3).model_version == V_B
    with setup.admin() as adm:
        g = adm.generations()
        assert g.current.model_version == V_B and g.previous.model_version == V_A
        assert adm.rollback().current.model_version == V_A
