"""`vsearch bench e2e`: end-to-end query latency through the public API on the full local stack.

Triton + 2 shards + gateway on loopback (launcher.Stack); the shards are filled with N synthetic
unit vectors (default 100k items, stamped with the served model version) straight through the
shard API, because embedding 100k real photos on 2 CPU cores would take hours; queries are real
photos (query split of the grocery set + bus.jpg) through the full path: decode, Triton detect
+ embed, fan-out, merge, re-rank. Also a vector-query run (no Triton) to isolate fan-out and
re-rank. Reports p50/p95/p99, queries/s and the per-stage breakdown the gateway returns.

Baseline in the same run (`--baseline`, default on): the photo-query path as it was before
issue 13 - a second tritonserver whose query detector is the 640 one, and a second gateway with
`--two-call-default-box` (detect, then embed the chosen box) - on the same shards; both are
driven in turn at each concurrency (one at a time, so they do not share the CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from visual_search import contract
from visual_search.bench.report import hardware, write_report
from visual_search.gateway.config import QUERY_STRATEGIES, GatewayConfig
from visual_search.triton import names

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 2) if xs else float("nan")


def _seed_shards(stack: Any, n_items: int, batch: int = 2000) -> float:
    from visual_search import ids
    from visual_search.v1 import shard_pb2

    t0 = time.monotonic()
    rng = np.random.default_rng(0)
    n_shards = stack.opts.shards
    stubs = [stack.shards[s * stack.opts.replicas].stub() for s in range(n_shards)]
    pending: list[list[shard_pb2.Item]] = [[] for _ in range(n_shards)]
    cats = ("shoes", "lamps", "bags", "milk", "yoghurt")

    def flush(s: int) -> None:
        if pending[s]:
            stubs[s].Upsert(
                shard_pb2.UpsertRequest(items=pending[s], model_version=stack.model_version), timeout=300
            )
            pending[s] = []

    for start in range(0, n_items, batch):
        m = min(batch, n_items - start)
        vecs = rng.standard_normal((m, contract.EMBEDDING_DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        for j in range(m):
            iid = f"synthetic-{start + j:07d}"
            md = shard_pb2.ItemMetadata(category=cats[j % 5], price=float(j % 100), available=j % 2 == 0)
            e = shard_pb2.Entry(entry_id=ids.entry_id(iid, 0), vector_f16=vecs[j].astype("<f2").tobytes())
            s = ids.shard_for(iid, n_shards)
            pending[s].append(shard_pb2.Item(item_id=iid, metadata=md, entries=[e]))
            if len(pending[s]) >= batch:
                flush(s)
    for s in range(n_shards):
        flush(s)
    return time.monotonic() - t0


async def _drive(address: str, make_req: Any, concurrency: int, seconds: float) -> dict[str, Any]:
    from visual_search.client import AsyncClient

    lat: list[float] = []
    stages: dict[str, list[float]] = {"triton": [], "fanout": [], "rerank": []}
    errors = 0
    async with AsyncClient(address, timeout=60) as c:
        for i in range(2):  # warm-up
            await c.search_raw(make_req(i))
        stop = time.monotonic() + seconds
        counter = 0

        async def worker() -> None:
            nonlocal counter, errors
            while time.monotonic() < stop:
                counter += 1
                t0 = time.monotonic()
                try:
                    r = await c.search_raw(make_req(counter))
                except Exception:
                    errors += 1
                    continue
                lat.append((time.monotonic() - t0) * 1e3)
                stages["triton"].append(r.timings.triton_ms)
                stages["fanout"].append(r.timings.fanout_ms)
                stages["rerank"].append(r.timings.rerank_ms)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - t0
    return {
        "concurrency": concurrency,
        "queries": len(lat),
        "errors": errors,
        "queries_per_s": round(len(lat) / wall, 2),
        "latency_ms": {
            "p50": _pct(lat, 50),
            "p95": _pct(lat, 95),
            "p99": _pct(lat, 99),
            "mean": round(float(np.mean(lat)), 2),
        },
        "stage_ms_p50": {k: _pct(v, 50) for k, v in stages.items()},
        "stage_ms_p95": {k: _pct(v, 95) for k, v in stages.items()},
    }


@contextlib.contextmanager
def baseline_stack(stack: Any, run_dir: Path) -> Any:
    """(triton, gateway) as before issue 13 on `stack`'s shards: Triton serving photo queries with
    the 640 detector and a gateway making two Triton calls per default-box query."""
    import dataclasses

    from visual_search.gateway.process import GatewayProcess
    from visual_search.triton.server import TritonServer

    opts = stack.triton_options()
    old = dataclasses.replace(
        opts,
        query_detector_size=contract.DETECTOR_INPUT_SIZE,
        query_detector_path=opts.weights(names.DETECTOR),
    )
    with (
        TritonServer(options=old, run_dir=run_dir / "triton") as triton,
        GatewayProcess(
            stack.shard_spec(),
            triton_url=triton.grpc_url,
            log_path=run_dir / "gateway.log",
            extra_args=[*stack.opts.gateway_args, "--two-call-default-box"],
        ) as gw,
    ):
        yield triton, gw


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visual_search.client_cli import iter_source
    from visual_search.launcher import DEFAULT_MANIFEST, Stack, StackOptions
    from visual_search.v1 import search_pb2

    photos = [p.read_bytes() for _, p, _ in list(iter_source(DEFAULT_MANIFEST, "query"))[: args.photos]]
    photos.append((REPO_ROOT / "tests" / "data" / "bus.jpg").read_bytes())
    rng = np.random.default_rng(1)
    qvecs = rng.standard_normal((256, contract.EMBEDDING_DIM)).astype(np.float32)
    qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
    results: dict[str, Any] = {"photo_queries": [], "vector_queries": []}
    if args.baseline:
        results["photo_queries_baseline_two_calls"] = []
    other_key = f"photo_queries_strategy_{args.compare_strategy}"
    if args.compare_strategy:
        results[other_key] = []
    with (
        tempfile.TemporaryDirectory(prefix="vsearch-bench-") as tmp,
        Stack(StackOptions(Path(tmp), shards=args.shards, precision=args.precision,
                           gateway_args=["--query-strategy", args.query_strategy])) as stack,
        contextlib.ExitStack() as extra,
    ):
        baseline = other = None
        if args.baseline:
            _, baseline = extra.enter_context(baseline_stack(stack, Path(tmp) / "baseline"))
        if args.compare_strategy:  # same Triton and shards, the other strategy's one-call path
            from visual_search.gateway.process import GatewayProcess

            other = extra.enter_context(GatewayProcess(
                stack.shard_spec(), triton_url=stack.triton.grpc_url,
                log_path=Path(tmp) / "gateway-other.log",
                extra_args=["--query-strategy", args.compare_strategy]))
        seed_s = _seed_shards(stack, args.items)
        print(f"seeded {args.items} items in {seed_s:.1f}s", flush=True)
        time.sleep(args.settle)
        index_types = stack.rebuild_shards()  # measure the trained IVF-PQ index, not the flat start

        def photo_req(i: int) -> search_pb2.QueryRequest:
            q = search_pb2.QueryRequest(k=args.k)
            q.image.image = photos[i % len(photos)]
            return q

        def vector_req(i: int) -> search_pb2.QueryRequest:
            q = search_pb2.QueryRequest(k=args.k)
            q.vector.vector_f16 = qvecs[i % len(qvecs)].astype("<f2").tobytes()
            q.vector.model_version = stack.model_version
            return q

        for c in args.concurrency:
            r = asyncio.run(_drive(stack.gateway.address, vector_req, c, args.seconds / 2))
            results["vector_queries"].append(r)
            print("vector", json.dumps(r), flush=True)
        for c in args.concurrency:
            if baseline is not None:
                r = asyncio.run(_drive(baseline.address, photo_req, c, args.seconds))
                results["photo_queries_baseline_two_calls"].append(r)
                print("photo baseline (two calls)", json.dumps(r), flush=True)
            if other is not None:
                r = asyncio.run(_drive(other.address, photo_req, c, args.seconds))
                results[other_key].append(r)
                print(f"photo strategy {args.compare_strategy}", json.dumps(r), flush=True)
            r = asyncio.run(_drive(stack.gateway.address, photo_req, c, args.seconds))
            results["photo_queries"].append(r)
            print("photo", json.dumps(r), flush=True)
        model_version = stack.model_version
    return {
        "benchmark": "e2e",
        "what": f"public Search, query strategy {args.query_strategy}: gateway -> Triton ("
        f"{_ENSEMBLE[args.query_strategy]}: one call, 416 query detector) -> shards -> merge/re-rank; "
        "baseline: two Triton calls (detect at 640, then embed the default box), as before issue 13",
        "arguments": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"
        },
        "hardware": hardware(),
        "model_version": model_version,
        "index": {
            "items": args.items,
            "shards": args.shards,
            "seed_seconds": round(seed_s, 1),
            "index_types": index_types,
        },
        **results,
    }




# the one Triton call of a default photo query, per gateway query strategy
_ENSEMBLE = {"max": names.DETECT_AND_EMBED_DEFAULT_WHOLE, "default-box": names.DETECT_AND_EMBED_DEFAULT}


def _main(args: argparse.Namespace) -> int:
    return write_report(run(args), args.out)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "e2e", help="end-to-end query latency/throughput on the local stack (100k items)"
    )
    p.add_argument("--items", type=int, default=100_000, help="synthetic items in the index")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=20.0, help="measured time per photo point (vector: half)")
    p.add_argument("--photos", type=int, default=24, help="distinct real query photos cycled through")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "int8"))
    p.add_argument("--query-strategy", default=GatewayConfig.query_strategy, choices=QUERY_STRATEGIES,
                   help="the measured gateway's strategy for default photo queries (the baseline is "
                   "default-box, two calls)")
    p.add_argument("--compare-strategy", choices=QUERY_STRATEGIES,
                   help="also drive a gateway with this query strategy on the same Triton and shards "
                   "(one call), in turn at each concurrency")
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also drive a gateway with --two-call-default-box on the same Triton and shards",
    )
    p.add_argument(
        "--settle", type=float, default=5.0, help="seconds to let shards train/settle after seeding"
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "e2e.json")
    p.set_defaults(func=_main)
