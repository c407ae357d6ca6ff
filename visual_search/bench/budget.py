"""`vsearch bench budget`: query latency with one stalled shard out of two vs both healthy, one run.

Two real shard processes with synthetic items, a real gateway with its default (adaptive)
per-shard budget, the typed client at concurrency 1 with a long caller deadline. Phases, in order:
both healthy; shard 1 stopped with SIGSTOP (alive, connected, silent - the worst case: no error
comes back); for reference, a few queries with the budget set to the caller's deadline (what every
query did before the budget existed: wait for the deadline); shard 1 resumed (SIGCONT).
-> benchmarks/shard_budget.json.
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

from visual_search.bench.report import latency_stats, write_report

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "bench-budget-v1"
SHARD_ARGS = ["--train-threshold", "100000000", "--faiss-threads", "1"]


def _stats(lat: list[float], partial: int) -> dict[str, Any]:
    return {**latency_stats(lat, (50, 95, 99)), "partial": partial}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visual_search import ids
    from visual_search.bench.report import hardware
    from visual_search.bench.update import _chunks, _items
    from visual_search.client import Client, DeadlineExceeded
    from visual_search.gateway.process import GatewayProcess
    from visual_search.shard.process import ShardProcess
    from visual_search.v1 import search_pb2, shard_pb2

    load_start = round(os.getloadavg()[0], 2)
    items = _items(args.items, 1, seed=2)
    queries = [np.frombuffer(it.entries[0].vector_f16, "<f2").astype(np.float32) for it in items[:500]]
    phases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        shards = [
            ShardProcess(Path(tmp) / f"s{s}", shard_id=s, model_version=MODEL, extra_args=SHARD_ARGS)
            for s in range(2)
        ]
        try:
            for sp in shards:
                sp.start()
                mine = [it for it in items if ids.shard_for(it.item_id, 2) == sp.shard_id]
                for b in _chunks(mine, 2000):
                    sp.stub().Upsert(shard_pb2.UpsertRequest(items=b, model_version=MODEL), timeout=120)
            stalled = shards[1].proc
            if stalled is None:
                raise RuntimeError("shard 1 did not start")
            spec = ";".join(sp.address for sp in shards)
            with (
                GatewayProcess(spec, model_version=MODEL, log_path=Path(tmp) / "gw.log") as gw,
                Client(gw.address, timeout=args.deadline, retries=0) as c,
            ):

                def phase(n: int, options: search_pb2.SearchOptions | None = None) -> dict[str, Any]:
                    lat, partial, expired = [], 0, 0
                    for i in range(n):
                        t0 = time.perf_counter()
                        q = queries[i % len(queries)]
                        try:
                            res = c.search(vector=q, model_version=MODEL, k=10, options=options)
                            partial += res.partial
                        except DeadlineExceeded:  # the caller gave up before any answer came
                            expired += 1
                        lat.append(time.perf_counter() - t0)
                    return {**_stats(lat, partial), "deadline_exceeded": expired}

                phase(args.warmup)
                phases["both_healthy"] = phase(args.queries)
                os.kill(stalled.pid, signal.SIGSTOP)
                try:
                    phases["one_of_two_stalled"] = phase(args.queries)
                    no_budget = search_pb2.SearchOptions(shard_budget_ms=int(args.deadline * 1000))
                    phases["one_of_two_stalled_budget_is_deadline"] = phase(args.reference, no_budget)
                finally:
                    os.kill(stalled.pid, signal.SIGCONT)
                time.sleep(0.5)
                phases["resumed"] = phase(args.queries)
        finally:
            for sp in shards:
                sp.stop()
    healthy, stalled_p = phases["both_healthy"], phases["one_of_two_stalled"]
    return {
        "benchmark": "shard_budget",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arguments": {k: str(v) for k, v in vars(args).items() if k != "func"},
        "setup": {
            "shards": 2,
            "items": args.items,
            "gateway_budget": "default: 1.5 x recent p99 within [100 ms, 1000 ms]",
            "caller_deadline_s": args.deadline,
            "stall": "SIGSTOP of shard 1's process (connected, never answers)",
        },
        "hardware": hardware(),
        "load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "results": phases,
        "summary": {
            "p99_ms_both_healthy": healthy["p99_ms"],
            "p99_ms_one_stalled": stalled_p["p99_ms"],
            "p99_ms_one_stalled_budget_is_deadline": phases["one_of_two_stalled_budget_is_deadline"][
                "p99_ms"
            ],
        },
    }


def _main(args: argparse.Namespace) -> int:
    return write_report(run(args), args.out, "results")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("budget", help="query p99 with one stalled shard of two vs both healthy")
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=300, help="queries per phase")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--reference", type=int, default=3, help="stalled queries with budget = deadline")
    p.add_argument("--deadline", type=float, default=5.0, help="caller's deadline, seconds")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "shard_budget.json")
    p.set_defaults(func=_main)
