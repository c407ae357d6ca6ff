"""Request validation. Every check raises ValidationError (-> INVALID_ARGUMENT) or
VersionMismatch (-> FAILED_PRECONDITION) with a message naming the offending field; nothing here
uses `assert`, so checks survive `python -O`.

Vector policy (contract.NORM_TOLERANCE): vectors must be finite, non-zero and L2-normalised;
a norm within the tolerance of 1 is silently renormalised (float16 rounding alone moves it by
~1e-3), anything farther is refused because it signals an encoder/version bug upstream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from visual_search import contract, ids
from visual_search.v1 import shard_pb2

MAX_ENTRY_ID = 2**63 - 1  # FAISS ids are signed int64
MAX_ATTRIBUTES = 64
MAX_STRING_BYTES = 1024


class ValidationError(ValueError):
    """Malformed request: maps to INVALID_ARGUMENT."""


class VersionMismatch(ValueError):
    """Request for another embedding model version: maps to FAILED_PRECONDITION."""


def check_model_version(requested: str, served: str) -> None:
    if not requested:
        raise ValidationError(f"model_version is required (this shard serves {served!r})")
    if requested != served:
        raise VersionMismatch(f"model_version {requested!r} does not match this shard's {served!r}")


def decode_vector(
    f16: bytes, f32: Sequence[float], what: str, dim: int = contract.EMBEDDING_DIM
) -> np.ndarray:
    """One vector from either wire form -> float32 unit vector, or ValidationError."""
    if f16 and len(f32):
        raise ValidationError(f"{what}: set only one of vector_f16 and vector_f32")
    if f16:
        if len(f16) != 2 * dim:
            raise ValidationError(
                f"{what}: vector_f16 has {len(f16)} bytes, expected {2 * dim} ({dim} float16 values)"
            )
        vec = np.frombuffer(f16, dtype="<f2").astype(np.float32)
    elif len(f32):
        if len(f32) != dim:
            raise ValidationError(f"{what}: vector_f32 has dimension {len(f32)}, expected {dim}")
        vec = np.asarray(f32, dtype=np.float32)
    else:
        raise ValidationError(f"{what}: vector missing (set vector_f16 or vector_f32)")
    if not np.all(np.isfinite(vec)):
        raise ValidationError(f"{what}: vector contains NaN or Inf")
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    if norm == 0.0:
        raise ValidationError(f"{what}: zero vector")
    if abs(norm - 1.0) > contract.NORM_TOLERANCE:
        raise ValidationError(
            f"{what}: vector L2 norm {norm:.4f} is not 1 (tolerance {contract.NORM_TOLERANCE}); "
            "send L2-normalised embeddings"
        )
    return (vec / np.float32(norm)).astype(np.float32)


def decode_queries(queries: Sequence[shard_pb2.QueryVector], dim: int) -> np.ndarray:
    if not queries:
        raise ValidationError(f"queries is empty (send 1..{contract.MAX_QUERY_BATCH} query vectors)")
    if len(queries) > contract.MAX_QUERY_BATCH:
        raise ValidationError(f"{len(queries)} queries exceed MAX_QUERY_BATCH={contract.MAX_QUERY_BATCH}")
    out = np.empty((len(queries), dim), dtype=np.float32)
    for i, q in enumerate(queries):
        out[i] = decode_vector(q.vector_f16, q.vector_f32, f"queries[{i}]", dim)
    return out


def check_search_params(req: shard_pb2.SearchRequest) -> None:
    if not 1 <= req.k <= contract.MAX_K:
        raise ValidationError(f"k={req.k} out of range [1, {contract.MAX_K}]")
    if req.nprobe > contract.MAX_NPROBE:
        raise ValidationError(f"nprobe={req.nprobe} out of range [0, {contract.MAX_NPROBE}] (0 = default)")
    if req.rescore_k > contract.MAX_RESCORE_K:
        raise ValidationError(
            f"rescore_k={req.rescore_k} out of range [0, {contract.MAX_RESCORE_K}] (0 = default)"
        )


def _check_string(value: str, what: str) -> None:
    if len(value.encode("utf-8")) > MAX_STRING_BYTES:
        raise ValidationError(f"{what} longer than {MAX_STRING_BYTES} bytes")


def check_metadata(md: shard_pb2.ItemMetadata, what: str) -> None:
    if not math.isfinite(md.price):
        raise ValidationError(f"{what}.price must be finite, got {md.price}")
    _check_string(md.category, f"{what}.category")
    _check_string(md.region, f"{what}.region")
    if len(md.attributes) > MAX_ATTRIBUTES:
        raise ValidationError(f"{what}: {len(md.attributes)} attributes exceed {MAX_ATTRIBUTES}")
    for key, value in md.attributes.items():
        if not key:
            raise ValidationError(f"{what}: empty attribute name")
        _check_string(key, f"{what}.attributes key")
        _check_string(value, f"{what}.attributes[{key!r}]")


def decode_upsert(req: shard_pb2.UpsertRequest, dim: int) -> list[tuple[shard_pb2.Item, np.ndarray]]:
    """Validate a whole batch before anything is written: all-or-nothing.
    Returns (item, float32 unit vectors [n_entries, dim]) pairs."""
    if not req.items:
        raise ValidationError(f"items is empty (send 1..{contract.MAX_UPSERT_BATCH} items)")
    if len(req.items) > contract.MAX_UPSERT_BATCH:
        raise ValidationError(f"{len(req.items)} items exceed MAX_UPSERT_BATCH={contract.MAX_UPSERT_BATCH}")
    seen_items: set[str] = set()
    seen_entries: set[int] = set()
    out = []
    for i, item in enumerate(req.items):
        what = f"items[{i}]"
        if not item.item_id:
            raise ValidationError(f"{what}: item_id is empty")
        if len(item.item_id.encode("utf-8")) > ids.MAX_ITEM_ID_BYTES:
            raise ValidationError(f"{what}: item_id longer than {ids.MAX_ITEM_ID_BYTES} bytes")
        if item.item_id in seen_items:
            raise ValidationError(f"{what}: duplicate item_id {item.item_id!r} in one batch")
        seen_items.add(item.item_id)
        check_metadata(item.metadata, f"{what}.metadata")
        if not item.entries:
            raise ValidationError(f"{what} ({item.item_id!r}): no entries (at least one is required)")
        if len(item.entries) > ids.MAX_ENTRIES_PER_ITEM:
            raise ValidationError(f"{what}: {len(item.entries)} entries exceed {ids.MAX_ENTRIES_PER_ITEM}")
        vecs = np.empty((len(item.entries), dim), dtype=np.float32)
        for j, entry in enumerate(item.entries):
            ewhat = f"{what}.entries[{j}]"
            if entry.entry_id > MAX_ENTRY_ID:
                raise ValidationError(f"{ewhat}: entry_id {entry.entry_id} exceeds 2^63-1")
            if entry.entry_id in seen_entries:
                raise ValidationError(f"{ewhat}: duplicate entry_id {entry.entry_id} in one batch")
            seen_entries.add(entry.entry_id)
            if len(entry.box) not in (0, 4):
                raise ValidationError(f"{ewhat}: box needs 4 values (x1, y1, x2, y2) or none")
            if not all(math.isfinite(v) for v in entry.box):
                raise ValidationError(f"{ewhat}: box contains NaN or Inf")
            vecs[j] = decode_vector(entry.vector_f16, entry.vector_f32, ewhat, dim)
        out.append((item, vecs))
    return out


def check_id_list(item_ids: Sequence[str], what: str) -> None:
    if len(item_ids) > contract.MAX_UPSERT_BATCH:
        raise ValidationError(f"{len(item_ids)} {what} exceed the batch limit {contract.MAX_UPSERT_BATCH}")
    for i, item_id in enumerate(item_ids):
        if not item_id:
            raise ValidationError(f"{what}[{i}] is empty")


def check_id(item_id: str, what: str) -> None:
    if not item_id:
        raise ValidationError(f"{what}: item_id is empty")
    if len(item_id.encode("utf-8")) > ids.MAX_ITEM_ID_BYTES:
        raise ValidationError(f"{what}: item_id longer than {ids.MAX_ITEM_ID_BYTES} bytes")


def check_patches(patches: Sequence[shard_pb2.MetadataPatch]) -> None:
    """A whole UpdateMetadata request (count, ids, each patch's fields), before anything is written.
    The merged result (e.g. the attribute count) is checked again against the stored item."""
    if not patches:
        raise ValidationError(f"patches is empty (send 1..{contract.MAX_UPSERT_BATCH} patches)")
    if len(patches) > contract.MAX_UPSERT_BATCH:
        raise ValidationError(f"{len(patches)} patches exceed MAX_UPSERT_BATCH={contract.MAX_UPSERT_BATCH}")
    seen: set[str] = set()
    for i, p in enumerate(patches):
        what = f"patches[{i}]"
        check_id(p.item_id, what)
        if p.item_id in seen:
            raise ValidationError(f"{what}: duplicate item_id {p.item_id!r} in one request")
        seen.add(p.item_id)
        what = f"{what} ({p.item_id!r})"
        fields = ("category", "price", "available", "region")
        if not (any(p.HasField(f) for f in fields) or p.attributes or p.remove_attributes
                or p.replace_attributes):
            raise ValidationError(f"{what}: changes nothing (set a field, attributes or remove_attributes)")
        if p.HasField("price") and not math.isfinite(p.price):
            raise ValidationError(f"{what}.price must be finite, got {p.price}")
        _check_string(p.category, f"{what}.category")
        _check_string(p.region, f"{what}.region")
        if p.replace_attributes and p.remove_attributes:
            raise ValidationError(f"{what}: remove_attributes has no meaning with replace_attributes")
        if len(p.attributes) > MAX_ATTRIBUTES or len(p.remove_attributes) > MAX_ATTRIBUTES:
            raise ValidationError(f"{what}: more than {MAX_ATTRIBUTES} attributes")
        for key, value in p.attributes.items():
            if not key:
                raise ValidationError(f"{what}: empty attribute name")
            _check_string(key, f"{what}.attributes key")
            _check_string(value, f"{what}.attributes[{key!r}]")
            if key in p.remove_attributes:
                raise ValidationError(f"{what}: attribute {key!r} is both set and removed")
        for key in p.remove_attributes:
            _check_string(key, f"{what}.remove_attributes")


def apply_patch(md: shard_pb2.ItemMetadata, p: shard_pb2.MetadataPatch, what: str) -> shard_pb2.ItemMetadata:
    """A new ItemMetadata = md with the patch applied (md is not modified); phash is kept."""
    out = shard_pb2.ItemMetadata()
    out.CopyFrom(md)
    for f in ("category", "price", "available", "region"):
        if p.HasField(f):
            setattr(out, f, getattr(p, f))
    if p.replace_attributes:
        out.ClearField("attributes")
    for key in p.remove_attributes:
        out.attributes.pop(key, None)
    out.attributes.update(p.attributes)
    if len(out.attributes) > MAX_ATTRIBUTES:
        raise ValidationError(f"{what}: the patched item would have {len(out.attributes)} attributes "
                              f"(at most {MAX_ATTRIBUTES})")
    return out


def check_delete_ids(item_ids: Sequence[str]) -> None:
    """A whole DeleteItems request: count and every id, before any shard is touched."""
    if not item_ids:
        raise ValidationError("item_ids is empty")
    if len(item_ids) > contract.MAX_UPSERT_BATCH:
        raise ValidationError(f"{len(item_ids)} item_ids exceed the batch limit {contract.MAX_UPSERT_BATCH}")
    for i, item_id in enumerate(item_ids):
        check_id(item_id, f"item_ids[{i}]")
