"""Gateway process: grpc.aio server with the VisualSearch service, health, reflection, optional
TLS and token auth, message size limits, Prometheus metrics; SIGTERM/SIGINT drain and stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from visual_search.gateway.auth import TokenAuthInterceptor
from visual_search.gateway.config import GatewayConfig
from visual_search.gateway.embedder import Embedder, TritonEmbedder
from visual_search.gateway.fanout import ShardFanout
from visual_search.gateway.metrics import GatewayMetrics
from visual_search.gateway.service import VisualSearchService
from visual_search.v1 import search_pb2, search_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["VisualSearch"].full_name


async def discover_model_version(cfg: GatewayConfig, embedder: Embedder | None, fanout: ShardFanout) -> str:
    """The served model version: the flag, else Triton's encoder version, else the shards'."""
    if cfg.model_version:
        return cfg.model_version
    if embedder is not None:
        v = await embedder.model_version()
        if v:
            return v
    loop = asyncio.get_running_loop()
    for st in await fanout.stats(loop.time() + 5.0):
        if st is not None and st.model_version:
            return st.model_version
    raise RuntimeError("cannot tell the model version: pass --model-version, or start Triton/shards first")


@dataclass
class Gateway:
    server: grpc.aio.Server
    service: VisualSearchService
    health: health.aio.HealthServicer
    port: int

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.service.fanout.close()
        if self.service.embedder is not None:
            await self.service.embedder.close()


async def start_gateway(cfg: GatewayConfig, metrics: GatewayMetrics | None = None) -> Gateway:
    metrics = metrics or GatewayMetrics()
    fanout = ShardFanout(cfg, metrics)
    embedder: Embedder | None = None
    if cfg.triton_url:
        embedder = TritonEmbedder(cfg.triton_url, on_vector=metrics.embedding_norm.observe)
    version = await discover_model_version(cfg, embedder, fanout)
    service = VisualSearchService(cfg, fanout, embedder, metrics, version)
    interceptors = [TokenAuthInterceptor(cfg.auth_token)] if cfg.auth_token else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
        ],
    )
    search_pb2_grpc.add_VisualSearchServicer_to_server(service, server)
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
    if cfg.metrics_port:
        metrics.serve(cfg.metrics_port, cfg.host)
    for name in ("", SERVICE_NAME):
        await hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("gateway serving model %s on %s:%d (%d shards)", version, cfg.host, port, fanout.num_shards)
    return Gateway(server, service, hs, port)


async def run_until_signalled(cfg: GatewayConfig) -> None:
    gw = await start_gateway(cfg)
    print(f"gateway listening on {cfg.host}:{gw.port} model_version={gw.service.model_version}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping gateway")
    await gw.stop()
