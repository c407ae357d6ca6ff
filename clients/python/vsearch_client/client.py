"""Typed Python client for the public VisualSearch API (sync `Client`, asyncio `AsyncClient`).

    from vsearch_client import Client
    with Client("127.0.0.1:50051", token="...") as c:
        res = c.search(image=open("lamp.jpg", "rb").read(), k=10, filters=["category=lamps"])
        for hit in res.lists[0].hits: print(hit.item_id, hit.score)

Errors raise VisualSearchError subclasses named after the gRPC code (InvalidArgument, NotFound,
...). Idempotent calls (Detect, Search, DeleteItems, UpdateMetadata) are retried on UNAVAILABLE
with exponential backoff; IndexItems is not retried automatically (the CLI resumes from its state
file instead).
"""

from __future__ import annotations

import asyncio
import struct
import time
from array import array
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from vsearch_client.errors import InvalidArgument, PartialWrite, translate
from vsearch_client.v1 import search_pb2, search_pb2_grpc, shard_pb2

T = TypeVar("T")
ImageLike = bytes | str | Path


# ---- typed results ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def from_pb(cls, b: search_pb2.Box) -> Box:
        return cls(b.x1, b.y1, b.x2, b.y2)

    def __str__(self) -> str:
        return f"{self.x1:.0f},{self.y1:.0f},{self.x2:.0f},{self.y2:.0f}"


@dataclass(frozen=True)
class Detection:
    index: int
    box: Box
    class_name: str
    score: float
    salience: float
    is_default: bool


@dataclass(frozen=True)
class DetectResult:
    detections: list[Detection]
    default_index: int
    width: int
    height: int
    model_version: str


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float
    rank_score: float
    category: str
    price: float
    available: bool
    region: str
    attributes: dict[str, str]
    matched_box: Box | None
    exact_match: bool
    shard_id: int
    duplicates: list[str]
    close_match: bool = False  # exact copy, or score >= the list's close_match_threshold


@dataclass(frozen=True)
class ResultList:
    query_box: Box | None
    detection_index: int
    class_name: str
    hits: list[Hit]
    query_strategy: str = ""  # how the query side was chosen (default-box, whole-image, box, ...)
    no_close_match: bool = False  # nothing in the catalog looks like the query (calibrated)
    close_match_threshold: float = 0.0  # 0 = the served model version is not calibrated


@dataclass(frozen=True)
class SearchResult:
    lists: list[ResultList]
    model_version: str
    partial: bool
    missing_shards: list[int]
    timings_ms: dict[str, float]
    hedges_sent: int

    @property
    def hits(self) -> list[Hit]:
        """The hits of the first (usually only) result list."""
        return self.lists[0].hits if self.lists else []


@dataclass(frozen=True)
class IndexResult:
    item_id: str
    ok: bool
    error_code: str
    error: str
    entries: int
    shard_id: int
    request_index: int = 0  # position in the request stream this result answers


@dataclass(frozen=True)
class ItemWrite:
    item_id: str
    applied: bool
    error_code: str  # "" when applied; NOT_FOUND, or the failure of the item's shard
    error: str
    shard_id: int


@dataclass(frozen=True)
class WriteResult:
    """Outcome of DeleteItems / UpdateMetadata, item by item (request order)."""

    items: list[ItemWrite]
    failed_shards: list[int]

    @property
    def applied(self) -> list[str]:
        return [i.item_id for i in self.items if i.applied]

    @property
    def not_found(self) -> list[str]:
        return [i.item_id for i in self.items if i.error_code == "NOT_FOUND"]

    @property
    def failed(self) -> list[ItemWrite]:
        """Items not applied because their shard failed (safe to send again)."""
        return [i for i in self.items if not i.applied and i.error_code != "NOT_FOUND"]


def write_result(r: search_pb2.DeleteItemsResponse | search_pb2.UpdateItemsMetadataResponse) -> WriteResult:
    return WriteResult(
        [ItemWrite(x.item_id, x.applied, x.error_code, x.error, x.shard_id) for x in r.results],
        list(r.failed_shards),
    )


