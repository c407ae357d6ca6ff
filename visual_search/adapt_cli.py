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
    cut = p.add_argument_group("cut a live gateway over to the adapted model (one command)")
    cut.add_argument("--cutover", action="store_true",
                     help="then start the adapted Triton + fresh shards and run `vsearch cutover run` "
                     "against the live gateway (re-embed the catalog, canary, switch); keep them up")
    cut.add_argument("--admin", default=os.environ.get("VSEARCH_ADMIN"),
                     help="live gateway's admin host:port [env VSEARCH_ADMIN]")
    cut.add_argument("--admin-token", default=os.environ.get("VSEARCH_ADMIN_TOKEN"),
                     help="[env VSEARCH_ADMIN_TOKEN]")
    cut.add_argument("--gateway", help="live public address: canary again after the switch (auto-rollback)")
    cut.add_argument("--token", default=os.environ.get("VSEARCH_AUTH_TOKEN"), help="public API token [env]")
    cut.add_argument("--probes", help="canary probe set (`vsearch canary build`; `--expect labels` sets do "
                     "not depend on the old model's answers)")
    cut.add_argument("--min-recall", type=float, default=0.9, help="canary recall the new model must reach")
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
    if args.serve and args.cutover:
        raise SystemExit("vsearch adapt: --serve (a new local stack) or --cutover (a live gateway), not both")
    if args.cutover and not (args.admin and args.probes):
        raise SystemExit("vsearch adapt --cutover needs --admin (the live gateway's admin port) and --probes")
    rc = run_export_module("export.adapt", argv)
    if rc != 0 or not (args.serve or args.cutover):
        return rc
    from visual_search.adapt_serve import CutoverOptions, ServeOptions, cutover_live, serve

    if args.cutover:
        return cutover_live(CutoverOptions(
            model_dir=Path(args.out).resolve(), source=Path(args.manifest or args.folder).resolve(),
            run_dir=Path(args.serve_run_dir), admin=args.admin, probes=Path(args.probes),
            admin_token=args.admin_token, gateway=args.gateway, gateway_token=args.token,
            min_recall=args.min_recall,
        ))

    return serve(ServeOptions(
        model_dir=Path(args.out).resolve(), source=Path(args.manifest or args.folder).resolve(),
        run_dir=Path(args.serve_run_dir), shards=args.serve_shards, port=args.serve_port,
        max_items=args.serve_max_items,
    ))


if __name__ == "__main__":
    sys.exit(run_export_module("export.adapt", sys.argv[1:]))
