"""Gateway process: grpc.aio server with the VisualSearch service, health, reflection, optional
TLS and token auth, message size limits, Prometheus metrics; SIGTERM/SIGINT drain and stop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from visual_search import contract as C
from visual_search.gateway.admin import AdminService
from visual_search.gateway.auth import TokenAuthInterceptor
from visual_search.gateway.config import GatewayConfig, ShardMap
from visual_search.gateway.generations import Generation, GenerationRouter, build_generation, load_state
from visual_search.gateway.genwatch import GenerationWatcher, read_spec
from visual_search.gateway.metrics import GatewayMetrics
from visual_search.gateway.service import VisualSearchService
from visual_search.gateway.versionguard import VersionGuard
from visual_search.shard.auth import is_loopback
from visual_search.v1 import admin_pb2_grpc, search_pb2, search_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["VisualSearch"].full_name
PROCESS_HEALTH = "process"  # same name as the shards' liveness service


@dataclass
class Gateway:
    server: grpc.aio.Server
    router: GenerationRouter
    health: health.aio.HealthServicer
    port: int
    admin_server: grpc.aio.Server | None = None
    admin_port: int = 0
    guard: VersionGuard | None = None
    watcher: GenerationWatcher | None = None
    triton_watcher: asyncio.Task[None] | None = None

    @property
    def service(self) -> VisualSearchService:
        """The current generation's service (it changes on a model switch)."""
        return self.router.current.service

    async def stop(self, grace: float = 5.0) -> None:
        if self.triton_watcher is not None:
            self.triton_watcher.cancel()
        if self.guard is not None:
            await self.guard.stop()
        if self.watcher is not None:
            await self.watcher.stop()
        await self.health.enter_graceful_shutdown()
        if self.admin_server is not None:
            await self.admin_server.stop(0)
        await self.server.stop(grace)
        await self.router.close()


async def _first_generation(cfg: GatewayConfig, metrics: GatewayMetrics) -> GenerationRouter:
    """Generation 0 from the flags, or the generations a previous run switched to (state file)."""
    state_file = Path(cfg.generation_file) if cfg.generation_file else None
    state = load_state(state_file)
    if state is None:
        first = await build_generation(cfg, metrics, 0, cfg.shard_map, cfg.triton_url, strict=False)
        return GenerationRouter(first, state_file)

    async def from_state(d: dict[str, Any]) -> Generation:
        c = dataclasses.replace(cfg, model_version=d.get("model_version") or None)
        return await build_generation(
            c, metrics, int(d.get("number", 0)), ShardMap.parse(d["shards"]), d.get("triton_url") or None,
            strict=False,
        )

    router = GenerationRouter(await from_state(state["current"]), state_file)
    if state.get("previous"):
        try:
            router.previous = await from_state(state["previous"])
        except Exception:  # rollback target gone: serve anyway, without rollback
            log.exception("previous generation from %s not restored", state_file)
    log.info("resumed generation %d from %s", router.current.number, state_file)
    return router


class StartRefused(RuntimeError):
    """A configuration the gateway will not run with (e.g. an open admin port)."""


def check_admin_security(cfg: GatewayConfig) -> None:
    """The admin port switches the served model: it needs a token, or an explicit insecure flag on
    a loopback bind (then a WARNING says so). Checked before anything is started."""
    if not cfg.admin_port or cfg.admin_token:
        return
    if not cfg.insecure_admin:
        raise StartRefused(
            "--admin-port is set without --admin-token (env VSEARCH_ADMIN_TOKEN); give a token, or "
            "--insecure-admin on a loopback --admin-host for local experiments"
        )
    if not is_loopback(cfg.admin_host):
        raise StartRefused(
            f"--insecure-admin is only allowed on a loopback --admin-host, not {cfg.admin_host!r}"
        )
    log.warning(
        "INSECURE: admin port without a token (--insecure-admin): any local process can switch or "
        "roll back the served model",
        extra={"admin_host": cfg.admin_host, "admin_port": cfg.admin_port},
    )


async def _triton_ready(router: GenerationRouter, timeout: float) -> bool:
    """Is the current generation's Triton ready? False when none is configured."""
    emb = router.current.service.embedder
    is_ready = getattr(emb, "is_ready", None)
    if is_ready is None:
        return False
    try:
        return bool(await asyncio.wait_for(is_ready(), timeout))
    except Exception:  # noqa: BLE001 - unreachable in any way = not ready
        return False


