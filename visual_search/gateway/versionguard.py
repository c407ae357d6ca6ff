"""One version truth (issue 11): the gateway serves only while Triton's encoder and every shard
replica's stamp name the same model version.

Triton is the source: its `embed` model config carries the encoder version (triton/repository.py
writes it from the exported model's manifest). At start and then every `interval` seconds the
guard compares the current generation's version with Triton's and with the stamp every reachable
replica reports (Stats). On a mismatch the gateway's health turns NOT_SERVING (the Service stops
routing to it), public calls fail with FAILED_PRECONDITION naming both versions, and one ERROR
line says what differs; once they agree again it serves again. Unreachable replicas or Triton
are not a mismatch (they are the fan-out's and the readiness probes' business). A generation
switch to an inconsistent stack is refused before it happens (generations.build_generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from visual_search.v1 import shard_pb2

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def version_problems(gen: Any, timeout: float = 5.0) -> list[str]:
    """What disagrees with the generation's model version (empty: all agree)."""
    want = gen.model_version
    problems = []
    svc = gen.service
    if svc.embedder is not None:
        try:
            triton = await asyncio.wait_for(svc.embedder.model_version(), timeout)
        except Exception:  # Triton unreachable: not a version mismatch
            triton = ""
        if triton and triton != want:
            problems.append(
                f"Triton at {gen.triton_url} serves encoder {triton!r}, the gateway serves {want!r}"
            )
    for rs in svc.fanout.shards:
        for addr, stub in zip(rs.addresses, rs.stubs, strict=True):
            try:
                st = await stub.Stats(shard_pb2.StatsRequest(), timeout=timeout)
            except grpc.aio.AioRpcError:
                continue
            if st.model_version != want:
                stamp = st.model_version
                problems.append(f"shard {rs.shard_id} replica {addr} is stamped {stamp!r}, not {want!r}")
    return problems


class VersionGuard:
    """Checks versions now and periodically; drives health, the router's refusal and a gauge."""

    def __init__(self, router: Any, health: Any, metrics: Any, interval: float = 5.0,
                 services: tuple[str, ...] = ("",)) -> None:
        self.router, self.health, self.metrics, self.interval = router, health, metrics, interval
        self.services = services
        self.problem: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> str | None:
        """One check; applies the result (health, router, gauge, log on change)."""
        gen = self.router.current
        problems = await version_problems(gen)
        problem = "; ".join(problems) or None
        if problem and problem != self.problem:
            log.error("model version mismatch: %s - NOT_SERVING until they agree (re-embed the shards "
                      "with this encoder, or serve the shards' model from Triton)", problem)
        elif self.problem and not problem:
            log.info("model versions agree again (%s): SERVING", gen.model_version)
        self.problem = problem
        self.router.version_problem = problem
        self.metrics.version_consistent.set(0 if problem else 1)
        for name in self.services:
            await self.health.set(name, NOT_SERVING if problem else SERVING)
        return problem

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:
                log.exception("version check failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
