"""`vsearch shard`: run one search shard process."""

from __future__ import annotations

import argparse
import os

from visual_search import contract

_MB = 1024 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("shard", help="run a search shard (gRPC)")
    add_arguments(p)
    p.set_defaults(func=_run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="shard data directory (created if missing)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--shard-id", type=int, required=True)
    p.add_argument("--model-version", required=True, help="embedding model version this shard serves")
    p.add_argument("--dim", type=int, default=contract.EMBEDDING_DIM)
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (0 = off)")
    p.add_argument("--workers", type=int, default=8, help="gRPC handler threads")
    p.add_argument("--faiss-threads", type=int, default=0, help="OpenMP threads for FAISS (0 = default)")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="threads for numpy's BLAS (per-query re-scoring; idle OpenBLAS workers spin: keep 1; "
        "0 = library default)",
    )
    p.add_argument("--pq-m", type=int, default=32)
    p.add_argument("--pq-bits", type=int, default=8, choices=(4, 8), help="8 = PQ32 (R11), 4 = fast-scan")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (0 = from data size)")
    p.add_argument("--nprobe", type=int, default=32, help="default nprobe")
    p.add_argument("--rescore-k", type=int, default=1000, help="default re-scored candidates")
    p.add_argument("--train-threshold", type=int, default=20_000, help="entries before IVF-PQ is trained")
    p.add_argument("--snapshot-interval", type=float, default=300.0, help="seconds between snapshots")
    p.add_argument("--snapshot-wal-mb", type=float, default=256.0, help="snapshot when the WAL exceeds this")
    p.add_argument("--policy-interval", type=float, default=2.0)
    p.add_argument("--tombstone-ratio", type=float, default=0.25)
    p.add_argument("--grace", type=float, default=10.0, help="seconds to drain RPCs on SIGTERM")
    p.add_argument("--no-gpu", action="store_true", help="never use a GPU index")
    p.add_argument("--log-level", default="INFO")


def _run(args: argparse.Namespace) -> int:
    # Before FAISS/OpenMP load: spinning OpenMP workers waste shared cores (measured 8x slower
    # PQ training on an oversubscribed 2-core machine).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from visual_search.shard.server import serve

    return serve(args)
