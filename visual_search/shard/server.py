"""Shard process: engine + gRPC (SearchShard, health, reflection) + metrics + signals.

With `--peers` the replica starts NOT_SERVING and turns SERVING once it has caught up with its
peers (replication.py); it then keeps pulling what it misses in the background.

SIGTERM/SIGINT: health -> NOT_SERVING, stop accepting, drain in-flight RPCs (grace period),
stop background work, write a final snapshot, exit 0. SIGKILL is survived by WAL replay.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from concurrent import futures
from pathlib import Path

import faiss
import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from visual_search import logs
from visual_search.shard import auth, version
from visual_search.shard.engine import EngineConfig, ShardEngine, StampMismatch
from visual_search.shard.index import IndexConfig
from visual_search.shard.metrics import ShardMetrics
from visual_search.shard.replication import Replicator
from visual_search.shard.service import ShardServicer
from visual_search.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger("visual_search.shard")
SERVICE_NAME = shard_pb2.DESCRIPTOR.services_by_name["SearchShard"].full_name
# Health service name that is SERVING while the process runs, caught up or not: for liveness and
# startup probes (readiness uses "", which waits for catch-up).
PROCESS_HEALTH = "process"
_MB = 1024 * 1024


def config_from_args(a: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        index=IndexConfig(
            pq_m=a.pq_m,
            pq_bits=a.pq_bits,
            train_threshold=a.train_threshold,
            nlist=a.nlist,
            default_nprobe=a.nprobe,
            pca_dim=a.pca_dim,
            use_gpu=not a.no_gpu,
        ),
        default_rescore_k=a.rescore_k,
        snapshot_interval_s=a.snapshot_interval,
        snapshot_wal_bytes=int(a.snapshot_wal_mb * _MB),
        policy_interval_s=a.policy_interval,
        tombstone_ratio=a.tombstone_ratio,
    )


def limit_numpy_blas(threads: int) -> list[dict[str, object]]:
    """Cap the BLAS pools numpy uses (its bundled OpenBLAS) at `threads`; FAISS's own OpenBLAS and
    OpenMP (faiss_cpu.libs) are left alone, so batched searches and training still use
    `--faiss-threads`. Idle OpenBLAS workers busy-wait after every call: the per-query re-score
    matmul burned ~50 ms of CPU per search on a 2-core host with the default pool, ~2 ms with 1
    thread (OMP_WAIT_POLICY does not apply to OpenBLAS's own pthreads). Returns what was changed."""
    from threadpoolctl import ThreadpoolController

    changed = []
    for lib in ThreadpoolController().lib_controllers:
        info = lib.info()
        if info["user_api"] != "blas" or "faiss" in Path(info["filepath"]).parent.name.lower():
            continue
        lib.set_num_threads(threads)
        changed.append({"library": Path(info["filepath"]).name, "from": info["num_threads"], "to": threads})
    return changed


def resolve_token(a: argparse.Namespace) -> tuple[str | None, str | None]:
    """(token, None) to serve; (None, None) for an allowed insecure run; (None, why) to refuse."""
    try:
        token = auth.load_token(getattr(a, "token_file", None))
    except auth.TokenError as exc:
        return None, str(exc)
    if token:
        return token, None
    if not getattr(a, "insecure_no_auth", False):
        return None, (
            "no shard token: set VSEARCH_SHARD_TOKEN / VSEARCH_SHARD_TOKEN_FILE or --token-file "
            "(or --insecure-no-auth on a loopback --host, for local experiments only)"
        )
    if not auth.is_loopback(a.host):
        return None, f"--insecure-no-auth is only allowed on a loopback --host, not {a.host!r}"
    return None, None


def serve(a: argparse.Namespace) -> int:
    logs.setup(f"shard-{a.shard_id}", a.log_level)
    token, refusal = resolve_token(a)
    if refusal:
        log.error("refusing to start", extra={"error": refusal})
        return 2
    if token is None:
        log.warning(
            "INSECURE: shard running without authentication (--insecure-no-auth); any local "
            "process can write, delete and read this shard",
            extra={"host": a.host, "port": a.port},
        )
    if a.faiss_threads:
        faiss.omp_set_num_threads(a.faiss_threads)
    if a.blas_threads:
        blas = limit_numpy_blas(a.blas_threads)
        log.info("numpy BLAS threads limited", extra={"libraries": blas, "numpy": np.__version__})
    try:
        model_version = version.resolve(a.model_version, a.data_dir, a.triton, a.triton_wait)
    except version.NoModelVersion as exc:
        log.error("refusing to start", extra={"error": str(exc)})
        return 2
    a.model_version = model_version
    try:
        engine = ShardEngine(
            a.data_dir,
            shard_id=a.shard_id,
            model_version=model_version,
            dim=a.dim,
            config=config_from_args(a),
        )
    except StampMismatch as exc:
        log.error("refusing to start", extra={"error": str(exc)})
        return 2
    metrics = ShardMetrics(engine)
    if a.metrics_port:
        start_http_server(a.metrics_port, addr=a.host, registry=metrics.registry)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=a.workers),
        interceptors=[auth.ShardAuthInterceptor(token)] if token else [],
        options=[
            ("grpc.max_receive_message_length", 64 * _MB),
            ("grpc.max_send_message_length", 64 * _MB),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.HealthServicer()

    def set_health(status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, status)

    set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    peers = [p.strip() for p in (a.peers or "").split(",") if p.strip()]
    replicator = Replicator(
        engine,
        peers,
        token=token,
        interval_s=a.repair_interval,
        rate_items_s=a.repair_rate,
        peer_wait_s=a.peer_wait,
        on_caught_up=lambda: set_health(health_pb2.HealthCheckResponse.SERVING),
    )
    metrics.watch_replication(replicator)
    shard_pb2_grpc.add_SearchShardServicer_to_server(ShardServicer(engine, metrics, replicator), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{a.host}:{a.port}"
    if server.add_insecure_port(address) == 0:
        log.error("cannot bind", extra={"address": address})
        return 1
    server.start()
    health_servicer.set(PROCESS_HEALTH, health_pb2.HealthCheckResponse.SERVING)
    engine.start_policy()
    if replicator.caught_up.is_set():
        set_health(health_pb2.HealthCheckResponse.SERVING)
    replicator.start()
    stats = engine.stats()
    log.info(
        "shard serving" if replicator.caught_up.is_set() else "shard started; catching up with peers",
        extra={
            "address": address,
            "metrics_port": a.metrics_port,
            "model_version": a.model_version,
            "peers": peers,
            "replica_uid": engine.uid,
            **stats,
        },
    )

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("shutdown requested", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    health_servicer.set(PROCESS_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
    replicator.stop()
    server.stop(a.grace).wait()
    engine.close(final_snapshot=True)
    log.info("shard stopped", extra={"wal_sequence": engine.applied_seq})
    return 0
