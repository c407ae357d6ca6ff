"""Token auth: `authorization: Bearer <token>` (scheme case-insensitive) on every public call
(health/reflection exempt, so load balancers and grpcurl can probe without the secret).
Missing/wrong -> UNAUTHENTICATED."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from visual_search.shard.auth import handler_like
from visual_search.tokens import bearer_error

log = logging.getLogger("visual_search.gateway.auth")
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _deny_handler(
    handler: grpc.RpcMethodHandler, message: str, audit: str | None = None
) -> grpc.RpcMethodHandler:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if audit is not None:  # admin port: every refused call is logged (method, caller, why)
            log.warning(
                "admin call refused",
                extra={"method": audit, "peer": context.peer(), "outcome": "UNAUTHENTICATED", "why": message},
            )
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return handler_like(handler, deny)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, log_denials: bool = False) -> None:
        self._token = token
        self._log_denials = log_denials

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        why = bearer_error(details.invocation_metadata, self._token)
        if why is None:
            return handler
        return _deny_handler(handler, why, details.method if self._log_denials else None)
