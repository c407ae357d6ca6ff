"""`vsearch bench triton`: throughput and latency of the Triton ensembles, in one run.

For each precision (fp32, and int8 where exported) x dynamic batching on/off, a fresh
tritonserver is started and `embed` / `detect_and_embed` are driven by a closed-loop asyncio
gRPC client at each concurrency for a fixed time, cycling over real photos. Writes JSON
(arguments, hardware, results, speed-up summary) under benchmarks/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visual_search.eval.dataset import SHARED_DATA

REPO_ROOT = Path(__file__).resolve().parents[2]


def _images(n: int) -> list[bytes]:
    """A fixed, varied set: the two test photos plus the first grocery/dog photos."""
    paths = [REPO_ROOT / "tests" / "data" / "bus.jpg", REPO_ROOT / "tests" / "data" / "zidane.jpg"]
    for sub in ("grocery_packages_dev", "oxford_pets_dogs"):
        paths += sorted((SHARED_DATA / sub / "images").rglob("*.jpg"))[::40][: max(0, (n - 2) // 2)]
    return [p.read_bytes() for p in paths if p.exists()][:n]


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


async def _drive(
    url: str, model: str, images: list[bytes], concurrency: int, seconds: float, warm: int = 0
) -> dict[str, Any]:
    """Closed loop at `concurrency` for `seconds`. Warm-up first: one request per worker in turn,
    or (`warm` > 0) that many requests at once, so every model instance has run."""
    from visual_search.triton.client import AsyncTritonClient

    latencies: list[float] = []
    errors = 0
    async with AsyncTritonClient(url) as client:
        if warm:
            await asyncio.gather(*(client.infer(model, img) for img in images[:warm]))
        else:
            for img in images[:concurrency]:  # warm every worker's path once
                await client.infer(model, img)
        deadline = time.perf_counter() + seconds
        counter = 0

        async def worker() -> None:
            nonlocal counter, errors
            while time.perf_counter() < deadline:
                img = images[counter % len(images)]
                counter += 1
                t0 = time.perf_counter()
                try:
                    await client.infer(model, img)
                    latencies.append(time.perf_counter() - t0)
                except Exception:  # noqa: BLE001 - counted, the run goes on
                    errors += 1

        t_start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - t_start
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "images_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(1000 * _pct(latencies, 50), 1) if latencies else None,
        "p95_ms": round(1000 * _pct(latencies, 95), 1) if latencies else None,
        "p99_ms": round(1000 * _pct(latencies, 99), 1) if latencies else None,
        "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else None,
    }


def _batch_stats(url: str) -> dict[str, dict[int, int]]:
    from visual_search.triton.client import TritonClient

    out: dict[str, dict[int, int]] = {}
    with TritonClient(url) as c:
        for model in ("detector", "encoder"):
            stats = c.statistics(model)["model_stats"][0].get("batch_stats", [])
            out[model] = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats}
    return out


def _hardware() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "gpu": None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "server": "tritonserver 2.51 (nvidia-pytriton 0.7.0 wheel), python backend + onnxruntime",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime

    from visual_search import contract as C
    from visual_search.triton.repository import BATCHING, Options
    from visual_search.triton.server import TritonServer

    art = REPO_ROOT / C.ARTIFACTS_DIR
    precisions = [
        p
        for p in args.precisions
        if (art / f"detector_{p}.onnx").exists() and (art / f"encoder_{p}.onnx").exists()
    ]
    skipped = sorted(set(args.precisions) - set(precisions))
    images = _images(args.images)
    load_start = os.getloadavg()
    results: list[dict[str, Any]] = []
    for precision in precisions:
        for batching in (True, False):
            opts = Options(precision=precision, batching=batching)
            with (
                tempfile.TemporaryDirectory(prefix="vs-bench-") as tmp,
                TritonServer(options=opts, run_dir=Path(tmp)) as server,
            ):
                for model in args.models:
                    for conc in args.concurrency:
                        r = asyncio.run(_drive(server.grpc_url, model, images, conc, args.seconds))
                        r.update(precision=precision, batching=batching, model=model, concurrency=conc)
                        results.append(r)
                        print(json.dumps(r), file=sys.stderr)
                batch_stats = _batch_stats(server.grpc_url)
            results.append(
                {"precision": precision, "batching": batching, "executions_by_batch_size": batch_stats}
            )
    report = {
        "benchmark": "triton",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "arguments": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"
        },
        "images": len(images),
        "hardware": _hardware(),
        # the 2 cores are shared with other work; load above the core count makes figures noisy
        "load_average_1m": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)},
        "versions": {"onnxruntime": onnxruntime.__version__},
        "batching_config": {f"{k[0]}/{k[1]}": vars(v) for k, v in BATCHING.items() if k[0] == "cpu"},
        "skipped_precisions": skipped,
        "results": results,
        "summary": _summary(results, max(args.concurrency)),
    }
    return report


def _summary(results: list[dict[str, Any]], conc: int) -> dict[str, Any]:
    def ips(precision: str, batching: bool, model: str, c: int) -> float | None:
        for r in results:
            if (r.get("precision"), r.get("batching"), r.get("model"), r.get("concurrency")) == (
                precision,
                batching,
                model,
                c,
            ):
                return float(r["images_per_s"])
        return None

    out: dict[str, Any] = {}
    for model in ("embed", "detect_and_embed"):
        for precision in ("fp32", "int8"):
            on, off = ips(precision, True, model, conc), ips(precision, False, model, conc)
            if on and off:
                out[f"batching_speedup_{model}_{precision}_c{conc}"] = round(on / off, 2)
        fp32, int8 = ips("fp32", True, model, conc), ips("int8", True, model, conc)
        if fp32 and int8:
            out[f"int8_speedup_{model}_batching_c{conc}"] = round(int8 / fp32, 2)
        fp32_1, int8_1 = ips("fp32", True, model, 1), ips("int8", True, model, 1)
        if fp32_1 and int8_1:
            out[f"int8_speedup_{model}_c1"] = round(int8_1 / fp32_1, 2)
    return out


def _main(args: argparse.Namespace) -> int:
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "triton", help="Triton ensembles: images/s, p50/p99; batching on/off, fp32/int8"
    )
    p.add_argument("--models", nargs="+", default=["embed", "detect_and_embed"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    p.add_argument("--seconds", type=float, default=8.0, help="measured time per point")
    p.add_argument("--images", type=int, default=12, help="distinct photos cycled through")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "triton.json")
    p.set_defaults(func=_main)
