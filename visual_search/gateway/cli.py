"""`vsearch gateway`: run the public API server (flags; secrets may come from the environment)."""

from __future__ import annotations

import argparse
import os

# A light module (no grpc/numpy): the flags' defaults are GatewayConfig's, written once there.
from visual_search.gateway.config import QUERY_STRATEGIES, WRITE_QUORUMS, GatewayConfig, ShardMap

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
    p.add_argument("--close-match-threshold", type=float,
                   default=_optional_float(env("VSEARCH_CLOSE_MATCH_THRESHOLD")),
                   help="score a hit needs to be a 'close match' (default: the served model version's "
                   "calibrated value from `vsearch calibrate`; 0 = off) [env]")
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
                   help="require 'authorization: Bearer <token>' on admin calls; the admin port refuses "
                   "to start without one [env VSEARCH_ADMIN_TOKEN]")
    p.add_argument("--insecure-admin", action="store_true",
                   help="run the admin port WITHOUT a token (anyone local may switch models): only on a "
                   "loopback --admin-host; logged as a warning")
    p.add_argument("--shard-token-file", default=env("VSEARCH_SHARD_TOKEN_FILE"),
                   help="file holding the token sent on every shard call (else env VSEARCH_SHARD_TOKEN)")
    p.add_argument("--generation-file", default=env("VSEARCH_GENERATION_FILE"),
                   help="persist the active/previous generation here; a restart resumes them [env]")
    p.add_argument("--generation-source", default=env("VSEARCH_GENERATION_SOURCE"),
                   help="JSON file naming the generation every gateway pod serves (the chart mounts a "
                   "ConfigMap; `vsearch cutover publish` writes it); polled, switched to on change [env]")
    p.add_argument("--generation-poll", type=float, default=D.generation_poll_s,
                   help="seconds between polls of --generation-source")
    p.add_argument("--version-check-interval", type=float, default=D.version_check_s,
                   help="seconds between checks that Triton's encoder version equals every shard's "
                   "stamp (a mismatch -> NOT_SERVING); 0 = check at start only")
    p.add_argument("--version-wait", type=float, default=D.version_wait_s,
                   help="seconds start-up waits for Triton (or the shards) to report the model version")
    p.add_argument("--query-strategy", default=env("VSEARCH_QUERY_STRATEGY") or D.query_strategy,
                   choices=QUERY_STRATEGIES,
                   help="default photo queries (no box chosen): 'max' searches the default box and the "
                   "whole image in one request, each item scored by the better of the two (one more "
                   "encoder run per query); 'default-box' the box alone, the cheaper one (default max) "
                   "[env]")
    p.add_argument(
        "--two-call-default-box", action="store_true",
        help="default-box queries call Triton twice (detect, then embed) - the benchmark's old baseline; "
        "implies --query-strategy default-box",
    )
    p.add_argument("--cpu-workers", type=int, default=D.cpu_workers,
                   help="threads decoding / hashing photos off the event loop")
    p.add_argument("--cpu-max-pending", type=int, default=D.cpu_max_pending,
                   help="photos being decoded or waiting at once; more get RESOURCE_EXHAUSTED")
    p.add_argument("--cpu-inline", action="store_true",
                   help="decode photos on the event loop (the old behaviour; benchmark baseline only)")
    p.add_argument("--triton-health-interval", type=float, default=D.triton_health_interval_s,
                   help="seconds between Triton readiness checks (photo-queries health name)")
    p.add_argument("--log-level", default="INFO")


def _optional_float(s: str | None) -> float | None:
    return float(s) if s else None


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    from visual_search.shard.auth import load_token

    return GatewayConfig(
        shard_map=ShardMap.parse(args.shards), host=args.host, port=args.port, metrics_port=args.metrics_port,
        triton_url=args.triton or None, model_version=args.model_version or None,
        hedge_delay_ms=args.hedge_delay_ms, hedge_adaptive=not args.no_adaptive_hedge,
        default_deadline_s=args.default_deadline, shard_budget_ms=args.shard_budget_ms,
        shard_budget_factor=args.shard_budget_factor, shard_budget_min_ms=args.shard_budget_min_ms,
        shard_budget_max_ms=args.shard_budget_max_ms, boost_available=args.boost_available,
        boost_region=args.boost_region, dedup_threshold=args.dedup_threshold,
        close_match_threshold=args.close_match_threshold,
        index_concurrency=args.index_concurrency, index_triton_concurrency=args.index_triton_concurrency,
        index_upsert_batch=args.index_upsert_batch, write_quorum=args.write_quorum,
        auth_token=args.auth_token or None,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
        max_message_bytes=int(args.max_message_mb * _MB),
        admin_host=args.admin_host, admin_port=args.admin_port, admin_token=args.admin_token or None,
        insecure_admin=args.insecure_admin, shard_token=load_token(args.shard_token_file),
        generation_file=args.generation_file or None,
        single_call_default_box=not args.two_call_default_box,
        query_strategy="default-box" if args.two_call_default_box else args.query_strategy,
        triton_health_interval_s=args.triton_health_interval, cpu_workers=args.cpu_workers,
        cpu_max_pending=args.cpu_max_pending, cpu_inline=args.cpu_inline,
        version_check_s=args.version_check_interval, version_wait_s=args.version_wait,
        generation_source=args.generation_source or None, generation_poll_s=args.generation_poll,
    )


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from visual_search import logs
    from visual_search.calibration import CalibrationError
    from visual_search.gateway.server import StartRefused, run_until_signalled
    from visual_search.shard.auth import TokenError

    logs.setup("gateway", args.log_level)  # one JSON object per line (visual_search/logs.py)
    try:
        asyncio.run(run_until_signalled(config_from_args(args)))
    except (StartRefused, TokenError, CalibrationError) as e:
        import logging

        logging.getLogger("visual_search.gateway").error("refusing to start: %s", e)
        print(f"vsearch gateway: refusing to start: {e}", flush=True)
        return 2
    return 0