def _delete_outcome(r: search_pb2.DeleteItemsResponse) -> tuple[int, list[str]]:
    res = write_result(r)
    if res.failed:
        raise PartialWrite(
            f"shards {res.failed_shards} failed: {len(res.failed)} ids not deleted "
            f"({', '.join(i.item_id for i in res.failed[:5])}{', ...' if len(res.failed) > 5 else ''}); "
            f"{r.deleted} deleted",
            res,
        )
    return r.deleted, list(r.not_found)


@dataclass
class MetadataUpdate:
    """A metadata-only change of one item: None = keep the stored value. `attributes` are set
    (added/overwritten), `remove_attributes` removed; replace_attributes=True makes the item's
    attributes exactly `attributes`."""

    item_id: str
    category: str | None = None
    price: float | None = None
    available: bool | None = None
    region: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    remove_attributes: list[str] = field(default_factory=list)
    replace_attributes: bool = False

    def to_pb(self) -> shard_pb2.MetadataPatch:
        p = shard_pb2.MetadataPatch(
            item_id=self.item_id, attributes=self.attributes, remove_attributes=self.remove_attributes,
            replace_attributes=self.replace_attributes,
        )
        for name in ("category", "price", "available", "region"):
            value = getattr(self, name)
            if value is not None:
                setattr(p, name, value)
        return p


def _update_request(
    updates: Iterable[MetadataUpdate | shard_pb2.MetadataPatch],
) -> search_pb2.UpdateItemsMetadataRequest:
    return search_pb2.UpdateItemsMetadataRequest(
        patches=[u if isinstance(u, shard_pb2.MetadataPatch) else u.to_pb() for u in updates]
    )


@dataclass
class IndexItem:
    item_id: str
    image: ImageLike
    category: str = ""
    price: float = 0.0
    available: bool = True
    region: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


def _hit(m: search_pb2.Match) -> Hit:
    md = m.metadata
    return Hit(
        item_id=m.item_id,
        score=m.score,
        rank_score=m.rank_score,
        category=md.category,
        price=md.price,
        available=md.available,
        region=md.region,
        attributes=dict(md.attributes),
        matched_box=Box.from_pb(m.matched_box) if m.HasField("matched_box") else None,
        exact_match=m.exact_match,
        shard_id=m.shard_id,
        duplicates=list(m.duplicates),
        close_match=m.close_match,
    )


def search_result(r: search_pb2.QueryResponse) -> SearchResult:
    t = r.timings
    return SearchResult(
        lists=[
            ResultList(
                query_box=Box.from_pb(rl.query_box) if rl.HasField("query_box") else None,
                detection_index=rl.detection_index,
                class_name=rl.class_name,
                hits=[_hit(h) for h in rl.hits],
                query_strategy=rl.query_strategy,
                no_close_match=rl.no_close_match,
                close_match_threshold=rl.close_match_threshold,
            )
            for rl in r.results
        ],
        model_version=r.model_version,
        partial=r.partial,
        missing_shards=list(r.missing_shards),
        timings_ms={"triton": t.triton_ms, "fanout": t.fanout_ms, "rerank": t.rerank_ms, "total": t.total_ms},
        hedges_sent=r.hedges_sent,
    )


def detect_result(r: search_pb2.DetectResponse) -> DetectResult:
    return DetectResult(
        detections=[
            Detection(d.index, Box.from_pb(d.box), d.class_name, d.score, d.salience, d.is_default)
            for d in r.detections
        ],
        default_index=r.default_index,
        width=r.width,
        height=r.height,
        model_version=r.model_version,
    )


def index_result(r: search_pb2.IndexItemResult) -> IndexResult:
    return IndexResult(r.item_id, r.ok, r.error_code, r.error, r.entries, r.shard_id, r.request_index)


# ---- request building -------------------------------------------------------------------------
def read_image(image: ImageLike) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def parse_filters(specs: Iterable[str]) -> shard_pb2.Filter:
    """`field=value` clauses (ANDed): `category=x`, `region=eu|us` (in-set), `available=true`,
    `price=1..20` (inclusive range; either end may be empty), `attr.colour=red`."""
    flt = shard_pb2.Filter()
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InvalidArgument(f"filter {spec!r}: want field=value")
        if name == "available":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise InvalidArgument(f"filter {spec!r}: available takes true/false")
            flt.clauses.add(field=name, bool_equals=value.lower() in ("true", "1", "yes"))
        elif name == "price":
            lo, dots, hi = value.partition("..")
            rng = shard_pb2.Range()
            try:
                if not dots:
                    rng.min = rng.max = float(value)
                else:
                    if lo:
                        rng.min = float(lo)
                    if hi:
                        rng.max = float(hi)
            except ValueError:
                raise InvalidArgument(f"filter {spec!r}: price takes a number or MIN..MAX") from None
            flt.clauses.add(field=name, range=rng)
        elif "|" in value:
            flt.clauses.add(field=name, in_set=shard_pb2.StringSet(values=value.split("|")))
        else:
            flt.clauses.add(field=name, equals=value)
    return flt


