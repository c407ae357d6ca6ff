"""`vsearch bench triton-grid`: which CPU serving config is fastest on this host, measured.

Issue 13 asked whether onnxruntime instance counts, intra-op threads or the dynamic batcher's
queue delay give a real gain on a 2-core box (batching alone measured 0.87-1.12x). For each grid
point a temporary CPU repository is generated (tempdir; model_repository/ is never touched), a
real tritonserver is started on it, and the query-path ensembles (`detect_and_embed_default`,
`embed`) are driven by a closed-loop gRPC client at each concurrency over the same photos.

The committed config ("current") is measured first, last and in between, in the same run: its
runs bound the drift from other work on the shared host, and their mean is the baseline for the
ratios. Besides images/s and p50/p95/p99, each measurement records the 1-minute load average,
the CPU seconds the server's process group used (images per server CPU-second is less sensitive
to other load than images/s) and the CPU seconds other processes used meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visual_search.bench.triton_stages import process_cpu
from visual_search.triton import names as N
from visual_search.triton.bench import _drive, _hardware, _images

REPO_ROOT = Path(__file__).resolve().parents[2]
BASELINE = "current"
# A p95 within this fraction of the baseline's counts as "equal" (run-to-run noise on this host).
P95_TOLERANCE = 0.05
CLEARLY_BETTER = 1.15  # issue 13: a gain worth changing the committed configs for
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Point:
    """One serving config: the ONNX models' (detector_query, detector, encoder) instances,
    intra-op threads and batching, and the python pre/post models' instances; None keeps the
    committed value."""

    name: str
    instances: int | None = None
    threads: int | None = None
    batching: bool = True
    delay_us: int | None = None
    python_instances: int | None = None

    def options(self, precision: str) -> Any:
        from visual_search.triton.repository import ORT_THREADS, PYTHON_INSTANCES, Options

        return Options(
            precision=precision,
            batching=self.batching,
            ort_threads=self.threads or ORT_THREADS,
            onnx_instances=self.instances,
            max_queue_delay_us=self.delay_us,
            python_instances=self.python_instances or PYTHON_INSTANCES,
        )

    def effective(self) -> dict[str, Any]:
        """The values the generated configs carry (detector_query; the encoder gets the same)."""
        from visual_search.triton.repository import BATCHING

        b = BATCHING[("cpu", N.DETECTOR_QUERY)]
        opts = self.options("fp32")
        return {
            "onnx_instances": b.instances if self.instances is None else self.instances,
            "ort_threads": opts.ort_threads,
            "dynamic_batching": self.batching,
            "max_queue_delay_us": (b.max_queue_delay_us if self.delay_us is None else self.delay_us)
            if self.batching
            else None,
            "python_instances": opts.python_instances,
        }


# 11 points: around the committed config (2 instances x 1 thread, batching, 2 ms) one knob at a
# time, then 1 instance x 2 threads (one process using both cores), 2 x 2 (oversubscribed), and
# fewer python processes (10 stub processes share 2 cores in the committed config).
GRID: tuple[Point, ...] = (
    Point(BASELINE),
    Point("i2-t1-off", batching=False),
    Point("i2-t1-q0", delay_us=0),
    Point("i2-t1-q10000", delay_us=10000),
    Point("i1-t1-q2000", instances=1, threads=1, delay_us=2000),
    Point("i1-t2-q2000", instances=1, threads=2, delay_us=2000),
    Point("i1-t2-off", instances=1, threads=2, batching=False),
    Point("i1-t2-q10000", instances=1, threads=2, delay_us=10000),
    Point("i2-t2-q2000", instances=2, threads=2, delay_us=2000),
    Point("i2-t2-off", instances=2, threads=2, batching=False),
    Point("i1-t2-q2000-py1", instances=1, threads=2, delay_us=2000, python_instances=1),
)
POINTS = {p.name: p for p in GRID}


def _group_cpu_s(pgid: int) -> float:
    """user+system CPU seconds of the live processes in a process group (tritonserver + stubs)."""
    return sum(cpu for _, cpu in process_cpu(pgid).values())


def _machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat)."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / _TICK  # minus idle, iowait


async def _measure(
    url: str, model: str, images: list[bytes], concurrency: int, seconds: float
) -> dict[str, Any]:
    """Closed loop at `concurrency` for `seconds`, after a concurrent warm-up of every instance."""
    return await _drive(url, model, images, concurrency, seconds, warm=max(4, 2 * concurrency))


def _accounted(pgid: int, fn: Any) -> dict[str, Any]:
    """Run fn() and add load average and CPU seconds (server group, this client, everything else)."""
    load0, busy0, srv0, me0 = os.getloadavg()[0], _machine_busy_s(), _group_cpu_s(pgid), time.process_time()
    r: dict[str, Any] = fn()
    srv, me = _group_cpu_s(pgid) - srv0, time.process_time() - me0
    other = max(0.0, _machine_busy_s() - busy0 - srv - me)
    r.update(
        load_1m_before=round(load0, 2),
        load_1m_after=round(os.getloadavg()[0], 2),
        server_cpu_s=round(srv, 2),
        client_cpu_s=round(me, 2),
        other_cpu_s=round(other, 2),
        images_per_server_cpu_s=round(r["requests"] / srv, 2) if srv > 0 else None,
    )
    return r


def _batch_stats(url: str) -> dict[str, dict[int, int]]:
    """Executions by batch size of the query path's ONNX models (is the batcher forming batches?)."""
    from visual_search.triton.client import TritonClient

    out: dict[str, dict[int, int]] = {}
    with TritonClient(url) as c:
        for model in (N.DETECTOR_QUERY, N.ENCODER):
            stats = c.statistics(model)["model_stats"][0].get("batch_stats", [])
            out[model] = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats}
    return out


