"""The gateway's admin gRPC service (admin.proto): list, switch and roll back generations.

It listens on its own port, loopback by default, so the public port and its network policy never
expose it; it requires `authorization: Bearer <admin token>` (the gateway refuses to open it
without a token unless --insecure-admin on loopback, server.check_admin_security). Every Switch
and Rollback is logged: caller address, what was asked, the outcome (never the token).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from visual_search.errors import public_message
from visual_search.gateway.config import GatewayConfig, ShardMap
from visual_search.gateway.generations import GenerationError, GenerationRouter, build_generation
from visual_search.gateway.metrics import GatewayMetrics
from visual_search.v1 import admin_pb2, admin_pb2_grpc

R = TypeVar("R")
log = logging.getLogger("visual_search.gateway.admin")


_AUDITED = ("Switch", "Rollback")  # calls that change what is served: one log line each


def _audit(name: str, request: Any, context: grpc.aio.ServicerContext, code: str, detail: str) -> None:
    """Who asked for what, and the outcome; never the token or other metadata."""
    fields = {"admin_call": name, "peer": context.peer(), "outcome": code}
    if name == "Switch":
        fields.update(
            shards=request.shards,
            triton_url=request.triton_url,
            expect_model_version=request.expect_model_version,
        )
    if detail:
        fields["detail"] = detail
    log.warning("admin %s: %s", name, code, extra=fields)


def _errors(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    @functools.wraps(fn)
    async def inner(self: AdminService, request: Any, context: grpc.aio.ServicerContext) -> R:
        name = fn.__name__
        try:
            out = await fn(self, request, context)
            if name in _AUDITED:
                cur = getattr(out, "current", None)
                _audit(name, request, context, "OK", f"now serving {cur.model_version}" if cur else "")
            return out
        except GenerationError as e:
            code, msg = grpc.StatusCode.FAILED_PRECONDITION, str(e)
        except ValueError as e:
            code, msg = grpc.StatusCode.INVALID_ARGUMENT, str(e)
        except TimeoutError:
            code, msg = grpc.StatusCode.DEADLINE_EXCEEDED, "new generation did not answer in time"
        if name in _AUDITED:
            _audit(name, request, context, code.name, public_message(msg))
        await context.abort(code, public_message(msg))
        raise AssertionError("unreachable")

    return inner


class AdminService(admin_pb2_grpc.GatewayAdminServicer):
    def __init__(self, router: GenerationRouter, cfg: GatewayConfig, metrics: GatewayMetrics) -> None:
        self.router, self.cfg, self.metrics = router, cfg, metrics

    def _infos(self) -> dict[str, admin_pb2.GenerationInfo]:
        out = {"current": self.router.current.info()}
        if self.router.previous is not None:
            out["previous"] = self.router.previous.info()
        return out

    @_errors
    async def GetGenerations(
        self, request: admin_pb2.GetGenerationsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GenerationsResponse:
        return admin_pb2.GenerationsResponse(**self._infos())

    @_errors
    async def Switch(
        self, request: admin_pb2.SwitchRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SwitchResponse:
        shard_map = ShardMap.parse(request.shards)
        if shard_map.num_shards != self.router.current.shard_map.num_shards:
            # item -> shard placement is hash mod N: another N would need a re-partitioned catalog
            raise ValueError(f"new shard map has {shard_map.num_shards} shards, live one "
                             f"{self.router.current.shard_map.num_shards}")

        async def build(number: int) -> Any:
            return await build_generation(
                self.cfg, self.metrics, number, shard_map, request.triton_url or None,
                expect_version=request.expect_model_version or None,
            )

        prepare, swap = await self.router.switch(build, request.expect_model_version or None)
        return admin_pb2.SwitchResponse(**self._infos(), prepare_ms=prepare * 1e3, swap_ms=swap * 1e3)

    @_errors
    async def Rollback(
        self, request: admin_pb2.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SwitchResponse:
        swap = await self.router.rollback()
        return admin_pb2.SwitchResponse(**self._infos(), swap_ms=swap * 1e3)


class AdminClient:
    """Blocking client of the admin service (what `vsearch cutover` and tests use)."""

    def __init__(self, address: str, token: str | None = None, timeout: float = 60.0) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = admin_pb2_grpc.GatewayAdminStub(self._channel)
        self._md = [("authorization", f"Bearer {token}")] if token else []
        self.timeout = timeout

    def generations(self) -> admin_pb2.GenerationsResponse:
        r: admin_pb2.GenerationsResponse = self._stub.GetGenerations(
            admin_pb2.GetGenerationsRequest(), timeout=self.timeout, metadata=self._md
        )
        return r

    def switch(
        self, shards: str, triton_url: str = "", expect_model_version: str = ""
    ) -> admin_pb2.SwitchResponse:
        req = admin_pb2.SwitchRequest(
            shards=shards, triton_url=triton_url, expect_model_version=expect_model_version
        )
        r: admin_pb2.SwitchResponse = self._stub.Switch(req, timeout=self.timeout, metadata=self._md)
        return r

    def rollback(self) -> admin_pb2.SwitchResponse:
        r: admin_pb2.SwitchResponse = self._stub.Rollback(
            admin_pb2.RollbackRequest(), timeout=self.timeout, metadata=self._md
        )
        return r

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
