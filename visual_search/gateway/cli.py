"""`vsearch gateway`: run the public API server (flags; secrets may come from the environment)."""

from __future__ import annotations

import argparse
import os

# A light module (no grpc/numpy): the flags' defaults are GatewayConfig's, written once there.
from visual_search.gateway.config import WRITE_QUORUMS, GatewayConfig, ShardMap

D = GatewayConfig  # class attributes = the dataclass defaults
_MB = 1024 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("gateway", help="run the public gRPC gateway")
    add_arguments(p)
    p.set_defaults(func=_run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument(
        "--shards", default=env("VSEARCH_SHARDS"), required=not env("VSEARCH_SHARDS"),
        help="shard map 'h:p,h:p;h:p' (';' between shards, ',' between replicas) or a JSON file "
        "[env VSEARCH_SHARDS]",
    )
    p.add_argument("--host", default=D.host)
    p.add_argument("--port", type=int, default=D.port, help="0 = pick a free port (printed)")
    p.add_argument("--metrics-port", type=int, default=D.metrics_port,
                   help="Prometheus /metrics port (0 = off)")
    p.add_argument("--triton", default=env("VSEARCH_TRITON"), help="Triton gRPC host:port [env]")
    p.add_argument("--model-version", default=env("VSEARCH_MODEL_VERSION"),
                   help="served model version (default: from Triton, else from the shards)")
    p.add_argument("--hedge-delay-ms", type=float, default=D.hedge_delay_ms)
    p.add_argument("--no-adaptive-hedge", action="store_true", help="always hedge after --hedge-delay-ms")
    p.add_argument("--shard-budget-ms", type=float, default=D.shard_budget_ms,
                   help="per-shard time budget of a search; 0 = adaptive (factor x recent p99, "
                   "within min..max)")
    p.add_argument("--shard-budget-factor", type=float, default=D.shard_budget_factor)
    p.add_argument("--shard-budget-min-ms", type=float, default=D.shard_budget_min_ms)
    p.add_argument("--shard-budget-max-ms", type=float, default=D.shard_budget_max_ms,
                   help="cap of the adaptive budget")
    p.add_argument("--default-deadline", type=float, default=D.default_deadline_s,
                   help="seconds, when the caller sets none")
    p.add_argument("--boost-available", type=float, default=D.boost_available)
    p.add_argument("--boost-region", type=float, default=D.boost_region)
    p.add_argument("--dedup-threshold", type=float, default=D.dedup_threshold)
    p.add_argument("--index-concurrency", type=int, default=D.index_concurrency,
                   help="IndexItems: items in flight per stream")
    p.add_argument("--index-triton-concurrency", type=int, default=D.index_triton_concurrency,
                   help="IndexItems: items on Triton at once (its dynamic batcher batches across them)")
    p.add_argument("--index-upsert-batch", type=int, default=D.index_upsert_batch,
                   help="IndexItems: items per shard Upsert (group commit); 1 = one item per shard call")
    p.add_argument("--write-quorum", default=env("VSEARCH_WRITE_QUORUM") or D.write_quorum,
                   choices=WRITE_QUORUMS,
                   help="replicas of a shard that must apply a write before it is acknowledged; fewer "
                   "than all is reported and repaired by the shards (default majority) [env]")
    p.add_argument("--auth-token", default=env("VSEARCH_AUTH_TOKEN"),
                   help="require 'authorization: Bearer <token>' [env VSEARCH_AUTH_TOKEN]")
    p.add_argument("--tls-cert", default=env("VSEARCH_TLS_CERT"))
    p.add_argument("--tls-key", default=env("VSEARCH_TLS_KEY"))
    p.add_argument("--max-message-mb", type=float, default=D.max_message_bytes / _MB)
    p.add_argument("--admin-port", type=int, default=int(env("VSEARCH_ADMIN_PORT") or D.admin_port),
                   help="admin gRPC port (model switch/rollback, admin.proto); 0 = off [env]")
    p.add_argument("--admin-host", default=D.admin_host, help="admin listener address (keep it private)")
    p.add_argument("--admin-token", default=env("VSEARCH_ADMIN_TOKEN"),
                   help="require 'authorization: Bearer <token>' on admin calls [env VSEARCH_ADMIN_TOKEN]")
    p.add_argument("--generation-file", default=env("VSEARCH_GENERATION_FILE"),
                   help="persist the active/previous generation here; a restart resumes them [env]")
    p.add_argument(
        "--two-call-default-box", action="store_true",
        help="default-box queries call Triton twice (detect, then embed) - the benchmark's old baseline",
    )
    p.add_argument("--log-level", default="INFO")


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    return GatewayConfig(
        shard_map=ShardMap.parse(args.shards), host=args.host, port=args.port, metrics_port=args.metrics_port,
        triton_url=args.triton or None, model_version=args.model_version or None,
        hedge_delay_ms=args.hedge_delay_ms, hedge_adaptive=not args.no_adaptive_hedge,
        default_deadline_s=args.default_deadline, shard_budget_ms=args.shard_budget_ms,
        shard_budget_factor=args.shard_budget_factor, shard_budget_min_ms=args.shard_budget_min_ms,
        shard_budget_max_ms=args.shard_budget_max_ms, boost_available=args.boost_available,
        boost_region=args.boost_region, dedup_threshold=args.dedup_threshold,
        index_concurrency=args.index_concurrency, index_triton_concurrency=args.index_triton_concurrency,
        index_upsert_batch=args.index_upsert_batch, write_quorum=args.write_quorum,
        auth_token=args.auth_token or None,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
        max_message_bytes=int(args.max_message_mb * _MB),
        admin_host=args.admin_host, admin_port=args.admin_port, admin_token=args.admin_token or None,
        generation_file=args.generation_file or None,
        single_call_default_box=not args.two_call_default_box,
    )


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from visual_search.gateway.server import run_until_signalled

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run_until_signalled(config_from_args(args)))
    return 0