def _run_point(
    point: Point, label: str, port: int, images: list[bytes], args: argparse.Namespace
) -> list[dict[str, Any]]:
    from visual_search.triton.server import TritonServer

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vs-grid-") as tmp:
        server = TritonServer(
            options=point.options(args.precision),
            run_dir=Path(tmp),
            grpc_port=port,  # 0: free ports
            http_port=port + 1 if port else 0,
            metrics_port=port + 2 if port else 0,
        )
        t0 = time.perf_counter()
        with server:
            startup_s = round(time.perf_counter() - t0, 1)
            if server.proc is None:
                raise RuntimeError("tritonserver did not start")
            pgid = server.proc.pid  # the server leads its own process group
            for model in args.models:
                for conc in args.concurrency:
                    r = _accounted(
                        pgid,
                        lambda m=model, c=conc: asyncio.run(
                            _measure(server.grpc_url, m, images, c, args.seconds)
                        ),
                    )
                    r = {"point": point.name, "run": label, "model": model, "concurrency": conc, **r}
                    rows.append(r)
                    print(json.dumps(r), file=sys.stderr)
            rows.append(
                {
                    "point": point.name,
                    "run": label,
                    "startup_s": startup_s,
                    "executions_by_batch_size": _batch_stats(server.grpc_url),
                }
            )
    return rows


def summarize(results: list[dict[str, Any]], points: list[str]) -> dict[str, Any]:
    """Per (model, concurrency): the baseline (mean of its runs), each point's ratio to it, and
    the fastest point whose p95 is equal (within P95_TOLERANCE) or better."""
    rows = [r for r in results if "images_per_s" in r]
    out: dict[str, Any] = {}
    keys = sorted({(r["model"], r["concurrency"]) for r in rows})
    for model, conc in keys:
        at = [r for r in rows if (r["model"], r["concurrency"]) == (model, conc)]

        def mean_of(name: str, field: str, at: list[dict[str, Any]] = at) -> float | None:
            vals = [float(r[field]) for r in at if r["point"] == name and r.get(field) is not None]
            return statistics.fmean(vals) if vals else None

        base_ips, base_p95 = mean_of(BASELINE, "images_per_s"), mean_of(BASELINE, "p95_ms")
        if not base_ips or base_p95 is None:
            continue
        base_runs = [r["images_per_s"] for r in at if r["point"] == BASELINE]
        table = {}
        for name in points:
            ips, p95 = mean_of(name, "images_per_s"), mean_of(name, "p95_ms")
            if ips is None or p95 is None:
                continue
            table[name] = {
                "images_per_s": round(ips, 2),
                "p95_ms": round(p95, 1),
                "ratio": round(ips / base_ips, 3),
                "p95_ratio": round(p95 / base_p95, 3),
            }
            eff, base_eff = (
                mean_of(name, "images_per_server_cpu_s"),
                mean_of(BASELINE, "images_per_server_cpu_s"),
            )
            if eff and base_eff:  # less sensitive to other load than images/s
                table[name]["images_per_server_cpu_s"] = round(eff, 2)
                table[name]["cpu_efficiency_ratio"] = round(eff / base_eff, 3)
        eligible = {
            n: t for n, t in table.items() if n != BASELINE and t["p95_ms"] <= base_p95 * (1 + P95_TOLERANCE)
        }
        best = max(eligible, key=lambda n: eligible[n]["ratio"], default=None)
        fastest = max(table, key=lambda n: table[n]["ratio"])
        entry: dict[str, Any] = {
            "baseline_images_per_s": round(base_ips, 2),
            "baseline_p95_ms": round(base_p95, 1),
            "baseline_runs_images_per_s": base_runs,
            "baseline_drift": round(max(base_runs) / min(base_runs) - 1, 3) if min(base_runs) > 0 else None,
            "points": table,
            "fastest": fastest,
            "best_at_equal_or_better_p95": best,
            "best_vs_current": eligible[best]["ratio"] if best else None,
        }
        # a gain must clear both the bar and the baseline's own run-to-run spread in this run
        drift = entry["baseline_drift"] or 0.0
        entry["clearly_better"] = bool(
            best and eligible[best]["ratio"] >= CLEARLY_BETTER and eligible[best]["ratio"] - 1 > drift
        )
        out[f"{model}_c{conc}"] = entry
    return out