def build_query(
    *,
    image: ImageLike | None = None,
    box: Sequence[float] | None = None,
    box_index: int | None = None,
    all_objects: bool = False,
    whole_image: bool = False,
    vector: Any = None,
    model_version: str = "",
    item_id: str | None = None,
    k: int = 10,
    filters: Iterable[str] | shard_pb2.Filter = (),
    options: search_pb2.SearchOptions | None = None,
) -> search_pb2.QueryRequest:
    given = sum(x is not None for x in (image, vector, item_id))
    if given != 1:
        raise InvalidArgument("give exactly one of image, vector, item_id")
    flt = filters if isinstance(filters, shard_pb2.Filter) else parse_filters(filters)
    q = search_pb2.QueryRequest(k=k, filter=flt, options=options or search_pb2.SearchOptions())
    if image is not None:
        q.image.image = read_image(image)
        if box is not None:
            x1, y1, x2, y2 = (float(v) for v in box)
            q.image.box.CopyFrom(search_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
        elif box_index is not None:
            q.image.box_index = box_index
        elif all_objects:
            q.image.all_objects = True
        elif whole_image:
            q.image.whole_image = True
    elif vector is not None:
        q.vector.vector_f16 = vector_f16(vector)
        q.vector.model_version = model_version
    else:
        q.item_id = item_id or ""
    return q


def vector_f16(vector: Any) -> bytes:
    """Little-endian float16 bytes of a query vector: a numpy array (converted by numpy) or any
    sequence of numbers (rounded to float32 first, as numpy would, then to float16), so the client
    needs no numpy."""
    if hasattr(vector, "astype") and hasattr(vector, "tobytes"):
        return bytes(vector.astype("<f4").astype("<f2").tobytes())
    values = array("f", (float(v) for v in vector))
    return struct.pack(f"<{len(values)}e", *values)


def _index_request(item: IndexItem) -> search_pb2.IndexItemRequest:
    md = shard_pb2.ItemMetadata(
        category=item.category,
        price=item.price,
        available=item.available,
        region=item.region,
        attributes=item.attributes,
    )
    return search_pb2.IndexItemRequest(item_id=item.item_id, image=read_image(item.image), metadata=md)


def _channel_args(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


# ---- clients ----------------------------------------------------------------------------------
@dataclass
class _Settings:
    address: str
    token: str | None = None
    tls: bool = False
    root_cert: bytes | None = None
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.1
    max_message_bytes: int = 64 * 1024 * 1024

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.root_cert)


class Client:
    """Blocking client. `timeout` (seconds) is the deadline of each call, sent to the server."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: bool = False,
        root_cert: bytes | None = None,
        timeout: float = 30.0,
        retries: int = 3,
    ) -> None:
        self.s = _Settings(address, token, tls, root_cert, timeout, retries)
        opts = _channel_args(self.s.max_message_bytes)
        self._channel = (
            grpc.secure_channel(address, self.s.credentials(), opts)
            if tls
            else grpc.insecure_channel(address, opts)
        )
        self._stub = search_pb2_grpc.VisualSearchStub(self._channel)

    def _call(self, fn: Callable[..., T], req: Any, timeout: float | None) -> T:
        delay = self.s.backoff
        for attempt in range(self.s.retries + 1):
            try:
                return fn(req, timeout=timeout or self.s.timeout, metadata=self.s.metadata())
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.s.retries:  # type: ignore[attr-defined]
                    raise translate(e) from None
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def detect(self, image: ImageLike, timeout: float | None = None) -> DetectResult:
        return detect_result(
            self._call(self._stub.Detect, search_pb2.DetectRequest(image=read_image(image)), timeout)
        )

    def search_raw(
        self, req: search_pb2.QueryRequest, timeout: float | None = None
    ) -> search_pb2.QueryResponse:
        return self._call(self._stub.Search, req, timeout)

    def search(self, timeout: float | None = None, **query: Any) -> SearchResult:
        """Keyword arguments as build_query(): image/vector/item_id, box, all_objects, k, filters..."""
        return search_result(self.search_raw(build_query(**query), timeout))

    def index(self, items: Iterable[IndexItem], timeout: float | None = None) -> Iterator[IndexResult]:
        """Stream items; yields one result per item as the server finishes it (any order)."""
        try:
            for r in self._stub.IndexItems(
                (_index_request(i) for i in items), timeout=timeout, metadata=self.s.metadata()
            ):
                yield index_result(r)
        except grpc.RpcError as e:
            raise translate(e) from None

    def delete(self, item_ids: Sequence[str], timeout: float | None = None) -> tuple[int, list[str]]:
        """Returns (deleted count, ids that were not indexed); PartialWrite (with the per-item
        outcome) when a shard failed after others had deleted theirs."""
        r = self._call(
            self._stub.DeleteItems, search_pb2.DeleteItemsRequest(item_ids=list(item_ids)), timeout
        )
        return _delete_outcome(r)

    def update_metadata(
        self, updates: Iterable[MetadataUpdate | shard_pb2.MetadataPatch], timeout: float | None = None
    ) -> WriteResult:
        """Metadata-only update of up to MAX_UPSERT_BATCH items in one call (idempotent, so retried
        on UNAVAILABLE); per-item outcome, `failed` lists items whose shard failed."""
        return write_result(self._call(self._stub.UpdateMetadata, _update_request(updates), timeout))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client (grpc.aio) with the same calls, awaitable; create it inside a running loop."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: bool = False,
        root_cert: bytes | None = None,
        timeout: float = 30.0,
        retries: int = 3,
    ) -> None:
        self.s = _Settings(address, token, tls, root_cert, timeout, retries)
        opts = _channel_args(self.s.max_message_bytes)
        self._channel = (
            grpc.aio.secure_channel(address, self.s.credentials(), opts)
            if tls
            else grpc.aio.insecure_channel(address, opts)
        )
        self._stub = search_pb2_grpc.VisualSearchStub(self._channel)

    async def _call(self, fn: Callable[..., Any], req: Any, timeout: float | None) -> Any:
        delay = self.s.backoff
        for attempt in range(self.s.retries + 1):
            try:
                return await fn(req, timeout=timeout or self.s.timeout, metadata=self.s.metadata())
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.s.retries:
                    raise translate(e) from None
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def detect(self, image: ImageLike, timeout: float | None = None) -> DetectResult:
        req = search_pb2.DetectRequest(image=read_image(image))
        return detect_result(await self._call(self._stub.Detect, req, timeout))

    async def search_raw(
        self, req: search_pb2.QueryRequest, timeout: float | None = None
    ) -> search_pb2.QueryResponse:
        resp: search_pb2.QueryResponse = await self._call(self._stub.Search, req, timeout)
        return resp

    async def search(self, timeout: float | None = None, **query: Any) -> SearchResult:
        return search_result(await self.search_raw(build_query(**query), timeout))

    async def index(
        self, items: Iterable[IndexItem], timeout: float | None = None
    ) -> AsyncIterator[IndexResult]:
        call = self._stub.IndexItems(
            (_index_request(i) for i in items), timeout=timeout, metadata=self.s.metadata()
        )
        try:
            async for r in call:
                yield index_result(r)
        except grpc.aio.AioRpcError as e:
            raise translate(e) from None

    async def delete(self, item_ids: Sequence[str], timeout: float | None = None) -> tuple[int, list[str]]:
        req = search_pb2.DeleteItemsRequest(item_ids=list(item_ids))
        return _delete_outcome(await self._call(self._stub.DeleteItems, req, timeout))

    async def update_metadata(
        self, updates: Iterable[MetadataUpdate | shard_pb2.MetadataPatch], timeout: float | None = None
    ) -> WriteResult:
        r = await self._call(self._stub.UpdateMetadata, _update_request(updates), timeout)
        return write_result(r)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
