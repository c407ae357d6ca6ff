"""`vsearch bench triton-stages`: where Triton's CPU goes per request, next to the same work in-process.

Issue 13 asks for a cheaper CPU query path (goal 45 photo queries/s on 2 cores). This splits the
committed CPU serving config's CPU time per request by process - tritonserver itself and each
python-backend model's stub processes (preprocess, detector, crop, encoder, ...) - from
/proc/<pid>/stat, while one closed-loop client at concurrency 1 calls an ensemble over the same
photos. In the same run, the same work is done in this process by visual_search.reference
(onnxruntime, 1 intra-op thread per session, as each Triton instance), the plain baseline: the
difference is what the ensemble's hops (shared-memory tensors, stub IPC, scheduling) cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visual_search.triton import names as N

_TICK = os.sysconf("SC_CLK_TCK")
Snapshot = dict[int, tuple[str, float]]  # pid -> (process kind, CPU seconds)
MODELS = (N.DETECT_AND_EMBED_DEFAULT, N.DETECT_AND_EMBED_DEFAULT_WHOLE, N.EMBED, N.DETECT_AND_EMBED)


def process_cpu(pgid: int) -> Snapshot:
    """pid -> (what it is, user+system CPU seconds) for tritonserver and its python stubs."""
    out: dict[int, tuple[str, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) != pgid:
            continue
        name = "tritonserver"
        if cmd and cmd[0].endswith(b"triton_python_backend_stub") and len(cmd) > 1:
            parts = cmd[1].decode(errors="replace").split("/")  # <repo>/<model>/<version>/model.py
            name = parts[-3] if len(parts) >= 3 else "stub"
        out[int(d.name)] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def by_model(before: Snapshot, after: Snapshot, n: int) -> dict[str, float]:
    """CPU ms per request of each process kind between two snapshots (new processes count whole)."""
    agg: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        agg[name] = agg.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    return {k: round(v / n * 1e3, 2) for k, v in sorted(agg.items(), key=lambda kv: -kv[1]) if v > 0}


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def inprocess_work(precision: str) -> dict[str, Callable[[bytes], Any]]:
    """The in-process equivalent of each ensemble, from bytes, as Triton gets them."""
    from visual_search import models
    from visual_search import preprocess as P
    from visual_search.reference import ReferencePipeline

    prec: models.Precision = "int8" if precision == "int8" else "fp32"
    pipe = ReferencePipeline(
        models.artifact_path("detector"), models.artifact_path("encoder", prec), threads=1,
        query_detector_path=models.artifact_path("detector_query_fp32"),
    )
    return {
        N.DETECT_AND_EMBED_DEFAULT: lambda b: pipe.embed_default(P.decode_image(b)),
        N.DETECT_AND_EMBED_DEFAULT_WHOLE: lambda b: pipe.embed_default_whole(P.decode_image(b)),
        N.EMBED: lambda b: pipe.embed(P.decode_image(b)),
        N.DETECT_AND_EMBED: lambda b: pipe.detect_and_embed(P.decode_image(b)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visual_search.bench.report import hardware
    from visual_search.triton.bench import _drive, _images
    from visual_search.triton.repository import Options
    from visual_search.triton.server import running

    images = _images(args.images)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vs-stages-") as tmp, running(
        Options(flavour="cpu", precision=args.precision), Path(tmp)
    ) as server:
        if server.proc is None:
            raise RuntimeError("tritonserver did not start")
        pgid = server.proc.pid
        for model in args.models:
            asyncio.run(_drive(server.grpc_url, model, images, 1, 1.0, warm=4))  # every instance warm
            load0, before = os.getloadavg()[0], process_cpu(pgid)
            r = asyncio.run(_drive(server.grpc_url, model, images, 1, args.seconds))
            stages = by_model(before, process_cpu(pgid), r["requests"])
            rows[model] = {
                "triton": {**r, "load_1m_before": round(load0, 2), "cpu_ms_per_request": stages,
                           "cpu_ms_total": round(sum(stages.values()), 2)},
            }
    work = inprocess_work(args.precision)
    for model in args.models:
        fn = work[model]
        for b in images[:4]:
            fn(b)
        n, c0, w0 = 0, _cpu_self(), time.perf_counter()
        while time.perf_counter() - w0 < args.seconds:
            fn(images[n % len(images)])
            n += 1
        wall, cpu = time.perf_counter() - w0, _cpu_self() - c0
        rows[model]["inprocess"] = {"requests": n, "wall_ms_per_request": round(wall / n * 1e3, 2),
                                    "cpu_ms_per_request": round(cpu / n * 1e3, 2)}
        ratio = rows[model]["triton"]["cpu_ms_total"] / rows[model]["inprocess"]["cpu_ms_per_request"]
        rows[model]["triton_cpu_over_inprocess"] = round(ratio, 2)
    return {
        "benchmark": "triton_stages",
        "what": __doc__.strip().split("\n\n")[1].replace("\n", " "),
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "hardware": hardware(),
        "images": len(images),
        "results": rows,
    }


def _main(args: argparse.Namespace) -> int:
    from visual_search.bench.report import write_report

    return write_report(run(args), Path(args.out), show="results")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("triton-stages", help="Triton CPU per request by model process, vs in-process",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", choices=("fp32", "int8"), default="int8")
    p.add_argument("--seconds", type=float, default=10.0, help="per model, each side")
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="ensembles to measure")
    p.add_argument("--out", default="benchmarks/triton_stages.json")
    p.set_defaults(func=_main)
