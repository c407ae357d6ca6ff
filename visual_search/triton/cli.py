"""`vsearch triton ...`: generate a model repository, or run tritonserver on one until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from visual_search.triton.server import REPO_ROOT


def _options(args: argparse.Namespace) -> Any:
    from ensemble.generate import Options

    return Options(
        flavour=args.flavour,
        precision=args.precision,
        batching=not args.no_batching,
        detector_path=args.detector,
        encoder_path=args.encoder,
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.add_argument("--no-batching", action="store_true", help="no dynamic batching (baseline)")
    p.add_argument("--detector", type=Path, help="detector ONNX (default artifacts/models/detector_<p>.onnx)")
    p.add_argument("--encoder", type=Path, help="encoder ONNX (default artifacts/models/encoder_<p>.onnx)")


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


def _generate(args: argparse.Namespace) -> int:
    from ensemble.generate import main

    argv = ["--flavour", args.flavour, "--precision", args.precision, "--out", str(args.out)]
    argv += ["--no-batching"] if args.no_batching else []
    argv += ["--configs-only"] if args.configs_only else []
    argv += ["--detector", str(args.detector)] if args.detector else []
    argv += ["--encoder", str(args.encoder)] if args.encoder else []
    return main(argv)


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
    g = sub.add_parser("generate", help="write a model repository (python -m ensemble.generate)")
    _add_model_args(g)
    g.add_argument("--flavour", choices=["cpu", "gpu"], default="cpu")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--configs-only", action="store_true")
    g.set_defaults(func=_generate)
