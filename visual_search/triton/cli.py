"""`vsearch triton ...`: generate a model repository, or run tritonserver on one until Ctrl-C.

Argument parsing only: the generator (repository.py) and the launcher (server.py) are imported
when a command runs, so `vsearch --help` stays fast.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def _options(args: argparse.Namespace) -> Any:
    from visual_search.triton.repository import ORT_THREADS, PYTHON_INSTANCES, Options

    return Options(
        flavour=args.flavour,
        precision=args.precision,
        batching=not args.no_batching,
        gpu_backend=getattr(args, "gpu_backend", "onnxruntime"),
        detector_path=args.detector,
        encoder_path=args.encoder,
        copy_weights=getattr(args, "copy_weights", False),
        ort_threads=args.ort_threads or ORT_THREADS,
        onnx_instances=args.onnx_instances,
        max_queue_delay_us=args.max_queue_delay_us,
        python_instances=args.python_instances or PYTHON_INSTANCES,
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.add_argument("--no-batching", action="store_true", help="no dynamic batching (benchmark baseline)")
    p.add_argument("--detector", type=Path, help="detector ONNX (default artifacts/models/detector_<p>.onnx)")
    p.add_argument("--encoder", type=Path, help="encoder ONNX (default artifacts/models/encoder_<p>.onnx)")
    # Tuning knobs measured by `vsearch bench triton-grid`; the defaults are the committed configs.
    p.add_argument("--ort-threads", type=_positive, help="onnxruntime intra-op threads (cpu; default 1)")
    p.add_argument("--onnx-instances", type=_positive, help="detector/encoder instances (default: BATCHING)")
    p.add_argument(
        "--max-queue-delay-us", type=_non_negative, help="dynamic batcher delay (default: BATCHING)"
    )
    p.add_argument("--python-instances", type=_positive, help="pre/post python model instances (default 2)")


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{v} is not >= 1")
    return n


def _non_negative(v: str) -> int:
    n = int(v)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{v} is not >= 0")
    return n


def add_generate_args(p: argparse.ArgumentParser) -> None:
    """The generator's flags (`vsearch triton generate`, and the `python -m ensemble.generate` shim)."""
    _add_model_args(p)
    p.add_argument("--flavour", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--gpu-backend", choices=["onnxruntime", "tensorrt"], default="onnxruntime")
    p.add_argument("--copy-weights", action="store_true", help="copy weights instead of symlinking")
    p.add_argument("--configs-only", action="store_true", help="write config.pbtxt files only")


def _serve(args: argparse.Namespace) -> int:
    from visual_search.triton.server import TritonServer

    args.flavour = "cpu"
    server = TritonServer(
        options=_options(args),
        run_dir=args.run_dir,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(
            f"tritonserver ready: grpc {server.grpc_url}  http {server.http_url}  "
            f"metrics :{server.metrics_port}/metrics  log {server.log_path}",
            file=sys.stderr,
        )
        try:
            while not stop.wait(1.0):
                if server.proc is not None and server.proc.poll() is not None:
                    print(f"tritonserver exited:\n{server.log_tail()}", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
    return 0


def generate(args: argparse.Namespace) -> int:
    """Write the repository the parsed generate flags describe."""
    from visual_search.triton.repository import write_repository

    configs = write_repository(_options(args), args.out, configs_only=args.configs_only)
    print(f"wrote {len(configs)} models to {args.out}", file=sys.stderr)
    return 0


def generate_main(argv: Sequence[str] | None = None, prog: str = "vsearch triton generate") -> int:
    """The generator as a stand-alone command (the `python -m ensemble.generate` shim calls this)."""
    p = argparse.ArgumentParser(prog=prog, description="write a Triton model repository (CPU or GPU flavour)")
    add_generate_args(p)
    return generate(p.parse_args(argv))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("triton", help="Triton model repository and server (CPU flavour here)")
    sub = p.add_subparsers(dest="triton_command", required=True)
    s = sub.add_parser("serve", help="generate the CPU repository and run tritonserver until Ctrl-C")
    _add_model_args(s)
    s.add_argument("--run-dir", type=Path, default=REPO_ROOT / "run" / "triton")
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.set_defaults(func=_serve)
    g = sub.add_parser(
        "generate", help="write a model repository (configs, python models, weights) from the contract"
    )
    add_generate_args(g)
    g.set_defaults(func=generate)
