"""JSON bodies of the web bridge -> gRPC requests, checked field by field.

Why strict: the bridge faces browsers and anything else that can reach it; every malformed field
must become a 400 with a message naming the field (never an exception that drops the connection),
and only well-typed values reach the gateway.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from visual_search import contract as C
from visual_search.v1 import search_pb2, shard_pb2

KNOWN_FIELDS = frozenset(
    {"image", "k", "filters", "box", "box_index", "whole_image", "region"}
)
FILTER_FIELDS = frozenset({"category", "region", "available", "price_min", "price_max"})
MAX_TEXT = 256  # category / region / filter strings, characters


class BadRequest(ValueError):
    """A malformed request: HTTP 400 with this message."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise BadRequest(f"{name} must be a finite number, got {type(v).__name__}")
    return float(v)


def _text(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise BadRequest(f"{name} must be a string, got {type(v).__name__}")
    if len(v) > MAX_TEXT or "\x00" in v:
        raise BadRequest(f"{name} must be at most {MAX_TEXT} characters, without NUL")
    return v


def image_bytes(body: dict[str, Any]) -> bytes:
    """`image`: a base64 string of at most contract.MAX_IMAGE_BYTES decoded bytes."""
    v = body.get("image")
    if not isinstance(v, str) or not v:
        got = "missing" if v is None else type(v).__name__
        raise BadRequest(f"image must be a non-empty base64 string, got {got}")
    if len(v) > (C.MAX_IMAGE_BYTES + 2) // 3 * 4 + 4:
        raise BadRequest(f"image is larger than {C.MAX_IMAGE_BYTES} bytes")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"image must be base64: {e}") from None


def filter_from_json(spec: Any) -> shard_pb2.Filter:
    """{"category": "x", "region": "eu", "available": true, "price_min": 1, "price_max": 9}."""
    if not isinstance(spec, dict):
        raise BadRequest(f"filters must be an object like {{\"category\": \"x\"}}, got {type(spec).__name__}")
    unknown = set(spec) - FILTER_FIELDS
    if unknown:
        raise BadRequest(f"unknown filter field(s) {sorted(unknown)}; known: {sorted(FILTER_FIELDS)}")
    f = shard_pb2.Filter()
    for field in ("category", "region"):
        if spec.get(field):
            f.clauses.add(field=field, equals=_text(spec[field], f"filters.{field}"))
    if spec.get("available") is not None:
        if not isinstance(spec["available"], bool):
            raise BadRequest("filters.available must be true or false")
        f.clauses.add(field="available", bool_equals=spec["available"])
    lo, hi = spec.get("price_min"), spec.get("price_max")
    if lo is not None or hi is not None:
        rng = shard_pb2.Range()
        if lo is not None:
            rng.min = _number(lo, "filters.price_min")
        if hi is not None:
            rng.max = _number(hi, "filters.price_max")
        f.clauses.add(field="price", range=rng)
    return f


def build_query(body: dict[str, Any]) -> search_pb2.QueryRequest:
    """JSON body of /api/search -> QueryRequest."""
    unknown = set(body) - KNOWN_FIELDS
    if unknown:
        raise BadRequest(f"unknown field(s) {sorted(unknown)}; known: {sorted(KNOWN_FIELDS)}")
    image = image_bytes(body)
    k = body.get("k", 24)
    if not _is_int(k) or not 1 <= k <= C.MAX_K:
        raise BadRequest(f"k must be an integer in [1, {C.MAX_K}], got {k!r}"[:200])
    q = search_pb2.QueryRequest(k=k, filter=filter_from_json(body.get("filters") or {}))
    q.image.image = image
    box, box_index = body.get("box"), body.get("box_index")
    if box is not None:
        if not isinstance(box, list) or len(box) != 4:
            raise BadRequest("box must be a list [x1, y1, x2, y2] of 4 numbers")
        x1, y1, x2, y2 = (_number(v, "box[]") for v in box)
        q.image.box.CopyFrom(search_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
    elif box_index is not None:
        if not _is_int(box_index) or not 0 <= box_index < C.DETECTOR_MAX_DETECTIONS:
            raise BadRequest(f"box_index must be an integer in [0, {C.DETECTOR_MAX_DETECTIONS})")
        q.image.box_index = box_index
    elif body.get("whole_image") is not None:
        if not isinstance(body["whole_image"], bool):
            raise BadRequest("whole_image must be true or false")
        if body["whole_image"]:
            q.image.whole_image = True
    if body.get("region"):
        q.options.user_region = _text(body["region"], "region")
    return q


def detect_request(body: dict[str, Any]) -> search_pb2.DetectRequest:
    unknown = set(body) - {"image"}
    if unknown:
        raise BadRequest(f"unknown field(s) {sorted(unknown)}; /api/detect takes only image")
    return search_pb2.DetectRequest(image=image_bytes(body))
