"""Errors of the VisualSearch API: one exception class per gRPC status the gateway answers with.

`translate` turns a grpc.RpcError into the matching class, so callers catch `NotFound` or
`InvalidArgument` instead of inspecting status codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from vsearch_client.client import WriteResult


class VisualSearchError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgument(VisualSearchError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(VisualSearchError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(VisualSearchError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(VisualSearchError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(VisualSearchError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(VisualSearchError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(VisualSearchError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PartialWrite(VisualSearchError):
    """A multi-shard write (delete) that some shard did not apply; `result` says item by item."""

    def __init__(self, message: str, result: WriteResult) -> None:
        super().__init__(message, grpc.StatusCode.UNAVAILABLE)
        self.result = result


BY_CODE: dict[grpc.StatusCode, type[VisualSearchError]] = {
    c.code: c
    for c in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        Unauthenticated,
        Unavailable,
        DeadlineExceeded,
        ResourceExhausted,
    )
}


def translate(e: grpc.RpcError) -> VisualSearchError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else None) or str(code)
    cls = BY_CODE.get(code, VisualSearchError)
    return cls(f"{code.name}: {details}", code)
