"""Serving generations: atomic model-version switch and one-step rollback (R15).

A generation is one immutable VisualSearchService bound to its own shard fan-out, Triton
embedder and model version. The public servicer (GenerationRouter) reads the current generation
once per request and delegates the whole request to it, so an in-flight query finishes on the
generation it started with and no answer mixes versions; a switch is a single reference
assignment on the event loop. The previous generation stays open for rollback; the one before
it is closed once its in-flight requests have drained.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from visual_search.gateway.config import GatewayConfig, ShardMap
from visual_search.gateway.discovery import discover_model_version
from visual_search.gateway.embedder import Embedder, TritonEmbedder
from visual_search.gateway.fanout import ShardFanout
from visual_search.gateway.metrics import GatewayMetrics
from visual_search.gateway.service import VisualSearchService
from visual_search.v1 import admin_pb2, search_pb2_grpc, shard_pb2

log = logging.getLogger(__name__)
_DRAIN_S = 30.0  # longest a retired generation waits for its in-flight requests before closing


class GenerationError(Exception):
    """A new generation is inconsistent (versions differ, a replica is down): not switched to."""


@dataclass(eq=False)
class Generation:
    number: int
    service: VisualSearchService
    shard_map: ShardMap
    triton_url: str | None
    activated_unix: float = 0.0
    inflight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def model_version(self) -> str:
        return self.service.model_version

    def info(self) -> admin_pb2.GenerationInfo:
        return admin_pb2.GenerationInfo(
            number=self.number, model_version=self.model_version, shards=self.shard_map.to_spec(),
            triton_url=self.triton_url or "", activated_unix=self.activated_unix, inflight=self.inflight,
        )

    def enter(self) -> None:
        self.inflight += 1
        self.drained.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.drained.set()

    async def close(self, drain_s: float = _DRAIN_S) -> None:
        """Wait (bounded) for in-flight requests, then close channels."""
        if self.inflight:
            try:
                await asyncio.wait_for(self.drained.wait(), drain_s)
            except TimeoutError:
                log.warning("generation %d closed with %d requests in flight", self.number, self.inflight)
        await self.service.fanout.close()
        if self.service.embedder is not None:
            await self.service.embedder.close()


async def _replica_versions(fanout: ShardFanout, timeout: float) -> dict[str, str]:
    """Model version reported by every replica (address -> version); raises if one is unreachable."""
    out: dict[str, str] = {}
    for rs in fanout.shards:
        for addr, stub in zip(rs.addresses, rs.stubs, strict=True):
            try:
                st = await stub.Stats(shard_pb2.StatsRequest(), timeout=timeout)
            except grpc.aio.AioRpcError as e:
                why = f"{e.code().name} {e.details()}"
                raise GenerationError(f"shard {rs.shard_id} replica {addr}: {why}") from e
            if st.shard_id != rs.shard_id:
                raise GenerationError(f"replica {addr} is shard {st.shard_id}, placed as shard {rs.shard_id}")
            out[addr] = st.model_version
    return out


async def build_generation(
    cfg: GatewayConfig, metrics: GatewayMetrics, number: int, shard_map: ShardMap,
    triton_url: str | None, expect_version: str | None = None, strict: bool = True, timeout: float = 10.0,
) -> Generation:
    """Connect to a shard map + Triton and tell the model version they serve.

    strict (switches): every replica must be up and report Triton's encoder version (or
    expect_version): a generation is never half old, half new. Not strict (start-up): the
    gateway's documented discovery (flag, else Triton, else the shards), tolerating down replicas.
    """
    pinned = None if strict else cfg.model_version  # a switch takes the version the new stack reports
    gcfg = dataclasses.replace(cfg, shard_map=shard_map, triton_url=triton_url, model_version=pinned)
    fanout = ShardFanout(gcfg, metrics)
    embedder: Embedder | None = None
    try:
        if triton_url:
            embedder = TritonEmbedder(triton_url, on_vector=metrics.embedding_norm.observe)
        if not strict:
            version = await discover_model_version(gcfg, embedder, fanout)
        else:
            replicas = await _replica_versions(fanout, timeout)
            version = await asyncio.wait_for(embedder.model_version(), timeout) if embedder else ""
            version = version or next(iter(replicas.values()), "")
            wrong = {a: v for a, v in replicas.items() if v != version}
            if wrong:
                raise GenerationError(f"replicas {wrong} do not serve model version {version!r}")
        if expect_version and version != expect_version:
            raise GenerationError(f"new generation serves {version!r}, expected {expect_version!r}")
        if not version:
            raise GenerationError("cannot tell the model version (no Triton, shards report none)")
    except BaseException:
        await fanout.close()
        if embedder is not None:
            await embedder.close()
        raise
    svc = VisualSearchService(gcfg, fanout, embedder, metrics, version)
    return Generation(number, svc, shard_map, triton_url)


class GenerationRouter(search_pb2_grpc.VisualSearchServicer):
    """The public servicer: each request runs wholly on the generation current when it arrived."""

    def __init__(self, first: Generation, state_file: Path | None = None) -> None:
        first.activated_unix = time.time()
        first.drained.set()
        self.current = first
        self.previous: Generation | None = None
        self.state_file = state_file
        self._lock = asyncio.Lock()  # one switch at a time (queries never take it)
        self._retiring: set[asyncio.Task[None]] = set()
        # Set by the VersionGuard while Triton's encoder and a shard stamp disagree: calls refused.
        self.version_problem: str | None = None

    async def _refuse_on_mismatch(self, context: grpc.aio.ServicerContext) -> None:
        if self.version_problem:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"model version mismatch: {self.version_problem}"
            )

    # ---- public API: delegate ------------------------------------------------------------
    async def _unary(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._refuse_on_mismatch(context)
        gen = self.current
        gen.enter()
        try:
            return await getattr(gen.service, method)(request, context)
        finally:
            gen.leave()

    async def Detect(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("Detect", request, context)

    async def Search(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("Search", request, context)

    async def DeleteItems(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("DeleteItems", request, context)

    async def UpdateMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("UpdateMetadata", request, context)

    async def IndexItems(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await self._refuse_on_mismatch(context)
        gen = self.current
        gen.enter()
        try:
            async for res in gen.service.IndexItems(request_iterator, context):
                yield res
        finally:
            gen.leave()

    # ---- switching -------------------------------------------------------------------------
    def _activate(self, new: Generation) -> tuple[float, Generation | None]:
        """Swap in `new`; returns (swap seconds, the generation now retired)."""
        t0 = time.perf_counter()
        retired, self.previous, self.current = self.previous, self.current, new
        new.activated_unix = time.time()
        return time.perf_counter() - t0, retired

    def _retire(self, gen: Generation | None) -> None:
        if gen is not None and gen is not self.current and gen is not self.previous:
            task = asyncio.create_task(gen.close())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def switch(
        self, build: Any, expect_version: str | None = None
    ) -> tuple[float, float]:
        """Build (await `build(number)`), validate and activate a generation; (prepare s, swap s)."""
        async with self._lock:
            t0 = time.perf_counter()
            try:
                new: Generation = await build(self._next_number())
            except GenerationError as exc:
                log.error("generation switch refused, still serving generation %d (model %s): %s",
                          self.current.number, self.current.model_version, exc)
                raise
            if expect_version and new.model_version != expect_version:
                await new.close(0)
                raise GenerationError(f"new generation serves {new.model_version!r}, not {expect_version!r}")
            prepare = time.perf_counter() - t0
            swap, retired = self._activate(new)
            self._retire(retired)
            self.save_state()
            log.info("switched to generation %d (model %s)", new.number, new.model_version)
            return prepare, swap

    async def rollback(self) -> float:
        """Swap current and previous (the previous one is still open); returns swap seconds."""
        async with self._lock:
            if self.previous is None:
                raise GenerationError("no previous generation to roll back to")
            t0 = time.perf_counter()
            self.current, self.previous = self.previous, self.current
            self.current.activated_unix = time.time()
            swap = time.perf_counter() - t0
            self.save_state()
            cur = self.current
            log.info("rolled back to generation %d (model %s)", cur.number, cur.model_version)
            return swap

    def _next_number(self) -> int:
        return 1 + max(self.current.number, self.previous.number if self.previous else 0)

    def save_state(self) -> None:
        """Persist current/previous (shards, Triton, version) so a restarted gateway resumes them."""
        if self.state_file is None:
            return

        def d(g: Generation | None) -> dict[str, Any] | None:
            if g is None:
                return None
            return {"shards": g.shard_map.to_spec(), "triton_url": g.triton_url or "",
                    "model_version": g.model_version, "number": g.number}

        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"current": d(self.current), "previous": d(self.previous)}, indent=1))
        os.replace(tmp, self.state_file)

    async def close(self) -> None:
        for task in list(self._retiring):
            await task
        for g in (self.current, self.previous):
            if g is not None:
                await g.close(5.0)


def load_state(path: Path | None) -> dict[str, Any] | None:
    """The saved generations, or None when there is no (readable) state file."""
    if path is None or not path.exists():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        log.exception("ignoring unreadable generation state %s", path)
        return None
    return data if data.get("current") else None
