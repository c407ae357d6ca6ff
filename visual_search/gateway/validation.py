"""Checks at the public API boundary: every bad input becomes an ApiError with a clear message
before anything is sent to Triton or a shard (R21)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from grpc import StatusCode

from visual_search import contract, ids, preprocess
from visual_search.shard import filters as shard_filters
from visual_search.shard import validation as shard_validation
from visual_search.v1 import search_pb2, shard_pb2

KNOWN_FIELDS = ("category", "region", "price", "available")


class ApiError(Exception):
    """An error for the caller: a gRPC status code and a message."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ApiError:
    return ApiError(StatusCode.INVALID_ARGUMENT, message)


def check_k(k: int) -> None:
    if not 1 <= k <= contract.MAX_K:
        raise invalid(f"k={k} out of range [1, {contract.MAX_K}]")


def check_filter(flt: shard_pb2.Filter) -> None:
    """Size, field names and operator kinds (values are checked again by the shards)."""
    try:
        shard_filters.check_filter_size(flt)  # before it is fanned out to every shard
    except shard_validation.ValidationError as e:
        raise invalid(str(e)) from None
    for i, c in enumerate(flt.clauses):
        f = c.field
        if not (f in KNOWN_FIELDS or (f.startswith("attr.") and len(f) > 5)):
            raise invalid(
                f"filter clause {i}: unknown field {f!r} "
                "(known: category, region, price, available, attr.<name>)"
            )
        op = c.WhichOneof("op")
        if op is None:
            raise invalid(f"filter clause {i} ({f}): no operator set")
        if f == "price" and op != "range":
            raise invalid(f"filter clause {i}: price takes a range, not {op}")
        if f == "available" and op != "bool_equals":
            raise invalid(f"filter clause {i}: available takes bool_equals, not {op}")
        if f not in ("price", "available") and op in ("range", "bool_equals"):
            raise invalid(f"filter clause {i}: {f} is a string field; use equals or in_set")
        r = c.range
        if op == "range" and r.HasField("min") and r.HasField("max") and r.min > r.max:
            raise invalid(f"filter clause {i}: price range min {c.range.min} > max {c.range.max}")


def check_item_id(item_id: str) -> None:
    if not item_id:
        raise invalid("item_id is empty")
    if len(item_id.encode("utf-8")) > ids.MAX_ITEM_ID_BYTES:
        raise invalid(f"item_id longer than {ids.MAX_ITEM_ID_BYTES} bytes")


def decode_image(data: bytes) -> np.ndarray:
    """Decode for validation, box checks and pHash; ImageError -> INVALID_ARGUMENT, its message."""
    try:
        return preprocess.decode_image(data)
    except preprocess.ImageError as e:
        raise invalid(str(e)) from None


def check_box(box: search_pb2.Box, width: int, height: int) -> np.ndarray:
    try:
        return preprocess.validate_box([box.x1, box.y1, box.x2, box.y2], width, height)
    except preprocess.ImageError as e:
        raise invalid(str(e)) from None


def decode_query_vector(q: search_pb2.VectorQuery, served_version: str) -> np.ndarray:
    """A caller's vector: the model version must match (R6), then dim / finiteness / norm."""
    if not q.model_version:
        raise invalid(f"vector.model_version is required (this gateway serves {served_version!r})")
    if q.model_version != served_version:
        raise ApiError(
            StatusCode.FAILED_PRECONDITION,
            f"vector was embedded by model {q.model_version!r}; this gateway serves {served_version!r}",
        )
    try:
        return shard_validation.decode_vector(q.vector_f16, q.vector_f32, "vector")
    except shard_validation.ValidationError as e:
        raise invalid(str(e)) from None


def check_patches(patches: Sequence[shard_pb2.MetadataPatch]) -> None:
    """A whole UpdateMetadata request, before any shard is touched (the shards' own rules)."""
    try:
        shard_validation.check_patches(patches)
    except shard_validation.ValidationError as e:
        raise invalid(str(e)) from None


def check_delete_ids(item_ids: Sequence[str]) -> None:
    """A whole DeleteItems request (count, every id), before any shard is touched."""
    try:
        shard_validation.check_delete_ids(item_ids)
    except shard_validation.ValidationError as e:
        raise invalid(str(e)) from None
