"""Shard-internal authentication: a shared token on every SearchShard RPC.

A shard's API includes writes (Upsert, Delete, UpdateMetadata, Rebuild, Snapshot) and the
replication calls (ReplicaStatus, Sync, Repair), so anyone who can reach a shard port could
bypass the gateway's token. Every SearchShard call must carry `authorization: Bearer <token>`
(scheme case-insensitive, constant-time compare); health and reflection stay open for probes.

The token comes from --token-file / VSEARCH_SHARD_TOKEN_FILE (a mounted Kubernetes Secret) or
VSEARCH_SHARD_TOKEN (never from argv: other local users can read a process's command line).
Callers - gateway, cutover, canary, replica peers, benchmarks, tests - open their shard channels
with `channel()` / `aio_channel()`, which attach the token to every call.
"""

from __future__ import annotations

import collections
import ipaddress
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from visual_search.tokens import bearer_error, bearer_metadata
from visual_search.v1 import shard_pb2

TOKEN_ENV = "VSEARCH_SHARD_TOKEN"
TOKEN_FILE_ENV = "VSEARCH_SHARD_TOKEN_FILE"
SERVICE_PREFIX = "/" + shard_pb2.DESCRIPTOR.services_by_name["SearchShard"].full_name + "/"


class TokenError(ValueError):
    """The configured token cannot be used (unreadable or empty file)."""


def load_token(token_file: str | None = None) -> str | None:
    """The shard token: `token_file`, else $VSEARCH_SHARD_TOKEN_FILE, else $VSEARCH_SHARD_TOKEN."""
    path = token_file or os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            text = Path(path).read_text().strip()
        except OSError as e:
            raise TokenError(f"cannot read shard token file {path}: {e.strerror}") from None
        if not text:
            raise TokenError(f"shard token file {path} is empty")
        return text
    return os.environ.get(TOKEN_ENV) or None


def ensure_token() -> str:
    """The configured token, or a fresh random one put into this process's environment, so every
    child (shards, gateway, jobs) inherits it: the launcher, tests and benchmarks call this."""
    token = load_token()
    if token is None:
        token = secrets.token_urlsafe(32)
        os.environ[TOKEN_ENV] = token
    return token


def is_loopback(host: str) -> bool:
    """Whether a bind address is loopback-only ('localhost', 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def handler_like(handler: grpc.RpcMethodHandler, behaviour: Any) -> grpc.RpcMethodHandler:
    """A method handler of the same streaming kind and (de)serializers as `handler` that runs
    `behaviour(request, context)` instead (server interceptors refusing a call: shard and gateway)."""
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviour, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behaviour, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behaviour, **kw)
    return grpc.unary_unary_rpc_method_handler(behaviour, **kw)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"shard: {message}")

    return handler_like(handler, deny)


class ShardAuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for any SearchShard call without the token (health/reflection exempt)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        why = bearer_error(details.invocation_metadata, self._token)  # type: ignore[attr-defined]
        return handler if why is None else _deny(handler, why)


# ---- clients -----------------------------------------------------------------------------------
_Details = collections.namedtuple(
    "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
)


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._md = bearer_metadata(token)

    def _details(self, d: Any) -> Any:
        return _Details(
            d.method, d.timeout, tuple(d.metadata or ()) + self._md, d.credentials,
            getattr(d, "wait_for_ready", None), getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


def _aio_details(d: Any, md: tuple[tuple[str, str], ...]) -> grpc.aio.ClientCallDetails:
    meta = grpc.aio.Metadata(*(tuple(d.metadata or ()) + md))
    return grpc.aio.ClientCallDetails(d.method, d.timeout, meta, d.credentials, d.wait_for_ready)


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = bearer_metadata(token)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._md), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = bearer_metadata(token)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._md), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = bearer_metadata(token)

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_aio_details(details, self._md), request_iterator)


# A restarted shard (supervisor, pod restart) must be reached again in about a second, not after
# gRPC's default reconnect backoff (up to 120 s): these apply unless the caller sets its own.
# (Not grpc.min_reconnect_backoff_ms: it is also the minimum connect timeout.)
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def _with_reconnect(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    given = {k for k, _ in options}
    return [*options, *((k, v) for k, v in RECONNECT_OPTIONS if k not in given)]


def channel(
    address: str, token: str | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A loopback/cluster channel to a shard whose every call carries the shard token
    (`token`, else the configured one; none configured = plain channel, for --insecure-no-auth)."""
    ch = grpc.insecure_channel(address, options=_with_reconnect(options))
    tok = token or load_token()
    return grpc.intercept_channel(ch, _SyncToken(tok)) if tok else ch


def aio_channel(
    address: str, token: str | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """The grpc.aio form of `channel()` (gateway fan-out, cutover re-embed)."""
    tok = token or load_token()
    interceptors: list[Any] = (
        [_AioUnaryUnary(tok), _AioUnaryStream(tok), _AioStreamUnary(tok)] if tok else []
    )
    return grpc.aio.insecure_channel(
        address, options=_with_reconnect(options), interceptors=interceptors or None
    )
