"""gRPC servicer: protobuf <-> engine, validation errors -> status codes, metrics per RPC."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any, TypeVar

import grpc

from visual_search import contract
from visual_search.errors import describe, public_message
from visual_search.shard.engine import DeadlineExceeded, ShardEngine, SyncGap
from visual_search.shard.filters import compile_filter
from visual_search.shard.metrics import ShardMetrics
from visual_search.shard.replication import Replicator
from visual_search.shard.validation import (
    ValidationError,
    VersionMismatch,
    check_id_list,
    check_model_version,
    check_search_params,
    decode_queries,
)
from visual_search.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger(__name__)
R = TypeVar("R")


class NotServing(RuntimeError):
    """This replica is still catching up with its peers: reads go to another replica."""


def _rpc(method: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Time the RPC and map known exceptions to status codes (the shard keeps serving)."""

    def deco(fn: Callable[..., R]) -> Callable[..., R]:
        @wraps(fn)
        def wrapper(self: ShardServicer, request: Any, context: grpc.ServicerContext) -> R:
            t0 = time.perf_counter()
            code, msg = grpc.StatusCode.OK, ""
            try:
                return fn(self, request, context)
            except ValidationError as exc:
                code, msg = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            except VersionMismatch as exc:
                code, msg = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
            except DeadlineExceeded as exc:
                code, msg = grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
            except NotServing as exc:
                code, msg = grpc.StatusCode.UNAVAILABLE, str(exc)
            except Exception as exc:  # noqa: BLE001 - never crash the server on one request
                log.exception("internal error", extra={"method": method})
                code, msg = grpc.StatusCode.INTERNAL, f"internal error: {describe(exc)}"
            finally:
                m = self.metrics
                m.rpc.labels(m.shard, method).observe(time.perf_counter() - t0)
                m.requests.labels(m.shard, method, code.name).inc()
            context.abort(code, public_message(msg))
            raise AssertionError("unreachable")  # context.abort raises

        return wrapper

    return deco


def _deadline_check(context: grpc.ServicerContext) -> Callable[[], bool]:
    def expired() -> bool:
        remaining = context.time_remaining()
        return remaining is not None and remaining <= 0

    return expired


