"""`vsearch bench gateway-loop`: cheap-query latency alone and under a large-photo load, one run.

Why: the gateway is one asyncio loop; photo decode + pHash used to run on it, so a cheap vector or
item-id query waited behind every large photo being decoded (issue 12 item 6). Now that work runs
in a bounded thread pool (gateway/cpu.py).

Setup: two real shard processes with synthetic items and a real Triton (unless --no-triton). Two
configurations: `decode_only` (gateway without Triton: photos are decoded + hashed, then refused
- the most decodes per second) and `with_triton` (photo Searches end to end). In each, two real
gateways on the same backends: the current one (decode in the pool) and the baseline started with
--cpu-inline (decode on the event loop, as before). For each gateway, in
order: `--queries` cheap queries alone (concurrency 1, alternating vector and item-id queries),
then cheap queries back to back for `--load-seconds` while `--loaders` threads send a large JPEG
(default 6000x6000) as photo Searches back to back (time-based, so several photos are decoded by
the gateway during the phase even when Triton takes seconds per photo). -> benchmarks/gateway_loop.json.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from visual_search.bench.report import latency_stats, write_report

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "bench-loop-v1"
SHARD_ARGS = ["--train-threshold", "100000000", "--faiss-threads", "1"]
# a fixed, generous per-shard budget: latency is measured, not cut short into partial answers
GATEWAY_ARGS = ["--shard-budget-ms", "5000"]


def large_jpeg(side: int, seed: int = 0) -> bytes:
    """A photo-like side x side JPEG (smooth gradients + mild noise: a few MB, like a camera's)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = np.stack([x * 255, y * 255, (1 - x) * (1 - y) * 255], axis=2)
    small = rng.integers(0, 40, (side // 8, side // 8, 3), dtype=np.uint8)
    noise = np.asarray(Image.fromarray(small).resize((side, side)), np.float32)
    img = np.clip(base * 0.8 + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _stats(lat: list[float]) -> dict[str, Any]:
    return latency_stats(lat, (50, 90, 99))


class _PhotoLoad:
    """`n` threads sending the large photo as Searches until stopped; counts outcomes."""

    def __init__(self, address: str, photo: bytes, n: int) -> None:
        self.address, self.photo, self.n = address, photo, n
        self.stop = threading.Event()
        self.lat: list[float] = []
        self.codes: dict[str, int] = {}
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]

    def _loop(self) -> None:
        from visual_search.client import Client, VisualSearchError

        with Client(self.address, timeout=120, retries=0) as c:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    c.search(image=self.photo, k=10)
                    code = "OK"
                except VisualSearchError as e:
                    code = e.code.name if e.code is not None else type(e).__name__
                self.lat.append(time.perf_counter() - t0)
                self.codes[code] = self.codes.get(code, 0) + 1

    def __enter__(self) -> _PhotoLoad:
        for t in self.threads:
            t.start()
        time.sleep(1.0)  # let the first photos reach the gateway
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(180)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"photo_searches": len(self.lat), "outcomes": dict(self.codes)}
        if self.lat:
            out["photo_p50_ms"] = round(float(np.percentile(np.asarray(self.lat) * 1e3, 50)), 1)
        return out


def _measure(
    spec: str, triton_url: str | None, log_path: Path, gateway_args: list[str], photo: bytes,
    vectors: list[np.ndarray], item_ids: list[str], args: argparse.Namespace,
) -> dict[str, Any]:
    """One gateway: cheap queries alone, then for --load-seconds under the large-photo load."""
    from visual_search.client import Client, VisualSearchError
    from visual_search.gateway.process import GatewayProcess

    with (
        GatewayProcess(
            spec, model_version=MODEL, triton_url=triton_url, log_path=log_path, extra_args=gateway_args
        ) as gw,
        Client(gw.address, timeout=60, retries=0) as c,
    ):

        def cheap(n: int, seconds: float = 0.0) -> dict[str, Any]:
            """n queries, or (seconds > 0) as many as fit in that time."""
            lat, errors, partial = [], 0, 0
            end = time.monotonic() + seconds
            for i in range(n if not seconds else 10**9):
                if seconds and time.monotonic() > end:
                    break
                t0 = time.perf_counter()
                try:
                    if i % 2:
                        r = c.search(item_id=item_ids[i % len(item_ids)], k=10)
                    else:
                        r = c.search(vector=vectors[i % len(vectors)], model_version=MODEL, k=10)
                    partial += r.partial
                except VisualSearchError:
                    errors += 1
                lat.append(time.perf_counter() - t0)
            return {**_stats(lat), "errors": errors, "partial": partial}

        cheap(args.warmup)
        alone = cheap(args.queries)
        with _PhotoLoad(gw.address, photo, args.loaders) as load:
            loaded = cheap(0, args.load_seconds)
        return {"cheap_alone": alone, "cheap_with_photo_load": loaded, **load.summary()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visual_search import ids
    from visual_search.bench.report import hardware
    from visual_search.bench.update import _chunks, _items
    from visual_search.shard.process import ShardProcess
    from visual_search.v1 import shard_pb2

    load_start = round(os.getloadavg()[0], 2)
    photo = large_jpeg(args.side)
    items = _items(args.items, 1, seed=3)
    vectors = [np.frombuffer(it.entries[0].vector_f16, "<f2").astype(np.float32) for it in items[:200]]
    item_ids = [it.item_id for it in items[:200]]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gwloop-") as tmp:
        shards = [
            ShardProcess(Path(tmp) / f"s{s}", shard_id=s, model_version=MODEL, extra_args=SHARD_ARGS)
            for s in range(2)
        ]
        triton: Any = None
        try:
            for sp in shards:
                sp.start()
                mine = [it for it in items if ids.shard_for(it.item_id, 2) == sp.shard_id]
                for b in _chunks(mine, 2000):
                    sp.stub().Upsert(shard_pb2.UpsertRequest(items=b, model_version=MODEL), timeout=120)
            triton_url = None
            if not args.no_triton:
                from visual_search.triton.repository import Options
                from visual_search.triton.server import TritonServer

                triton = TritonServer(options=Options(precision="fp32"), run_dir=Path(tmp) / "triton").start()
                triton_url = triton.grpc_url
            spec = ";".join(sp.address for sp in shards)
            configs = [("decode_only", None)] + ([("with_triton", triton_url)] if triton_url else [])
            for config, url in configs:
                results[config] = {}
                for name, extra in (("pool", []), ("inline_baseline", ["--cpu-inline"])):
                    results[config][name] = _measure(
                        spec, url, Path(tmp) / f"gw-{config}-{name}.log", [*GATEWAY_ARGS, *extra],
                        photo, vectors, item_ids, args,
                    )
        finally:
            for sp in shards:
                sp.stop()
            if triton is not None:
                triton.stop()
    summary = {
        f"{config}_{mode}_cheap_p99_ms_{phase}": r[mode][key]["p99_ms"]
        for config, r in results.items()
        for mode in ("pool", "inline_baseline")
        for phase, key in (("alone", "cheap_alone"), ("with_photo_load", "cheap_with_photo_load"))
    }
    return {
        "benchmark": "gateway_loop",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arguments": {k: str(v) for k, v in vars(args).items() if k != "func"},
        "setup": {
            "shards": 2,
            "items": args.items,
            "configurations": {
                "decode_only": "gateway without Triton: each photo Search is decoded + hashed by the "
                "gateway, then refused (UNAVAILABLE, needs Triton) - the most photos per second reach "
                "the gateway's decode",
                "with_triton": "gateway with a real Triton (fp32): photo Searches run end to end; on "
                "this CPU box Triton takes seconds per photo, so fewer decodes per second",
            },
            "photo": f"{args.side}x{args.side} JPEG, {len(photo)} bytes, default photo Search",
            "cheap_queries": "concurrency 1, alternating vector and item-id Search, k=10",
            "gateway_args": GATEWAY_ARGS,
            "pool": "default gateway: decode + pHash in a 2-thread pool, 16 admitted (gateway/cpu.py)",
            "inline_baseline": "same gateway with --cpu-inline: decode + pHash on the event loop (before)",
        },
        "hardware": hardware(),
        "load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "results": results,
        "summary": summary,
    }


def _main(args: argparse.Namespace) -> int:
    return write_report(run(args), args.out, "summary")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gateway-loop", help="cheap-query p99 alone vs under a large-photo load (pool vs inline decode)"
    )
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--queries", type=int, default=300, help="cheap queries per phase")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--load-seconds", type=float, default=30.0,
                   help="length of the loaded phase (cheap queries back to back meanwhile)")
    p.add_argument("--loaders", type=int, default=3, help="threads sending the large photo")
    p.add_argument("--side", type=int, default=6000, help="large photo side, pixels")
    p.add_argument("--no-triton", action="store_true", help="only the decode_only configuration")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "gateway_loop.json")
    p.set_defaults(func=_main)
