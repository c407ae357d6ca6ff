"""`vsearch adapt`: fit the encoder to the user's own catalog (no labels) and export a new model.

Training and ONNX export need torch, which lives in the export environment (.venv-export, installed
by scripts/install_export.sh) and not in the serving one, so this command runs `python -m export.adapt`
there ($VSEARCH_EXPORT_PYTHON overrides the interpreter) and passes its arguments through.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def export_python() -> str:
    """The export environment's interpreter; SystemExit with the install hint when it is missing."""
    py = os.environ.get("VSEARCH_EXPORT_PYTHON") or str(REPO / ".venv-export" / "bin" / "python")
    if not Path(py).exists():
        raise SystemExit(f"{py} not found: run `bash scripts/install_export.sh` (torch, ~5.5 GB) "
                         "or set VSEARCH_EXPORT_PYTHON")
    return py


def run_export_module(module: str, argv: list[str]) -> int:
    """Run `python -m module argv...` in the export environment from the repo root."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.call([export_python(), "-m", module, *argv], cwd=REPO, env=env)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "adapt", help="fit the encoder's head to a catalog (no labels); export FP32 + gated INT8 + manifest",
        description="Self-supervised adaptation of the projection head to one catalog; prints the "
                    "commands that serve the new model version and cut the catalog over to it.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest",
                     help="catalog manifest.csv (shared format; only split=catalog rows; labels ignored)")
    src.add_argument("--folder", help="folder of catalog photos")
    p.add_argument("--out", default="run/adapted-model", help="output model directory")
    p.add_argument("--steps", type=int, help="head training steps (default: the export recipe's)")
    p.add_argument("--max-photos", type=int, help="photos used, evenly spaced (default 1000)")
    p.add_argument("--base", help="model directory to adapt from (default artifacts/models)")
    p.add_argument("--skip-int8", action="store_true", help="FP32 only")
    srv = p.add_argument_group("serve the adapted model (one command from catalog to serving)")
    srv.add_argument("--serve", action="store_true",
                     help="then start Triton + shards + gateway on loopback with the adapted model, index "
                     "the catalog's photos into it (progress, estimate) and serve until Ctrl-C")
    srv.add_argument("--serve-run-dir", default="run/adapted-stack", help="shard data and logs")
    srv.add_argument("--serve-shards", type=int, default=2)
    srv.add_argument("--serve-port", type=int, default=0, help="gateway port (0 = a free port)")
    srv.add_argument("--serve-max-items", type=int, default=0, help="index at most this many photos")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    argv: list[str] = []
    for name in ("manifest", "folder", "out", "base"):
        v = getattr(args, name)
        if v:
            argv += [f"--{name}", str(Path(v).resolve())]
    for name in ("steps", "max_photos"):
        v = getattr(args, name)
        if v is not None:
            argv += [f"--{name.replace('_', '-')}", str(v)]
    if args.skip_int8:
        argv.append("--skip-int8")
    rc = run_export_module("export.adapt", argv)
    if rc != 0 or not args.serve:
        return rc
    from visual_search.adapt_serve import ServeOptions, serve

    return serve(ServeOptions(
        model_dir=Path(args.out).resolve(), source=Path(args.manifest or args.folder).resolve(),
        run_dir=Path(args.serve_run_dir), shards=args.serve_shards, port=args.serve_port,
        max_items=args.serve_max_items,
    ))


if __name__ == "__main__":
    sys.exit(run_export_module("export.adapt", sys.argv[1:]))
