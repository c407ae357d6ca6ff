"""`vsearch bench memory`: peak RSS of every process for the worst ACCEPTED image, one run.

The worst accepted input is the largest image the contract lets through at the largest aspect
ratio: MAX_IMAGE_PIXELS at MAX_ASPECT_RATIO (e.g. 28284x1414), as a small compressible PNG, wide
and tall. A real stack (`vsearch up`'s Stack: tritonserver + shards + gateway) gets it through
every path that decodes or resizes an image - Search (default box, whole image, all objects,
explicit box), Detect, IndexItems, and Triton directly - and, side by side in the same run, a
normal photo (tests/data/bus.jpg, the baseline), the largest accepted square photo (what the pixel
limit alone costs) and the over-limit inputs of issue 12 (refused).

Peak RSS per process and phase comes from the kernel's high-water mark (VmHWM in
/proc/<pid>/status), reset before each phase by writing 5 to /proc/<pid>/clear_refs; a 20 ms
sampler of VmRSS cross-checks it. Processes: the gateway, tritonserver, each of its python-backend
stub processes (named by model), each shard. -> benchmarks/memory_worst_input.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from visual_search import contract as C
from visual_search.bench.report import write_report

REPO_ROOT = Path(__file__).resolve().parents[2]
BUS = REPO_ROOT / "tests" / "data" / "bus.jpg"
_MB = 1024 * 1024


def worst_size() -> tuple[int, int]:
    """(long, short) side of the largest accepted image at the largest accepted aspect ratio."""
    short = math.isqrt(int(C.MAX_IMAGE_PIXELS / C.MAX_ASPECT_RATIO))
    long = min(int(short * C.MAX_ASPECT_RATIO), C.MAX_IMAGE_PIXELS // short)
    return long, short


def compressible_png(width: int, height: int, seed: int = 0) -> bytes:
    """A gradient with a few filled rectangles: decodes to width x height x 3 bytes, compresses
    to well under MAX_IMAGE_BYTES (what makes such images cheap to send and costly to serve)."""
    from PIL import Image, ImageDraw

    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(img)
    rng = np.random.default_rng(seed)
    for _ in range(12):
        x, y = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        w, h = int(rng.integers(10, max(11, width // 10))), int(rng.integers(10, max(11, height // 2)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.rectangle((x, y, min(width - 1, x + w), min(height - 1, y + h)), fill=color)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False)
    return buf.getvalue()


# ---- /proc ------------------------------------------------------------------------------------
def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(d.name))
    return out


def _descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _stub_name(pid: int) -> str:
    """python-backend stub process -> its model name (from the stub's argv: model path)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid{pid}"
    args = [a.decode(errors="replace") for a in argv if a]
    if len(args) > 2 and args[1].endswith("model.py"):
        return args[-2]  # the instance name, e.g. crop_0_1
    return Path(args[0]).name if args else f"pid{pid}"


class Processes:
    """The stack's processes by role, with per-phase peak RSS (kernel HWM + a sampler)."""

    def __init__(self, stack: Any) -> None:
        self.roles: dict[str, int] = {
            "gateway": stack.gateway.proc.pid,
            "tritonserver": stack.triton.proc.pid,
        }
        for i, sp in enumerate(stack.shards):
            self.roles[f"shard{sp.shard_id}" + (f"-r{i}" if stack.opts.replicas > 1 else "")] = sp.proc.pid
        stubs: dict[str, int] = {}
        for pid in _descendants(stack.triton.proc.pid)[1:]:
            stubs[_stub_name(pid)] = pid
        self.roles.update({f"triton_stub:{k}": v for k, v in sorted(stubs.items())})
        self.hwm_reset = True
        self._sampled: dict[str, int] = {}
        self._stop = threading.Event()

    def reset(self) -> None:
        for pid in self.roles.values():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                self.hwm_reset = False
        self._sampled = {k: 0 for k in self.roles}

    @contextlib.contextmanager
    def phase(self) -> Iterator[dict[str, Any]]:
        """Peaks of the code inside the block: {role: {peak_rss_mb, sampled_peak_rss_mb}}."""
        self.reset()
        self._stop.clear()
        out: dict[str, Any] = {}

        def sample() -> None:
            while not self._stop.wait(0.02):
                for k, pid in self.roles.items():
                    with contextlib.suppress(OSError):
                        self._sampled[k] = max(self._sampled[k], _status_kb(pid, "VmRSS"))

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            yield out
        finally:
            self._stop.set()
            t.join()
            for k, pid in self.roles.items():
                with contextlib.suppress(OSError):
                    out[k] = {
                        "peak_rss_mb": round(_status_kb(pid, "VmHWM") / 1024, 1),
                        "sampled_peak_rss_mb": round(self._sampled[k] / 1024, 1),
                    }
            stubs = [v["peak_rss_mb"] for k, v in out.items() if k.startswith("triton_stub:")]
            out["triton_stubs_max_mb"] = max(stubs, default=0.0)

    def current_mb(self) -> dict[str, float]:
        out = {}
        for k, pid in self.roles.items():
            with contextlib.suppress(OSError):
                out[k] = round(_status_kb(pid, "VmRSS") / 1024, 1)
        return out


# ---- requests ---------------------------------------------------------------------------------
def _paths(gateway: str, triton_url: str) -> dict[str, Callable[[bytes], str]]:
    """Every way an image is decoded/resized; each returns the status code name."""
    import grpc

    from visual_search.triton import names as N
    from visual_search.triton.client import InferenceError, TritonClient
    from visual_search.v1 import search_pb2, search_pb2_grpc

    def gw(call: Callable[[Any], Any]) -> Callable[[bytes], str]:
        def run(img: bytes) -> str:
            with grpc.insecure_channel(gateway, options=[("grpc.max_send_message_length", 64 * _MB)]) as ch:
                try:
                    call((search_pb2_grpc.VisualSearchStub(ch), img))
                    return "OK"
                except grpc.RpcError as e:
                    detail = (e.details() or "")[:160]
                    return str(e.code().name) + (
                        f" ({detail})" if e.code().name != "INVALID_ARGUMENT" else ""
                    )

        return run

    def search(sel: dict[str, Any]) -> Callable[[Any], Any]:
        def call(a: Any) -> Any:
            stub, img = a
            q = search_pb2.ImageQuery(image=img, **sel)
            return stub.Search(search_pb2.QueryRequest(k=5, image=q), timeout=600)

        return call

    def index(a: Any) -> Any:
        stub, img = a
        rs = list(
            stub.IndexItems(iter([search_pb2.IndexItemRequest(item_id="worst", image=img)]), timeout=600)
        )
        if not rs[0].ok:
            raise _Status(rs[0].error_code)
        return rs

    def triton(model: str) -> Callable[[bytes], str]:
        def run(img: bytes) -> str:
            with TritonClient(triton_url, timeout_s=600) as tc:
                try:
                    tc._infer(model, img)
                    return "OK"
                except InferenceError as e:
                    return str(e.status or "ERROR").replace("StatusCode.", "")

        return run

    def with_status(fn: Callable[[bytes], str]) -> Callable[[bytes], str]:
        def run(img: bytes) -> str:
            try:
                return fn(img)
            except _Status as e:
                return e.code

        return run

    from PIL import Image

    def box_search(a: Any) -> Any:
        stub, img = a
        w, h = Image.open(io.BytesIO(img)).size  # header only
        q = search_pb2.ImageQuery(image=img, box=search_pb2.Box(x1=0, y1=0, x2=w, y2=h))
        return stub.Search(search_pb2.QueryRequest(k=5, image=q), timeout=600)

    return {
        "gateway.Search(default box)": gw(search({})),
        "gateway.Search(whole_image)": gw(search({"whole_image": True})),
        "gateway.Search(all_objects)": gw(search({"all_objects": True})),
        "gateway.Search(box = whole photo)": gw(box_search),
        "gateway.Detect": gw(lambda a: a[0].Detect(search_pb2.DetectRequest(image=a[1]), timeout=600)),
        "gateway.IndexItems": with_status(gw(index)),
        f"triton.{N.EMBED}": triton(N.EMBED),
        f"triton.{N.DETECT_AND_EMBED}": triton(N.DETECT_AND_EMBED),
        f"triton.{N.DETECT_AND_EMBED_DEFAULT}": triton(N.DETECT_AND_EMBED_DEFAULT),
    }


class _Status(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def run(args: argparse.Namespace) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from visual_search.bench.report import hardware
    from visual_search.launcher import Stack, StackOptions

    load_start = round(os.getloadavg()[0], 2)
    long, short = worst_size()
    side = math.isqrt(C.MAX_IMAGE_PIXELS)
    inputs = {
        "baseline bus.jpg": BUS.read_bytes(),
        f"largest accepted square {side}x{side}": compressible_png(side, side, seed=2),
        f"worst accepted wide {long}x{short}": compressible_png(long, short),
        f"worst accepted tall {short}x{long}": compressible_png(short, long, seed=1),
    }
    over_w, over_h = long + short // 20 + 1, short  # just past the ratio, still <= pixels... if not, fewer
    while over_w * over_h > C.MAX_IMAGE_PIXELS:
        over_h -= 1
    refused = {
        "issue 12 strip 400000x100 (refused)": compressible_png(400_000, 100),
        f"just over the ratio {over_w}x{over_h} (refused)": compressible_png(over_w, over_h),
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        opts = StackOptions(Path(tmp), shards=args.shards, precision=args.precision)
        with Stack(opts) as stack:
            paths = _paths(stack.gateway.address, stack.triton.grpc_url)
            for fn in paths.values():  # warm every model instance with a normal photo
                fn(inputs["baseline bus.jpg"])
            procs = Processes(stack)
            results["idle_rss_mb"] = procs.current_mb()
            for label, img in {**inputs, **refused}.items():
                phase: dict[str, Any] = {"bytes": len(img), "requests": {}}
                with procs.phase() as peaks:
                    for name, fn in paths.items():
                        t0 = time.perf_counter()
                        codes = [fn(img) for _ in range(args.repeat)]
                        phase["requests"][name] = {
                            "codes": sorted(set(codes)),
                            "seconds": round(time.perf_counter() - t0, 2),
                        }
                phase["peak_rss_mb"] = peaks
                results[label] = phase
                print(
                    f"{label}: "
                    + ", ".join(
                        f"{k} {v['peak_rss_mb']}"
                        for k, v in peaks.items()
                        if isinstance(v, dict) and not k.startswith("triton_stub:")
                    )
                    + f", stubs max {peaks['triton_stubs_max_mb']}",
                    flush=True,
                )
            if args.concurrency > 1:
                label = f"worst accepted wide x{args.concurrency} concurrent"
                img = inputs[f"worst accepted wide {long}x{short}"]
                phase = {"bytes": len(img), "requests": {}}
                with procs.phase() as peaks, ThreadPoolExecutor(args.concurrency) as pool:
                    for name in (
                        "gateway.Search(default box)",
                        "gateway.Search(all_objects)",
                        "gateway.IndexItems",
                    ):
                        t0 = time.perf_counter()
                        codes = list(pool.map(paths[name], [img] * args.concurrency))
                        phase["requests"][name] = {
                            "codes": sorted(set(codes)),
                            "seconds": round(time.perf_counter() - t0, 2),
                        }
                phase["peak_rss_mb"] = peaks
                results[label] = phase
            hwm_reset = procs.hwm_reset
            roles = sorted(procs.roles)
    worst = [k for k in results if k.startswith("worst accepted")]
    summary = {
        role: {
            "baseline_peak_mb": results["baseline bus.jpg"]["peak_rss_mb"].get(role, {}).get("peak_rss_mb"),
            "largest_square_peak_mb": next(
                results[k]["peak_rss_mb"].get(role, {}).get("peak_rss_mb") for k in results if "square" in k
            ),
            "worst_accepted_peak_mb": max(
                (results[k]["peak_rss_mb"].get(role, {}).get("peak_rss_mb") or 0.0) for k in worst
            ),
        }
        for role in roles
    }
    return {
        "benchmark": "memory_worst_input",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arguments": {k: str(v) for k, v in vars(args).items() if k != "func"},
        "limits": {
            "MAX_IMAGE_PIXELS": C.MAX_IMAGE_PIXELS,
            "MAX_ASPECT_RATIO": C.MAX_ASPECT_RATIO,
            "MAX_IMAGE_BYTES": C.MAX_IMAGE_BYTES,
            "worst_accepted_size": [long, short],
        },
        "method": "peak RSS = VmHWM per process, reset per phase via /proc/<pid>/clear_refs"
        + ("" if hwm_reset else " (reset NOT permitted here: peaks are lifetime highs)")
        + "; sampled_peak = max VmRSS seen by a 20 ms sampler; requests sequential, each path "
        f"{args.repeat}x per input",
        "hardware": hardware(),
        "load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "results": results,
        "summary_peak_rss_mb": summary,
    }


def _main(args: argparse.Namespace) -> int:
    return write_report(run(args), args.out, "summary_peak_rss_mb", indent=1)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "memory", help="peak RSS of every process for the worst accepted image vs a normal photo"
    )
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "int8"))
    p.add_argument("--repeat", type=int, default=1, help="requests per path and input")
    p.add_argument("--concurrency", type=int, default=4, help="parallel worst-input requests (1 = skip)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "memory_worst_input.json")
    p.set_defaults(func=_main)
