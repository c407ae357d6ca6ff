"""The VisualSearch gRPC servicer: boundary checks, deadlines, stage timings, error mapping.

Deadlines: the caller's remaining time (or config.default_deadline_s when none) bounds Triton
and every shard call; shards get it minus a small margin so merge and re-rank still fit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from visual_search import calibration, contract
from visual_search.errors import public_message
from visual_search.gateway import validation as V
from visual_search.gateway.config import GatewayConfig
from visual_search.gateway.cpu import image_info, shared_pool
from visual_search.gateway.embedder import Embedder, InferenceError, inference_status
from visual_search.gateway.fanout import ShardCallError, ShardFanout, ShardUnavailable
from visual_search.gateway.ingest import Indexer
from visual_search.gateway.labels import class_name
from visual_search.gateway.merge import Candidate, fuse_max, merge_topk
from visual_search.gateway.metrics import GatewayMetrics
from visual_search.gateway.query import resolve
from visual_search.gateway.rerank import RerankParams, rerank
from visual_search.gateway.writes import item_results, under_replicated, write_by_owner
from visual_search.v1 import search_pb2, search_pb2_grpc, shard_pb2

log = logging.getLogger(__name__)
R = TypeVar("R")
_DUP_MARGIN = 5  # extra candidates per shard beyond k * candidate_factor


def _box(b: tuple[float, ...] | Any) -> search_pb2.Box | None:
    b = tuple(b)
    return search_pb2.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]) if len(b) == 4 else None


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def api_method(name: str) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """Map gateway errors to gRPC statuses and count calls per method/code."""

    def wrap(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        @functools.wraps(fn)
        async def inner(self: VisualSearchService, request: Any, context: grpc.aio.ServicerContext) -> R:
            code = grpc.StatusCode.UNKNOWN  # what grpc reports for an exception not mapped below
            t0 = time.monotonic()
            self.metrics.inflight.inc()
            try:
                result = await fn(self, request, context)
                code = grpc.StatusCode.OK
                return result
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except V.ApiError as e:
                code, msg = e.code, e.message
            except ShardCallError as e:
                code, msg = e.code, str(e)
            except ShardUnavailable as e:
                code, msg = grpc.StatusCode.UNAVAILABLE, str(e)
            except InferenceError as e:
                code, msg = inference_status(e), f"inference failed: {e.message}"
                if code == grpc.StatusCode.UNAVAILABLE:
                    msg += (
                        " (Triton unreachable: photo queries are NOT_SERVING; vector and item-id "
                        "queries still work)"
                    )
            except TimeoutError:
                code, msg = grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
            finally:
                self.metrics.inflight.dec()
                self.metrics.requests.labels(name, code.name).inc()
                self.metrics.request_seconds.labels(name).observe(time.monotonic() - t0)
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                self.metrics.version_mismatch.inc()
            await context.abort(code, public_message(msg))
            raise AssertionError("unreachable")

        return inner

    return wrap


def close_match_threshold(cfg: GatewayConfig, model_version: str) -> float:
    """The configured threshold, else the served version's calibrated one, else 0 (uncalibrated:
    nothing is flagged either way, and responses carry threshold 0 so clients can tell)."""
    if cfg.close_match_threshold is not None:
        return calibration.check_threshold(cfg.close_match_threshold)
    try:
        cal = calibration.load(model_version)
    except calibration.CalibrationError as e:
        log.error("close-match threshold not loaded, serving uncalibrated: %s", e)
        return 0.0
    if cal is None:
        log.warning("model version %s has no close-match calibration (%s): serving uncalibrated",
                    model_version, calibration.default_path())
        return 0.0
    log.info("close-match threshold %.4f (calibrated for %s)", cal.threshold, model_version)
    return cal.threshold


class VisualSearchService(search_pb2_grpc.VisualSearchServicer):
    def __init__(
        self, cfg: GatewayConfig, fanout: ShardFanout, embedder: Embedder | None,
        metrics: GatewayMetrics, model_version: str,
    ) -> None:
        self.cfg = cfg
        self.fanout = fanout
        self.embedder = embedder
        self.metrics = metrics
        self.model_version = model_version
        self.close_threshold = close_match_threshold(cfg, model_version)
        self.cpu = shared_pool(cfg.cpu_workers, cfg.cpu_max_pending, cfg.cpu_inline)
        self.indexer = Indexer(
            embedder, fanout, model_version, cfg.index_triton_concurrency, cfg.index_upsert_batch,
            self.cpu,
        )

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        budget = self.cfg.default_deadline_s if remaining is None else min(remaining, 3600.0)
        return time.monotonic() + budget

    @api_method("Detect")
    async def Detect(
        self, request: search_pb2.DetectRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.DetectResponse:
        t0 = time.monotonic()
        info = await self.cpu.run(image_info, request.image, False)  # off the event loop, bounded
        if self.embedder is None:
            raise V.ApiError(grpc.StatusCode.UNAVAILABLE, "Detect needs Triton (not configured)")
        w, h = info.width, info.height
        t1 = time.monotonic()
        self.metrics.stage_seconds.labels("decode").observe(t1 - t0)
        objs = await self.embedder.detect(request.image, w, h, self._deadline(context) - time.monotonic())
        triton_s = time.monotonic() - t1
        self.metrics.stage_seconds.labels("detect").observe(triton_s)

        resp = search_pb2.DetectResponse(
            width=w, height=h, model_version=self.model_version, default_index=0 if len(objs) else -1,
            timings=search_pb2.StageTimings(triton_ms=_ms(triton_s), total_ms=_ms(time.monotonic() - t0)),
        )
        for i in range(len(objs)):
            resp.detections.add(
                index=i, box=_box(objs.boxes[i]), class_id=int(objs.classes[i]),
                class_name=class_name(int(objs.classes[i])), score=float(objs.scores[i]),
                salience=float(objs.salience[i]), is_default=i == 0,
            )
        return resp

    @api_method("Search")
    async def Search(
        self, request: search_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.QueryResponse:
        t0 = time.monotonic()
        V.check_k(request.k)
        V.check_filter(request.filter)
        checks_s = time.monotonic() - t0
        opts = request.options
        deadline = self._deadline(context)
        rq = await resolve(
            request, self.embedder, self.fanout, self.model_version, deadline,
            self.cfg.single_call_default_box, self.cpu, self.cfg.query_strategy,
        )
        rq.stage_s["decode"] = rq.stage_s.get("decode", 0.0) + checks_s
        for stage, seconds in rq.stage_s.items():
            self.metrics.stage_seconds.labels(stage).observe(seconds)
        collapse = not opts.keep_duplicates
        k_shard = request.k * (self.cfg.candidate_factor if collapse else 1) + _DUP_MARGIN * collapse
        k_shard = min(contract.MAX_K, k_shard + (1 if rq.exclude_item else 0))
        # one shard query per vector; a "max" result list has two (default box, whole image)
        vectors = [v for s in rq.specs for v in s.vectors]
        shard_req = shard_pb2.SearchRequest(
            queries=[shard_pb2.QueryVector(vector_f16=v.astype("<f2").tobytes()) for v in vectors],
            k=k_shard, nprobe=opts.nprobe, rescore_k=opts.rescore_k, filter=request.filter,
            model_version=self.model_version, exact=opts.exact, include_vectors=collapse,
        )
        if rq.query_phash and not opts.no_exact_lookup:  # hash-first: exact copies even outside the hits
            shard_req.phash, shard_req.phash_max_distance = rq.query_phash, self.cfg.phash_max_distance
        t1 = time.monotonic()
        budget = opts.shard_budget_ms / 1e3 if opts.shard_budget_ms else None
        fan = await self.fanout.search(shard_req, deadline - self.cfg.shard_margin_s, budget)
        fanout_s = time.monotonic() - t1
        self.metrics.stage_seconds.labels("fanout").observe(fanout_s)
        if not fan.responses:
            detail = "; ".join(f"shard {s}: {m}" for s, m in sorted(fan.errors.items()))
            # out of time is the caller's deadline, not an outage: say so, so clients don't fail over
            spent = time.monotonic() >= deadline - self.cfg.shard_margin_s
            code = grpc.StatusCode.DEADLINE_EXCEEDED if spent else grpc.StatusCode.UNAVAILABLE
            raise V.ApiError(code, f"no shard answered{' before the deadline' if spent else ''} ({detail})")
        t2 = time.monotonic()
        params = RerankParams(
            boost_available=self.cfg.boost_available, boost_region=self.cfg.boost_region,
            user_region=opts.user_region, business=not opts.no_business_rerank, collapse=collapse,
            dedup_threshold=self.cfg.dedup_threshold, query_phash=rq.query_phash,
            phash_max_distance=self.cfg.phash_max_distance,
        )
        resp = search_pb2.QueryResponse(
            model_version=self.model_version, partial=bool(fan.missing),
            missing_shards=sorted(fan.missing), hedges_sent=fan.hedges_sent,
        )
        merge_s = 0.0
        first = 0  # index of this result list's first shard query
        for spec in rq.specs:
            tm = time.monotonic()
            per_query = []
            for qi in range(first, first + len(spec.vectors)):
                per_shard = [
                    (sid, [*r.results[qi].hits, *r.results[qi].exact_hits])
                    for sid, r in fan.responses.items()
                    if qi < len(r.results)
                ]
                per_query.append(merge_topk(per_shard, 10**9))
            first += len(spec.vectors)
            # several vectors (the "max" strategy): each item keeps its best score over them
            cands = per_query[0] if len(per_query) == 1 else fuse_max(per_query)
            if rq.exclude_item and not opts.include_self:
                cands = [c for c in cands if c.item_id != rq.exclude_item]
            merge_s += time.monotonic() - tm
            ranked = rerank(cands, request.k, params)
            rl = resp.results.add(detection_index=spec.detection_index, class_name=spec.class_name,
                                  query_strategy=spec.strategy, close_match_threshold=self.close_threshold)
            qb = _box(spec.box)
            if qb is not None:
                rl.query_box.CopyFrom(qb)
            rl.hits.extend(self._match(c, self.close_threshold) for c in ranked)
            rl.no_close_match = self.close_threshold > 0 and not any(h.close_match for h in rl.hits)
        rerank_s = time.monotonic() - t2  # the API's rerank_ms keeps merge + re-rank together
        self.metrics.stage_seconds.labels("merge").observe(merge_s)
        self.metrics.stage_seconds.labels("rerank").observe(rerank_s - merge_s)
        total = time.monotonic() - t0  # end to end is vsearch_gateway_request_seconds{method="Search"}
        t = resp.timings
        t.triton_ms, t.fanout_ms, t.rerank_ms, t.total_ms = map(_ms, (rq.triton_s, fanout_s, rerank_s, total))
        return resp

    @staticmethod
    def _match(c: Candidate, close_threshold: float) -> search_pb2.Match:
        m = search_pb2.Match(
            item_id=c.item_id, score=c.score, rank_score=c.rank_score, metadata=c.metadata,
            entry_id=c.entry_id, exact_match=c.exact_match, shard_id=c.shard_id, duplicates=c.duplicates,
            close_match=calibration.is_close(c.score, c.exact_match, close_threshold),
        )
        mb = _box(c.box)
        if mb is not None:
            m.matched_box.CopyFrom(mb)
        return m

    async def IndexItems(
        self, request_iterator: AsyncIterator[search_pb2.IndexItemRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[search_pb2.IndexItemResult]:
        """Index items concurrently (bounded); stream each result as soon as it is known, tagged with
        its request's position in the stream. Items with the same id are written in stream order
        (each waits for the previous version's write), so the last one sent wins."""
        results: asyncio.Queue[search_pb2.IndexItemResult | None] = asyncio.Queue()
        sem = asyncio.Semaphore(self.cfg.index_concurrency)
        latest: dict[str, asyncio.Event] = {}  # item id -> set when its latest queued version is done

        async def one(index: int, req: search_pb2.IndexItemRequest, prev: asyncio.Event | None,
                      mine: asyncio.Event) -> None:
            # each item gets the configured budget, capped by what is left of the stream's deadline
            remaining = context.time_remaining()
            timeout = self.cfg.index_item_timeout_s
            if remaining is not None:
                timeout = min(timeout, remaining)
            try:
                res = await self.indexer.index(req, timeout, prev.wait if prev is not None else None)
            except Exception as e:  # a bug must not kill the stream: report it for this item
                log.exception("indexing %r failed", req.item_id)
                res = search_pb2.IndexItemResult(item_id=req.item_id, error_code="INTERNAL", error=repr(e))
            finally:
                mine.set()
                if latest.get(req.item_id) is mine:
                    del latest[req.item_id]
                sem.release()
            res.request_index = index
            self.metrics.indexed_items.labels("ok" if res.ok else res.error_code).inc()
            await results.put(res)

        async def pump() -> None:
            tasks: list[asyncio.Task[None]] = []
            try:
                index = 0
                async for req in request_iterator:
                    await sem.acquire()
                    mine = asyncio.Event()
                    prev, latest[req.item_id] = latest.get(req.item_id), mine
                    tasks.append(asyncio.create_task(one(index, req, prev, mine)))
                    index += 1
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                await results.put(None)

        pumper = asyncio.create_task(pump())
        try:
            while (res := await results.get()) is not None:
                yield res
            await pumper  # re-raise a broken request stream
        finally:
            pumper.cancel()

    @api_method("DeleteItems")
    async def DeleteItems(
        self, request: search_pb2.DeleteItemsRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.DeleteItemsResponse:
        """Validated whole before any shard is touched; per-item results if a shard fails."""
        V.check_delete_ids(request.item_ids)
        item_ids = list(dict.fromkeys(request.item_ids))
        outcomes = await write_by_owner(
            self.fanout, item_ids, "Delete",
            lambda pos: shard_pb2.DeleteRequest(item_ids=[item_ids[p] for p in pos]), self._deadline(context),
        )
        not_found = {i for o in outcomes for i in o.not_found}
        results, failed = item_results(item_ids, outcomes, not_found)
        resp = search_pb2.DeleteItemsResponse(results=results, failed_shards=failed)
        resp.deleted = sum(o.response.deleted for o in outcomes if o.response is not None)
        resp.not_found.extend(r.item_id for r in results if r.error_code == "NOT_FOUND")
        resp.under_replicated.extend(under_replicated(item_ids, outcomes, not_found))
        return resp

    @api_method("UpdateMetadata")
    async def UpdateMetadata(
        self, request: search_pb2.UpdateItemsMetadataRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.UpdateItemsMetadataResponse:
        """Metadata-only patches routed to the owning shards (vectors untouched); validated whole
        first; per-item results (applied / NOT_FOUND / the failure of the item's shard)."""
        V.check_patches(request.patches)
        patches = request.patches
        item_ids = [p.item_id for p in patches]
        outcomes = await write_by_owner(
            self.fanout, item_ids, "UpdateMetadata",
            lambda pos: shard_pb2.UpdateMetadataRequest(patches=[patches[p] for p in pos]),
            self._deadline(context),
        )
        not_found = {i for o in outcomes for i in o.not_found}
        results, failed = item_results(item_ids, outcomes, not_found)
        resp = search_pb2.UpdateItemsMetadataResponse(results=results, failed_shards=failed)
        resp.updated = sum(o.response.updated for o in outcomes if o.response is not None)
        resp.not_found.extend(r.item_id for r in results if r.error_code == "NOT_FOUND")
        resp.under_replicated.extend(under_replicated(item_ids, outcomes, not_found))
        return resp
