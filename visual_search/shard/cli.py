"""`vsearch shard`: run one search shard process; `vsearch shard repair`: repair its replicas now."""

from __future__ import annotations

import argparse
import json
import os

from visual_search import contract

# A light module (no FAISS/numpy): the tunables' defaults are written once, in these dataclasses.
from visual_search.shard.config import EngineConfig, IndexConfig

_MB = 1024 * 1024


_REQUIRED = ("data_dir", "port", "shard_id")  # to run a shard (not for `repair`)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "shard", help="run a search shard (gRPC); `vsearch shard repair` repairs replicas"
    )
    add_arguments(p)
    p.set_defaults(func=_run, parser=p)
    sub = p.add_subparsers(dest="shard_command", metavar="{repair}")
    r = sub.add_parser(
        "repair",
        help="one repair round now on every replica of a shard (each pulls what it misses from its "
        "--peers), then compare their digests",
    )
    r.add_argument("replicas", nargs="+", help="host:port of the replicas (all of one shard)")
    r.add_argument(
        "--token-file", default=None, help="shard token file (else env VSEARCH_SHARD_TOKEN[_FILE])"
    )
    r.add_argument("--timeout", type=float, default=600.0, help="seconds per replica's repair round")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_repair)


def add_arguments(p: argparse.ArgumentParser) -> None:
    # required to run a shard; checked in _run so that `vsearch shard repair` does not need them
    p.add_argument("--data-dir", help="shard data directory (created if missing) [required]")
    p.add_argument("--port", type=int, help="[required]")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="gRPC and metrics bind address (loopback by default; 0.0.0.0 in pods)",
    )
    p.add_argument("--shard-id", type=int, help="[required]")
    p.add_argument(
        "--model-version",
        help="embedding model version this shard serves (default: the data dir's stamp, else "
        "Triton's encoder version from --triton)",
    )
    p.add_argument(
        "--triton",
        default=os.environ.get("VSEARCH_TRITON"),
        help="Triton gRPC host:port; a fresh data dir is stamped with the encoder version Triton "
        "serves (one version truth) [env]",
    )
    p.add_argument(
        "--triton-wait", type=float, default=900.0, help="seconds to wait for Triton's encoder version"
    )
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
    p.add_argument("--pq-m", type=int, default=IndexConfig.pq_m)
    p.add_argument(
        "--pq-bits", type=int, default=IndexConfig.pq_bits, choices=(4, 8),
        help="8 = PQ32 (R11), 4 = fast-scan",
    )
    p.add_argument("--nlist", type=int, default=IndexConfig.nlist, help="IVF lists (0 = from data size)")
    p.add_argument("--pca-dim", type=int, default=IndexConfig.pca_dim,
                   help="IVF-PQ on a PCA to this many dims when vectors are wider (0 = off)")
    p.add_argument("--nprobe", type=int, default=IndexConfig.default_nprobe, help="default nprobe")
    p.add_argument(
        "--rescore-k", type=int, default=EngineConfig.default_rescore_k, help="default re-scored candidates"
    )
    p.add_argument(
        "--train-threshold", type=int, default=IndexConfig.train_threshold,
        help="entries before IVF-PQ is trained",
    )
    p.add_argument(
        "--snapshot-interval", type=float, default=EngineConfig.snapshot_interval_s,
        help="seconds between snapshots",
    )
    p.add_argument(
        "--snapshot-wal-mb", type=float, default=EngineConfig.snapshot_wal_bytes / _MB,
        help="snapshot when the WAL exceeds this",
    )
    p.add_argument("--policy-interval", type=float, default=EngineConfig.policy_interval_s)
    p.add_argument("--tombstone-ratio", type=float, default=EngineConfig.tombstone_ratio)
    p.add_argument("--grace", type=float, default=10.0, help="seconds to drain RPCs on SIGTERM")
    p.add_argument("--no-gpu", action="store_true", help="never use a GPU index")
    p.add_argument(
        "--peers",
        default=os.environ.get("VSEARCH_SHARD_PEERS", ""),
        help="host:port,... of the replicas of this shard (this one may be listed too): NOT_SERVING "
        "until caught up with them, then pull what is missing in the background (shard README "
        "'Replicas') [env]",
    )
    p.add_argument("--repair-interval", type=float, default=10.0, help="seconds between anti-entropy rounds")
    p.add_argument(
        "--repair-rate", type=float, default=2000.0, help="items/s at most applied by background repair"
    )
    p.add_argument(
        "--peer-wait",
        type=float,
        default=60.0,
        help="with no peer answering, a replica holding data serves after this many seconds "
        "(an empty one keeps waiting)",
    )
    p.add_argument(
        "--token-file",
        default=None,
        help="file holding the shard token every SearchShard call must carry (a mounted Secret); "
        "else env VSEARCH_SHARD_TOKEN_FILE or VSEARCH_SHARD_TOKEN (never pass the token on argv)",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="run WITHOUT a shard token: anyone reaching the port can write and delete. Only allowed "
        "with a loopback --host; logged loudly",
    )
    p.add_argument("--log-level", default="INFO")


def _run(args: argparse.Namespace) -> int:
    missing = [f"--{k.replace('_', '-')}" for k in _REQUIRED if getattr(args, k) is None]
    if missing:
        args.parser.error(f"the following arguments are required: {', '.join(missing)}")
    # Before FAISS/OpenMP load: spinning OpenMP workers waste shared cores (measured 8x slower
    # PQ training on an oversubscribed 2-core machine).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from visual_search.shard.server import serve

    return serve(args)


def _repair(args: argparse.Namespace) -> int:
    import grpc

    from visual_search.shard.auth import load_token
    from visual_search.shard.replication import repair_replicas

    try:
        report = repair_replicas(args.replicas, token=load_token(args.token_file), timeout=args.timeout)
    except grpc.RpcError as exc:
        print(f"vsearch shard repair: {exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
        return 1
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for r in report["replicas"]:
            print(
                f"{r['address']:<22} items {r['items']:>9}  delete markers {r['delete_markers']:>7}  "
                f"copied {r['items_copied']:>7}  caught_up {r['caught_up']!s:<5}  digest {r['digest']:016x}"
            )
        print("in sync" if report["in_sync"] else "NOT in sync (writes in flight? run it again)")
    return 0 if report["in_sync"] else 1