class ShardServicer(shard_pb2_grpc.SearchShardServicer):
    def __init__(
        self, engine: ShardEngine, metrics: ShardMetrics, replicator: Replicator | None = None
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.replicator = replicator or Replicator(engine, [])

    def _check_serving(self) -> None:
        """Reads from a replica that has not caught up would silently miss items: refuse them
        (UNAVAILABLE, which the gateway retries on another replica). Writes are accepted."""
        if not self.replicator.caught_up.is_set():
            raise NotServing(
                f"shard {self.engine.shard_id} replica is catching up with its peers "
                f"({self.engine.replica_status()['items']} items so far); ask another replica"
            )

    @_rpc("Search")
    def Search(
        self, request: shard_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> shard_pb2.SearchResponse:
        eng = self.engine
        self._check_serving()
        check_model_version(request.model_version, eng.model_version)
        check_search_params(request)
        queries = decode_queries(request.queries, eng.dim)
        flt = compile_filter(request.filter)
        if _deadline_check(context)():
            raise DeadlineExceeded("deadline exceeded before search started")
        results, t = eng.search(
            queries,
            request.k,
            nprobe=request.nprobe,
            rescore_k=request.rescore_k,
            flt=flt,
            exact=request.exact,
            include_vectors=request.include_vectors,
            deadline=_deadline_check(context),
        )
        if request.phash > 0 and request.phash_max_distance > contract.MAX_PHASH_DISTANCE:
            raise ValidationError(
                f"phash_max_distance={request.phash_max_distance} exceeds {contract.MAX_PHASH_DISTANCE}"
            )
        exact_hits = (
            eng.exact_lookup(queries, request.phash, request.phash_max_distance, flt, contract.MAX_PHASH_HITS)
            if request.phash
            else [[] for _ in results]
        )
        m = self.metrics
        m.search_seconds.labels(m.shard).observe(t.ann_s + t.rescore_s + t.filter_s)
        m.stage.labels(m.shard, "ann").observe(t.ann_s)
        m.stage.labels(m.shard, "rescore").observe(t.rescore_s)
        m.stage.labels(m.shard, "filter").observe(t.filter_s)
        resp = shard_pb2.SearchResponse(
            model_version=eng.model_version,
            shard_id=eng.shard_id,
            ann_us=int(t.ann_s * 1e6),
            rescore_us=int(t.rescore_s * 1e6),
            filter_us=int(t.filter_s * 1e6),
        )
        for hits, exact in zip(results, exact_hits, strict=True):
            res = resp.results.add()
            for out, found in ((res.hits, hits), (res.exact_hits, exact)):
                for h in found:
                    out.add(
                        item_id=h.item_id,
                        entry_id=h.entry_id,
                        score=h.score,
                        metadata=h.metadata,
                        box=h.box,
                        vector_f16=h.vector_f16,
                    )
        return resp

    @_rpc("Upsert")
    def Upsert(
        self, request: shard_pb2.UpsertRequest, context: grpc.ServicerContext
    ) -> shard_pb2.UpsertResponse:
        check_model_version(request.model_version, self.engine.model_version)
        if _deadline_check(context)():
            raise DeadlineExceeded("deadline exceeded before the write; nothing was written")
        out = self.engine.upsert(request)
        return shard_pb2.UpsertResponse(
            upserted_items=out.items,
            upserted_entries=out.entries,
            wal_sequence=out.wal_sequence,
            superseded=out.superseded,
        )

    @_rpc("UpsertStream")
    def UpsertStream(
        self, request_iterator: Iterator[shard_pb2.UpsertRequest], context: grpc.ServicerContext
    ) -> shard_pb2.UpsertResponse:
        """Each message is validated and made durable on arrival; on a bad message the error names
        it and says how much was already written (earlier messages stay written)."""
        items = entries = seq = 0
        superseded: list[str] = []
        for i, request in enumerate(request_iterator):
            try:
                check_model_version(request.model_version, self.engine.model_version)
                out = self.engine.upsert(request)
            except (ValidationError, VersionMismatch) as exc:
                raise type(exc)(
                    f"stream message {i}: {exc} (messages 0..{i - 1} were written: "
                    f"{items} items, wal_sequence {seq})"
                ) from exc
            items += out.items
            entries += out.entries
            seq = out.wal_sequence
            superseded.extend(out.superseded)
        return shard_pb2.UpsertResponse(
            upserted_items=items, upserted_entries=entries, wal_sequence=seq, superseded=superseded
        )

    @_rpc("Delete")
    def Delete(
        self, request: shard_pb2.DeleteRequest, context: grpc.ServicerContext
    ) -> shard_pb2.DeleteResponse:
        check_id_list(request.item_ids, "item_ids")
        out = self.engine.delete(list(request.item_ids), request.version)
        return shard_pb2.DeleteResponse(
            deleted=out.deleted,
            not_found=out.not_found,
            wal_sequence=out.wal_sequence,
            superseded=out.superseded,
        )

    @_rpc("UpdateMetadata")
    def UpdateMetadata(
        self, request: shard_pb2.UpdateMetadataRequest, context: grpc.ServicerContext
    ) -> shard_pb2.UpdateMetadataResponse:
        """Write: metadata-only patches, all-or-nothing per request, WAL-durable before the answer."""
        if _deadline_check(context)():
            raise DeadlineExceeded("deadline exceeded before the write; nothing was written")
        out = self.engine.update_metadata(request.patches, request.version)
        return shard_pb2.UpdateMetadataResponse(
            updated=out.updated, not_found=out.not_found, wal_sequence=out.wal_sequence,
            superseded=out.superseded,
        )

    @_rpc("Get")
    def Get(self, request: shard_pb2.GetRequest, context: grpc.ServicerContext) -> shard_pb2.GetResponse:
        self._check_serving()
        check_id_list(request.item_ids, "item_ids")
        items, missing = self.engine.get(list(request.item_ids), request.include_vectors)
        return shard_pb2.GetResponse(items=items, not_found=missing)

    @_rpc("Stats")
    def Stats(
        self, request: shard_pb2.StatsRequest, context: grpc.ServicerContext
    ) -> shard_pb2.StatsResponse:
        eng = self.engine
        return shard_pb2.StatsResponse(
            shard_id=eng.shard_id, model_version=eng.model_version, dim=eng.dim, **eng.stats()
        )

    @_rpc("Rebuild")
    def Rebuild(
        self, request: shard_pb2.RebuildRequest, context: grpc.ServicerContext
    ) -> shard_pb2.RebuildResponse:
        started, message = self.engine.rebuild(wait=request.wait)
        return shard_pb2.RebuildResponse(started=started, message=message)

    @_rpc("Snapshot")
    def Snapshot(
        self, request: shard_pb2.SnapshotRequest, context: grpc.ServicerContext
    ) -> shard_pb2.SnapshotResponse:
        seq, path = self.engine.snapshot()
        return shard_pb2.SnapshotResponse(wal_sequence=seq, path=path)

    @_rpc("ReplicaStatus")
    def ReplicaStatus(
        self, request: shard_pb2.ReplicaStatusRequest, context: grpc.ServicerContext
    ) -> shard_pb2.ReplicaStatusResponse:
        eng = self.engine
        return shard_pb2.ReplicaStatusResponse(
            shard_id=eng.shard_id,
            model_version=eng.model_version,
            caught_up=self.replicator.caught_up.is_set(),
            peers=self.replicator.peer_states(),
            **eng.replica_status(),
        )

    def Sync(
        self, request: shard_pb2.SyncRequest, context: grpc.ServicerContext
    ) -> Iterator[shard_pb2.SyncRecord]:
        """Served whether or not this replica has caught up: what it holds is versioned, so a
        puller can only gain from it (fresh clusters seed each other this way)."""
        m = self.metrics
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield from self.engine.sync_records(
                request.replica_uid, request.after_seq, request.batch_items or 256
            )
        except SyncGap as exc:
            code = grpc.StatusCode.ABORTED
            context.abort(code, public_message(str(exc)))
        except Exception as exc:  # noqa: BLE001 - never crash the server on one request
            log.exception("internal error", extra={"method": "Sync"})
            code = grpc.StatusCode.INTERNAL
            context.abort(code, f"internal error: {describe(exc)}")
        finally:
            m.rpc.labels(m.shard, "Sync").observe(time.perf_counter() - t0)
            m.requests.labels(m.shard, "Sync", code.name).inc()

    @_rpc("Repair")
    def Repair(
        self, request: shard_pb2.RepairRequest, context: grpc.ServicerContext
    ) -> shard_pb2.RepairResponse:
        copied, peers = self.replicator.repair()
        return shard_pb2.RepairResponse(
            peers=peers, items_copied=copied, digest=self.engine.replica_status()["digest"]
        )