def make_schedule(others: list[str], baseline_runs: int) -> list[tuple[str, str]]:
    """(point, run label) in order: the baseline first, last and evenly between the other points,
    so drift from other work on the host shows up as a spread between its runs."""
    runs = max(1, baseline_runs)
    if runs == 1 or not others:
        slots = [0] * runs
    else:  # before others[k] for each k in slots; len(others) = after the last one
        slots = [round(i * len(others) / (runs - 1)) for i in range(runs)]
    out: list[tuple[str, str]] = []
    n = 0
    for k in range(len(others) + 1):
        while n < runs and slots[n] == k:
            out.append((BASELINE, BASELINE if n == 0 else f"{BASELINE}#{n + 1}"))
            n += 1
        if k < len(others):
            out.append((others[k], others[k]))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime

    names = list(dict.fromkeys([BASELINE, *args.points]))  # the baseline always runs (first)
    schedule = make_schedule(names[1:], args.baseline_runs)
    images = _images(args.images)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    for i, (name, label) in enumerate(schedule):
        port = args.base_port + 3 * i if args.base_port else 0
        results += _run_point(POINTS[name], label, port, images, args)
    return {
        "benchmark": "triton_grid",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "arguments": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"
        },
        "images": len(images),
        "hardware": _hardware(),
        "load_average_1m": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)},
        "wall_s": round(time.perf_counter() - t0, 1),
        "versions": {"onnxruntime": onnxruntime.__version__},
        "baseline": BASELINE,
        "grid": {n: POINTS[n].effective() for n in names},
        "schedule": [label for _, label in schedule],
        "p95_tolerance": P95_TOLERANCE,
        "clearly_better_ratio": CLEARLY_BETTER,
        "results": results,
        "summary": summarize(results, names),
    }


def _main(args: argparse.Namespace) -> int:
    unknown = [n for n in args.points if n not in POINTS]
    if unknown:
        print(f"unknown grid points {unknown}; known: {sorted(POINTS)}", file=sys.stderr)
        return 2
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "triton-grid", help="CPU Triton configs (instances, threads, queue delay) vs the committed one"
    )
    p.add_argument("--points", nargs="+", default=[pt.name for pt in GRID], help=f"of {', '.join(POINTS)}")
    p.add_argument("--models", nargs="+", default=[N.DETECT_AND_EMBED_DEFAULT, N.EMBED])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.add_argument("--seconds", type=float, default=8.0, help="measured time per (model, concurrency)")
    p.add_argument("--images", type=int, default=12, help="distinct photos cycled through")
    p.add_argument("--base-port", type=int, default=0, help="point i uses base+3i..+2 (0: free ports)")
    p.add_argument(
        "--baseline-runs",
        type=int,
        default=3,
        help="runs of the committed config: first, last and evenly between (drift check)",
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "triton_grid.json")
    p.set_defaults(func=_main)
