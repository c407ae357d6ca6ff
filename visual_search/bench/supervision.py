"""`vsearch bench supervision`: what a SIGKILL of tritonserver leaves behind, with and without the
launcher's supervisor, in one run (issue 12 item 7).

Setup: `vsearch up`'s Stack (real Triton fp32, one shard, the gateway), one photo indexed. Phase
`supervised` (the default launcher): `--kills` times, SIGKILL tritonserver and measure, while
vector and item-id queries run back to back: seconds until its python stub processes and its
shared-memory regions are gone, until a new tritonserver runs, until the gateway's photo health is
SERVING again and a photo query succeeds; outcomes of the cheap queries meanwhile. Phase
`unsupervised_baseline` (the launcher before: no supervisor): one SIGKILL, then how many stubs and
regions (bytes) are still there after `--observe` seconds (then removed by hand).
-> benchmarks/supervision.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from visual_search.bench.report import write_report

REPO_ROOT = Path(__file__).resolve().parents[2]
BUS = REPO_ROOT / "tests" / "data" / "bus.jpg"
GATEWAY_ARGS = ["--triton-health-interval", "0.3", "--shard-budget-ms", "5000"]


def _alive(pids: list[int]) -> list[int]:
    out = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(p)
    return out


def _photo_health(address: str) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from visual_search import contract as C

    with grpc.insecure_channel(address) as ch:
        req = health_pb2.HealthCheckRequest(service=C.HEALTH_PHOTO_QUERIES)
        try:
            return int(health_pb2_grpc.HealthStub(ch).Check(req, timeout=2).status)
        except grpc.RpcError:
            return -1


def _one_kill(stack: Any, c: Any, vec: np.ndarray, timeout: float) -> dict[str, Any]:
    from grpc_health.v1 import health_pb2

    from visual_search.client import VisualSearchError

    tr = stack.triton
    old = tr.proc.pid
    stubs = [p for p in tr.group_pids() if p != old]
    regions = tr.shm_regions()
    shm_bytes = sum(p.stat().st_size for p in regions if p.exists())
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    marks: dict[str, float] = {}
    saw_not_serving = False
    lat: list[float] = []
    failures: dict[str, int] = {}
    while time.monotonic() - t0 < timeout:
        for q in ({"vector": vec, "model_version": stack.model_version}, {"item_id": "bus"}):
            t = time.perf_counter()
            try:
                c.search(k=5, **q)
            except VisualSearchError as e:
                name = e.code.name if e.code is not None else type(e).__name__
                failures[name] = failures.get(name, 0) + 1
            lat.append(time.perf_counter() - t)
        now = time.monotonic() - t0
        if "cleaned_s" not in marks and not _alive(stubs) and not any(p.exists() for p in regions):
            marks["cleaned_s"] = now
        new_proc = tr.proc is not None and tr.proc.pid != old and tr.proc.poll() is None
        if "restarted_s" not in marks and new_proc:
            marks["restarted_s"] = now
        h = _photo_health(stack.gateway.address)
        saw_not_serving |= h == health_pb2.HealthCheckResponse.NOT_SERVING
        serving = h == health_pb2.HealthCheckResponse.SERVING
        if "restarted_s" in marks and "photo_serving_s" not in marks and serving:
            marks["photo_serving_s"] = now
        if "photo_serving_s" in marks and "cleaned_s" in marks:
            try:
                c.search(image=BUS.read_bytes(), k=3)
                marks["photo_query_ok_s"] = time.monotonic() - t0
                break
            except VisualSearchError:
                pass
    a = np.asarray(lat) * 1e3
    return {
        "stubs_before": len(stubs),
        "shm_regions_before": len(regions),
        "shm_bytes_before": shm_bytes,
        **{k: round(v, 2) for k, v in marks.items()},
        "photo_health_not_serving_seen": saw_not_serving,
        "cheap_queries": len(lat),
        "cheap_query_failures": failures,
        "cheap_p50_ms": round(float(np.percentile(a, 50)), 1) if len(a) else None,
        "cheap_p99_ms": round(float(np.percentile(a, 99)), 1) if len(a) else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visual_search import contract as C
    from visual_search.bench.report import hardware
    from visual_search.client import Client, IndexItem
    from visual_search.launcher import Stack, StackOptions

    load_start = round(os.getloadavg()[0], 2)
    vec = np.random.default_rng(0).standard_normal(C.EMBEDDING_DIM).astype(np.float32)
    vec /= np.linalg.norm(vec)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-supervision-") as tmp:
        opts = StackOptions(Path(tmp) / "sup", shards=1, precision="fp32", gateway_args=GATEWAY_ARGS)
        with Stack(opts) as stack, Client(stack.gateway.address, timeout=30, retries=0) as c:
            if not all(r.ok for r in c.index([IndexItem("bus", BUS.read_bytes())])):
                raise RuntimeError("indexing the sample photo failed")
            kills = []
            for _ in range(args.kills):
                kills.append(_one_kill(stack, c, vec, args.timeout))
                time.sleep(2.0)
            results["supervised"] = {"kills": kills, "supervisor_events": stack.supervisor.events}

        opts = StackOptions(
            Path(tmp) / "unsup", shards=1, precision="fp32", gateway_args=GATEWAY_ARGS, supervise=False
        )
        with Stack(opts) as stack:
            tr = stack.triton
            old = tr.proc.pid
            stubs = [p for p in tr.group_pids() if p != old]
            regions = tr.shm_regions()
            os.kill(old, signal.SIGKILL)
            time.sleep(args.observe)
            left = [p for p in regions if p.exists()]
            results["unsupervised_baseline"] = {
                "stubs_before": len(stubs),
                "shm_regions_before": len(regions),
                "observed_after_s": args.observe,
                "stubs_still_alive": len(_alive(stubs)),
                "shm_regions_left": len(left),
                "shm_bytes_left": sum(p.stat().st_size for p in left),
                "triton_restarted": tr.proc.poll() is None,
                "photo_health_after": _photo_health(stack.gateway.address),
            }
            tr.kill_leftovers()  # by hand, as nothing else would
    sup = results["supervised"]["kills"]
    return {
        "benchmark": "supervision",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arguments": {k: str(v) for k, v in vars(args).items() if k != "func"},
        "setup": {
            "stack": "vsearch up's Stack: Triton (fp32), 1 shard, gateway " + " ".join(GATEWAY_ARGS),
            "cheap_queries": "vector + item-id Search back to back during the outage, retries 0",
            "health": "photo_serving_s: grpc health 'visual_search.v1.VisualSearch/photo' SERVING again",
            "photo_health_codes": "1 SERVING, 2 NOT_SERVING",
        },
        "hardware": hardware(),
        "load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "results": results,
        "summary": {
            "cleanup_s_after_sigkill": [k.get("cleaned_s") for k in sup],
            "photo_serving_again_s": [k.get("photo_serving_s") for k in sup],
            "cheap_query_failures": [k["cheap_query_failures"] for k in sup],
            "baseline_stubs_alive_after_observe": results["unsupervised_baseline"]["stubs_still_alive"],
            "baseline_shm_bytes_left_after_observe": results["unsupervised_baseline"]["shm_bytes_left"],
        },
    }


def _main(args: argparse.Namespace) -> int:
    return write_report(run(args), args.out, "summary")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "supervision", help="SIGKILL tritonserver: cleanup / restart / health times vs no supervisor"
    )
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs under the supervisor")
    p.add_argument("--timeout", type=float, default=240.0, help="longest wait per kill, seconds")
    p.add_argument("--observe", type=float, default=30.0, help="baseline: seconds to watch the leftovers")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "supervision.json")
    p.set_defaults(func=_main)
