"""`vsearch up` and `vsearch demo`: the whole stack on loopback (Triton + S shards + gateway).

Everything listens on 127.0.0.1 only (Triton's gRPC/HTTP/metrics too), and the shards require a
per-stack random token that only the gateway gets. `up` starts everything, waits for readiness,
prints the endpoints and runs until Ctrl-C/SIGTERM,
then stops the gateway first (drain), the shards (final snapshot) and Triton. `demo` is the
quickstart: a fresh stack in a temporary directory, a sample of the grocery catalog indexed
through the public API, a few real photo queries printed with the boxes chosen, then stop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
DEFAULT_MANIFEST = SHARED / "data" / "grocery_packages_dev" / "manifest.csv"


def stack_missing() -> str | None:
    """Why the local stack cannot start here (for tests' skip reasons), or None when it can."""
    from visual_search import contract as C
    from visual_search.triton.server import DEFAULT_TRITON_HOME

    if not (DEFAULT_TRITON_HOME / "bin" / "tritonserver").exists():
        return "tritonserver not installed (scripts/install_triton.sh)"
    if not (REPO_ROOT / C.ARTIFACTS_DIR / "encoder_fp32.onnx").exists():
        return "models not exported (scripts/export_models.sh)"
    if not DEFAULT_MANIFEST.exists():
        return f"{DEFAULT_MANIFEST} missing (../shared/data)"
    return None


@dataclass
class StackOptions:
    run_dir: Path
    shards: int = 2
    replicas: int = 1
    gateway_port: int = 0  # 0 = a free port
    precision: str = "auto"  # auto = per model, INT8 where it passed its gates (see triton_options)
    gateway_args: list[str] = field(default_factory=list)
    shard_args: list[str] = field(default_factory=list)  # extra `vsearch shard` flags
    # Restart Triton / a shard that exits (process group killed, Triton's shm removed, backoff).
    supervise: bool = True
    supervise_kw: dict[str, float] = field(default_factory=dict)  # Supervisor(...) overrides
    # Serve the models of this directory (an exported or `vsearch adapt`ed model: ONNX files +
    # manifest.json) instead of artifacts/models; each at its manifest's default precision.
    model_dir: Path | None = None
    gateway: bool = True  # False: Triton + shards only (a new generation for a live gateway's cutover)


def model_dir_options(model_dir: Path, precision: str = "auto") -> Any:
    """Triton repository options serving `model_dir`'s ONNX files (its manifest's default precision
    per model under `auto`); SystemExit naming what is missing."""
    from visual_search.triton.repository import Options

    try:
        man = json.loads((model_dir / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{model_dir}: no readable manifest.json ({e})") from e
    default = man.get("default_precision", {})
    det = precision if precision != "auto" else default.get("detector", "fp32")
    enc = precision if precision != "auto" else default.get("encoder", "fp32")
    paths = {"detector": model_dir / f"detector_{det}.onnx", "encoder": model_dir / f"encoder_{enc}.onnx",
             "query": model_dir / "detector_query_fp32.onnx"}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise SystemExit(f"{model_dir}: missing {', '.join(missing)}")
    return Options(precision=enc, detector_path=paths["detector"], encoder_path=paths["encoder"],
                   query_detector_path=paths["query"])


class Stack:
    """Triton + shards + gateway processes; a context manager."""

    def __init__(self, opts: StackOptions) -> None:
        self.opts = opts
        self.triton: Any = None
        self.shards: list[Any] = []
        self.gateway: Any = None
        self.supervisor: Any = None
        self.model_version = ""

    def triton_options(self) -> Any:
        """Repository options: `auto` serves each model at the precision that passed its INT8 gates
        (manifest `default_precision`, e.g. FP32 detector + INT8 encoder); fp32/int8 force both."""
        from visual_search import models
        from visual_search.triton.repository import Options

        if self.opts.model_dir is None and self.opts.precision != "auto":
            return Options(precision=self.opts.precision)
        # the repository's own models are one model directory like any other (an adapted one)
        return model_dir_options(self.opts.model_dir or models.artifacts_dir(), self.opts.precision)

    def start(self) -> Stack:
        from visual_search.gateway.process import GatewayProcess
        from visual_search.shard import auth as shard_auth
        from visual_search.shard.process import ShardProcess
        from visual_search.supervise import free_port, wait_healthy
        from visual_search.triton.client import TritonClient
        from visual_search.triton.server import TritonServer

        run = self.opts.run_dir
        run.mkdir(parents=True, exist_ok=True)
        # Shards require a token (shard/auth.py): a random one per stack unless VSEARCH_SHARD_TOKEN
        # is set, passed to shards and gateway through the environment (never argv).
        shard_auth.ensure_token()
        try:
            self.triton = TritonServer(
                options=self.triton_options(), run_dir=run / "triton",
                shm_prefix=f"vsearch_{os.getpid()}_{secrets.token_hex(4)}_",  # ours alone, removable
            )
            self.triton.start()
            with TritonClient(self.triton.grpc_url) as tc:
                self.model_version = tc.encoder_version()
            for s in range(self.opts.shards):
                group = [
                    ShardProcess(
                        run / f"shard{s}-{r}",
                        shard_id=s,
                        model_version=self.model_version,
                        metrics_port=free_port(),
                        log_path=run / f"shard{s}-{r}.log",
                        extra_args=self.opts.shard_args,
                    )
                    for r in range(self.opts.replicas)
                ]
                for sp in group:  # replicas catch up from each other (shard/README.md "Replicas")
                    if len(group) > 1:
                        sp.extra_args += ["--peers", ",".join(o.address for o in group if o is not sp)]
                    self.shards.append(sp.start(wait=False))
            for sp in self.shards:
                wait_healthy(sp.address, 120, sp.proc)
            if self.opts.gateway:
                self.gateway = GatewayProcess(
                    self.shard_spec(),
                    triton_url=self.triton.grpc_url,
                    log_path=run / "gateway.log",
                    port=self.opts.gateway_port or None,
                    extra_args=self.opts.gateway_args,
                ).start()
            if self.opts.supervise:
                self.supervisor = self._supervisor().start()
        except BaseException:
            self.stop()
            raise
        return self

    def _supervisor(self) -> Any:
        from visual_search.supervise import Child, Supervisor

        triton = self.triton

        def triton_cleanup() -> str:
            stubs = len(triton.group_pids())
            return f"{stubs} group processes killed, {triton.kill_leftovers()} shm regions removed"

        children = [Child.of("triton", triton, cleanup=triton_cleanup, tick=triton.protect_shm)]
        for i, sp in enumerate(self.shards):
            children.append(Child.of(f"shard{i // self.opts.replicas}-{i % self.opts.replicas}", sp))
        return Supervisor(children, **self.opts.supervise_kw)  # type: ignore[arg-type]

    def rebuild_shards(self, timeout: float = 900.0) -> list[str]:
        """Rebuild every shard replica now (IVF-PQ trains once past its threshold; a rebuild the
        shard's own policy started is waited out) and return their index types, e.g. 'IVF16,PQ32'."""
        from visual_search.v1 import shard_pb2

        types = []
        for sp in self.shards:
            stub = sp.stub()
            deadline = time.monotonic() + timeout
            while True:
                resp = stub.Rebuild(shard_pb2.RebuildRequest(wait=True), timeout=timeout)
                if resp.started or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if not resp.started or "failed" in resp.message:
                raise RuntimeError(f"shard {sp.address}: {resp.message}")
            st = stub.Stats(shard_pb2.StatsRequest(), timeout=30)
            types.append(f"{st.index_type} ({st.entries} entries)")
        return types

    def shard_spec(self) -> str:
        r = self.opts.replicas
        groups = [self.shards[s * r : (s + 1) * r] for s in range(self.opts.shards)]
        return ";".join(",".join(p.address for p in g) for g in groups)

    def endpoints(self) -> dict[str, str]:
        out = {} if self.gateway is None else {
            "gateway": self.gateway.address,
            "gateway_metrics": self.gateway.metrics_url,
        }
        out |= {
            "triton_grpc": self.triton.grpc_url,
            "triton_metrics": f"http://127.0.0.1:{self.triton.metrics_port}/metrics",
            "shards": self.shard_spec(),
            "shard_metrics": ",".join(self.shard_metrics_urls()),
        }
        return out

    def shard_metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{sp.metrics_port}/metrics" for sp in self.shards]

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()  # nothing is restarted while the stack stops on purpose
        if self.gateway is not None:
            self.gateway.stop()
        for sp in self.shards:
            sp.stop()
        if self.triton is not None:
            self.triton.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="start Triton + shards + gateway on loopback until Ctrl-C")
    _stack_args(p, default_port=50051)
    p.add_argument("--run-dir", default="run/stack", help="data and logs (shard data persists here)")
    p.set_defaults(func=cmd_up)

    p = subparsers.add_parser("demo", help="quickstart: start the stack, index a sample catalog, query, stop")
    _stack_args(p, default_port=0)
    p.add_argument(
        "--manifest", default=str(DEFAULT_MANIFEST), help="catalog manifest CSV (image,label,split)"
    )
    p.add_argument("--per-label", type=int, default=4, help="catalog photos indexed per label (0 = all)")
    p.add_argument("--queries", type=int, default=3, help="query-split photos searched")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def _stack_args(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument("--shards", type=int, default=2, help="search shards (items are spread by id hash)")
    p.add_argument(
        "--replicas", type=int, default=1, help="replicas per shard (queries are hedged across them)"
    )
    p.add_argument("--port", type=int, default=default_port, help="gateway port (0 = free port)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "int8"),
        help="model precision; auto = per model, INT8 only where it passed its quality gate (manifest)",
    )


def cmd_up(args: argparse.Namespace) -> int:
    opts = StackOptions(Path(args.run_dir), args.shards, args.replicas, args.port, args.precision)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    with sigterm_as_interrupt():
        try:
            with Stack(opts) as stack:
                print(f"stack ready in {time.monotonic() - t0:.1f}s (model {stack.model_version})")
                for name, ep in stack.endpoints().items():
                    print(f"  {name:<16} {ep}")
                print(f"try: vsearch detect tests/data/bus.jpg --gateway {stack.gateway.address}", flush=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0


def _sample_catalog(manifest: Path, per_label: int, n_queries: int, seed: int) -> tuple[list, list]:
    from visual_search.client_cli import iter_source

    catalog = list(iter_source(manifest, "catalog"))
    queries = list(iter_source(manifest, "query"))
    if per_label:
        seen: dict[str, int] = {}
        picked = []
        for row in catalog:
            if seen.get(row[2], 0) < per_label:
                seen[row[2]] = seen.get(row[2], 0) + 1
                picked.append(row)
        catalog = picked
    rng = random.Random(seed)
    by_label: dict[str, list] = {}
    for q in queries:
        by_label.setdefault(q[2], []).append(q)
    labels = sorted(by_label)
    rng.shuffle(labels)
    return catalog, [rng.choice(by_label[lbl]) for lbl in labels[:n_queries]]


def cmd_demo(args: argparse.Namespace) -> int:
    from visual_search.client import Client, IndexItem
    from visual_search.client_cli import format_result_table

    manifest = Path(args.manifest)
    if not manifest.exists():
        raise SystemExit(f"{manifest} not found (the shared data lives at <repo>/../shared)")
    catalog, queries = _sample_catalog(manifest, args.per_label, args.queries, args.seed)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vsearch-demo-") as tmp, sigterm_as_interrupt():
        opts = StackOptions(Path(tmp), args.shards, args.replicas, args.port, args.precision)
        print(
            f"== starting tritonserver (CPU), {args.shards} search shards and the gateway on loopback "
            "(a few seconds; up to ~30 s on a busy machine) ...",
            flush=True,
        )
        with Stack(opts) as stack:
            print(f"== stack up in {time.monotonic() - t0:.1f}s: model {stack.model_version}")
            for name, ep in stack.endpoints().items():
                print(f"   {name:<16} {ep}")
            with Client(stack.gateway.address, timeout=120) as c:
                t1 = time.monotonic()
                print(f"== indexing {len(catalog)} catalog photos from {manifest} ...", flush=True)
                items = (
                    IndexItem(i, p.read_bytes(), category=lbl, price=1.0 + (len(i) % 9))
                    for i, p, lbl in catalog
                )
                results = []
                for r in c.index(items):
                    results.append(r)
                    if len(results) % 10 == 0:
                        print(f"   {len(results)}/{len(catalog)} indexed", flush=True)
                bad = [r for r in results if not r.ok]
                entries = sum(r.entries for r in results)
                dt = time.monotonic() - t1
                print(
                    f"== indexed {len(results) - len(bad)}/{len(catalog)} catalog photos ({entries} entries: "
                    f"objects + whole images) in {dt:.1f}s ({len(catalog) / dt:.1f} items/s)"
                )
                for r in bad[:5]:
                    print(f"   failed {r.item_id}: {r.error_code} {r.error}")
                hits_at_5 = 0
                for _item_id, path, label in queries:
                    res = c.search(image=path.read_bytes(), k=5)
                    ok = any(h.category == label for h in res.hits)
                    hits_at_5 += ok
                    print(f"\n== query photo {path.name} (product {label}); same product in top 5: {ok}")
                    print(format_result_table(res))
                copy_id, copy_path, _ = catalog[len(catalog) // 2]
                res = c.search(image=copy_path.read_bytes(), k=3)
                print(
                    f"\n== exact copy of catalog photo {copy_id}: first hit {res.hits[0].item_id} "
                    f"exact_match={res.hits[0].exact_match}"
                )
                bus = REPO_ROOT / "tests" / "data" / "bus.jpg"
                det = c.detect(bus.read_bytes())
                print(f"\n== detect {bus.name}: {det.width}x{det.height}")
                for d in det.detections:
                    mark = "  <- default (most salient: confidence x area)" if d.is_default else ""
                    print(f"   #{d.index} {d.class_name:<10} score {d.score:.2f} box {d.box}{mark}")
                res = c.search(image=bus.read_bytes(), all_objects=True, k=3)
                print(f"\n== {bus.name} searched per object (all_objects): {len(res.lists)} result lists")
                print(format_result_table(res))
                print(f"\n== {hits_at_5}/{len(queries)} query photos found their product in the top 5")
    print(f"== demo done in {time.monotonic() - t0:.1f}s; stack stopped")
    return 0
