"""Triton crash under the launcher (issue 12 item 7), with real processes: SIGKILL tritonserver ->
its python stub processes and shared-memory regions are gone within a bound, Triton is restarted,
the gateway's photo-queries health goes NOT_SERVING and back to SERVING, and vector / item-id
queries keep working throughout. Shared-memory regions are owner-only while Triton runs."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visual_search import client as vc
from visual_search import contract as C
from visual_search.launcher import Stack, StackOptions, stack_missing

ROOT = Path(__file__).resolve().parents[2]
BUS = (ROOT / "tests" / "data" / "bus.jpg").read_bytes()
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CLEANUP_BOUND_S = 10.0

pytestmark = pytest.mark.skipif(stack_missing() is not None, reason=str(stack_missing()))


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as ch:
        req = health_pb2.HealthCheckRequest(service=service)
        return int(health_pb2_grpc.HealthStub(ch).Check(req, timeout=5).status)


def test_sigkill_triton_cleans_up_restarts_and_health_follows(tmp_path: Path) -> None:
    # a fixed shard budget: Triton reloading its models starves this 2-core box, and the adaptive
    # budget (100 ms floor) would turn slow shard answers into UNAVAILABLE - not what is tested here
    opts = StackOptions(
        tmp_path / "stack", shards=1, precision="fp32",
        gateway_args=["--triton-health-interval", "0.3", "--shard-budget-ms", "5000"],
        supervise_kw={"base_delay_s": 0.5, "max_attempts": 3},
    )
    with Stack(opts) as stack, vc.Client(stack.gateway.address, timeout=60, retries=0) as c:
        gw = stack.gateway.address
        tr = stack.triton
        assert [r.ok for r in c.index([vc.IndexItem("bus", BUS, category="street")])] == [True]
        assert _health(gw, C.HEALTH_PHOTO_QUERIES) == SERVING
        assert _health(gw, C.HEALTH_VECTOR_QUERIES) == SERVING

        regions = tr.shm_regions()
        assert regions, "the python backend made no shared-memory regions with the stack's prefix"
        for p in regions:  # query photos pass through these: owner only
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p, oct(p.stat().st_mode))
        old_pid = tr.proc.pid
        group = [p for p in tr.group_pids() if p != old_pid]
        assert group, "no python stub processes in Triton's process group"
        vec = np.random.default_rng(0).standard_normal(C.EMBEDDING_DIM).astype(np.float32)
        vec /= np.linalg.norm(vec)

        def cheap_queries_work() -> None:
            assert c.search(vector=vec, model_version=stack.model_version, k=3).hits
            c.search(item_id="bus", k=3)

        t_kill = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        saw_not_serving = False
        cleaned_at = None
        restarted_at = None
        deadline = t_kill + 240
        while time.monotonic() < deadline:
            cheap_queries_work()  # vector + item-id queries throughout
            if _health(gw, C.HEALTH_PHOTO_QUERIES) == NOT_SERVING:
                saw_not_serving = True
            assert _health(gw, "") == SERVING
            alive = [p for p in group if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
            left = [p for p in regions if p.exists()]
            if cleaned_at is None and not alive and not left:
                cleaned_at = time.monotonic()
            new = tr.proc is not None and tr.proc.pid != old_pid and tr.proc.poll() is None
            if new and restarted_at is None:
                restarted_at = time.monotonic()
            if cleaned_at and restarted_at and _health(gw, C.HEALTH_PHOTO_QUERIES) == SERVING:
                break
            time.sleep(0.1)
        assert cleaned_at is not None, f"stubs {alive} / regions {left} still there"
        cleanup_s = cleaned_at - t_kill
        print(f"\ncleanup after SIGKILL: {cleanup_s:.2f}s; events: {stack.supervisor.events}")
        assert cleanup_s < CLEANUP_BOUND_S
        assert saw_not_serving, "photo health never said NOT_SERVING while Triton was down"
        assert restarted_at is not None and _health(gw, C.HEALTH_PHOTO_QUERIES) == SERVING
        print(f"photo queries SERVING again {time.monotonic() - t_kill:.1f}s after the kill")
        events = [e["event"] for e in stack.supervisor.events if e["child"] == "triton"]
        assert events[:3] == ["exited", "restarting", "restarted"], stack.supervisor.events
        # photo queries work again; the new server's regions are owner-only too
        assert c.search(image=BUS, k=3).hits
        for p in tr.shm_regions():
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0
        new_regions = tr.shm_regions()

        # a SIGKILLed shard is restarted on its port and data; queries work again
        sp = stack.shards[0]
        old = sp.proc.pid
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 180
        events = stack.supervisor.events
        while not any(e["child"] == "shard0-0" and e["event"] == "restarted" for e in events):
            assert time.monotonic() < deadline, events
            time.sleep(0.2)
        assert sp.proc.pid != old and sp.proc.poll() is None
        # the gateway's channel reconnects on its own gRPC backoff: queries work again within a bound
        deadline = time.monotonic() + 60
        while True:
            try:
                cheap_queries_work()
                break
            except vc.Unavailable:
                assert time.monotonic() < deadline, "queries still failing 60 s after the shard restarted"
                time.sleep(0.5)
    # after a normal stop nothing of Triton's is left
    assert not [p for p in new_regions if p.exists()]


def test_restarts_are_bounded_with_exponential_backoff(tmp_path: Path) -> None:
    """A child that keeps dying: restarted with doubling delays, then given up (logged)."""
    import subprocess
    import sys

    from visual_search.supervise import Child, Supervisor

    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:  # a real process that exits at once, in its own process group
        procs.append(subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True))

    start()
    sup = Supervisor(
        [Child("flaky", lambda: procs[-1], start)], poll_s=0.05, base_delay_s=0.1, max_attempts=3
    ).start()
    try:
        deadline = time.monotonic() + 30
        while not any(e["event"] == "gave_up" for e in sup.events):
            assert time.monotonic() < deadline, sup.events
            time.sleep(0.05)
    finally:
        sup.stop()
    delays = [e["delay_s"] for e in sup.events if e["event"] == "restarting"]
    assert delays == [0.1, 0.2, 0.4]
    assert len(procs) == 4 and all(p.wait(5) == 3 for p in procs)
    assert [e["returncode"] for e in sup.events if e["event"] == "exited"] == [3, 3, 3, 3]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"