async def watch_triton(router: GenerationRouter, hs: health.aio.HealthServicer, interval: float) -> None:
    """Keep the photo-queries health name in step with Triton's readiness (vector queries are
    served either way); log each change once."""
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    state = None
    while True:
        # photo queries need Triton up and the version guard content (router.version_problem)
        ready = await _triton_ready(router, max(0.5, interval)) and not router.version_problem
        if ready != state:
            await hs.set(C.HEALTH_PHOTO_QUERIES, serving if ready else not_serving)
            if state is not None or not ready:
                log.warning(
                    "Triton %s: photo queries %s; vector and item-id queries still served",
                    "ready" if ready else "unreachable", "SERVING" if ready else "NOT_SERVING",
                )
            state = ready
        await asyncio.sleep(interval)


async def _start_admin(
    cfg: GatewayConfig, router: GenerationRouter, metrics: GatewayMetrics
) -> tuple[Any, int]:
    interceptors = [TokenAuthInterceptor(cfg.admin_token, log_denials=True)] if cfg.admin_token else []
    server = grpc.aio.server(interceptors=interceptors)
    admin_pb2_grpc.add_GatewayAdminServicer_to_server(AdminService(router, cfg, metrics), server)
    port = server.add_insecure_port(f"{cfg.admin_host}:{cfg.admin_port}")
    await server.start()
    return server, port


async def start_gateway(cfg: GatewayConfig, metrics: GatewayMetrics | None = None) -> Gateway:
    check_admin_security(cfg)
    metrics = metrics or GatewayMetrics()
    published = read_spec(cfg.generation_source) if cfg.generation_source else None
    if published is not None:  # start on the generation every pod serves, not the flags'
        cfg = dataclasses.replace(
            cfg, shard_map=ShardMap.parse(published["shards"]),
            triton_url=published.get("triton_url") or cfg.triton_url,
        )
        log.info("starting on published generation %s", published.get("number", 0))
    router = await _first_generation(cfg, metrics)
    version = router.current.model_version
    interceptors = [TokenAuthInterceptor(cfg.auth_token)] if cfg.auth_token else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
        ],
    )
    search_pb2_grpc.add_VisualSearchServicer_to_server(router, server)
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    addr = f"{cfg.host}:{cfg.port}"
    if cfg.tls_cert and cfg.tls_key:
        pair = (Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())
        creds = grpc.ssl_server_credentials([pair])
        port = server.add_secure_port(addr, creds)
    else:
        port = server.add_insecure_port(addr)
    await server.start()
    admin_server, admin_port = await _start_admin(cfg, router, metrics) if cfg.admin_port else (None, 0)
    if cfg.metrics_port:
        metrics.serve(cfg.metrics_port, cfg.host)
    # "process": up and listening (startup/liveness probes). "", the API service and vector
    # queries: SERVING only while Triton and every shard stamp agree on the model version
    # (versionguard.py; readiness). Photo queries also need Triton up (watch_triton).
    await hs.set(PROCESS_HEALTH, health_pb2.HealthCheckResponse.SERVING)
    guard = VersionGuard(
        router, hs, metrics, cfg.version_check_s, ("", SERVICE_NAME, C.HEALTH_VECTOR_QUERIES)
    )
    problem = await guard.check()
    if cfg.version_check_s > 0:
        guard.start()
    ready = await _triton_ready(router, 5.0) and problem is None
    await hs.set(
        C.HEALTH_PHOTO_QUERIES,
        health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    triton_watcher = asyncio.create_task(watch_triton(router, hs, cfg.triton_health_interval_s))
    watcher = None
    if cfg.generation_source:
        watcher = GenerationWatcher(cfg.generation_source, router, cfg, metrics, cfg.generation_poll_s)
        if published is not None:
            watcher._set_number(int(published.get("number", 0)))
        watcher.start()
    n = cfg.shard_map.num_shards
    state = "NOT_SERVING (model version mismatch)" if problem else "serving"
    log.info("gateway %s model %s on %s:%d (%d shards)", state, version, cfg.host, port, n)
    return Gateway(server, router, hs, port, admin_server, admin_port, guard, watcher, triton_watcher)


async def run_until_signalled(cfg: GatewayConfig) -> None:
    gw = await start_gateway(cfg)
    admin = f" admin={cfg.admin_host}:{gw.admin_port}" if gw.admin_server else ""
    version = gw.service.model_version
    print(f"gateway listening on {cfg.host}:{gw.port}{admin} model_version={version}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping gateway")
    await gw.stop()
