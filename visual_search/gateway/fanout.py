"""Fan-out to N shards x R replicas over grpc.aio: hedged searches, routed writes, partial results.

Every query goes to every shard in parallel; within a shard the replicas are hedged (hedging.py).
A shard that errors or misses the deadline is reported missing and the query answers from the
others with partial=true; only when no shard answers is the query failed (UNAVAILABLE). Writes
go to every replica of the item's owning shard (ids.shard_for), stamped with a last-write-wins
version; a write is acknowledged once `write_quorum` replicas applied it (config.py), and the
outcome says when fewer than all did (the shards' repair copies it to the others).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from visual_search import ids
from visual_search.errors import describe
from visual_search.gateway.config import GatewayConfig
from visual_search.gateway.hedging import AllAttemptsFailed, LatencyWindow, hedged
from visual_search.gateway.metrics import GatewayMetrics
from visual_search.shard import auth as shard_auth
from visual_search.shard.versions import HybridClock
from visual_search.v1 import shard_pb2, shard_pb2_grpc

# Replica failures worth trying another replica for; anything else is the request's fault.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
log = logging.getLogger("visual_search.gateway.fanout")
_BAD_REPLICA_S = 1.0  # a replica that just failed goes to the back of the queue this long


def _code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    if isinstance(exc, asyncio.TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.UNKNOWN


def _retryable(exc: BaseException) -> bool:
    return _code(exc) in RETRYABLE


class ShardCallError(Exception):
    """A shard refused the request itself (e.g. INVALID_ARGUMENT): surfaced to the caller as is."""

    def __init__(self, shard_id: int, exc: grpc.aio.AioRpcError) -> None:
        super().__init__(f"shard {shard_id}: {exc.details()}")
        self.code = exc.code()
        self.details = exc.details() or ""


@dataclass
class WriteOutcome:
    """A write acknowledged by at least the quorum of one shard's replicas."""

    responses: list[Any]  # of the replicas that applied it
    replicas: int  # replicas of the shard
    failed: dict[str, str] = field(default_factory=dict)  # replica address -> why not (yet)

    @property
    def under_replicated(self) -> bool:
        return len(self.responses) < self.replicas


def stamp_versions(method: str, req: Any, clock: HybridClock) -> Any:
    """A copy of an Upsert/Delete/UpdateMetadata request with a version on every write that has
    none: one version for all replicas, so they agree on which write of an item is the last."""
    out = type(req)()
    out.CopyFrom(req)
    if method in ("Delete", "UpdateMetadata"):
        out.version = out.version or clock.now()
    else:
        for item in out.items:
            item.version = item.version or clock.now()
    return out


def quorum_size(policy: str, replicas: int) -> int:
    """Replicas that must apply a write before it is acknowledged (config.WRITE_QUORUMS)."""
    return {"all": replicas, "majority": replicas // 2 + 1, "one": 1}[policy]


@dataclass
class FanoutResult:
    responses: dict[int, shard_pb2.SearchResponse] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    hedges_sent: int = 0


class ReplicaSet:
    """The replicas of one shard: stubs, a rotating preference order, recent latencies."""

    def __init__(
        self,
        shard_id: int,
        addresses: tuple[str, ...],
        options: list[tuple[str, int]],
        token: str | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.addresses = addresses
        # every call carries the shard token (shard/auth.py)
        self.channels = [shard_auth.aio_channel(a, token, options) for a in addresses]
        self.stubs = [shard_pb2_grpc.SearchShardStub(c) for c in self.channels]
        self.latency = LatencyWindow()
        self._next = random.randrange(len(addresses))
        self._bad_until = [0.0] * len(addresses)
        self.late_call: asyncio.Future[Any] | None = None  # at most one over-budget search left running

    def order(self) -> list[int]:
        """Replica indexes to try: round-robin start, recently failed replicas last."""
        n = len(self.stubs)
        start = self._next
        self._next = (self._next + 1) % n
        rot = [(start + i) % n for i in range(n)]
        now = time.monotonic()
        return sorted(rot, key=lambda i: self._bad_until[i] > now)

    def mark_bad(self, i: int) -> None:
        self._bad_until[i] = time.monotonic() + _BAD_REPLICA_S

    def late_call_done(self, task: asyncio.Future[Any]) -> None:
        """A search that ran over its budget finished (its time was recorded by _call on success)."""
        self.late_call = None
        if not task.cancelled():
            task.exception()  # retrieved: a failure here was already counted by _call


class ShardFanout:
    def __init__(self, cfg: GatewayConfig, metrics: GatewayMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        opts = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
        ]
        token = cfg.shard_token or shard_auth.load_token()
        self.shards = [ReplicaSet(i, addrs, opts, token) for i, addrs in enumerate(cfg.shard_map.shards)]
        self.clock = HybridClock()  # versions of the writes this gateway sends

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    async def close(self) -> None:
        for rs in self.shards:
            for ch in rs.channels:
                await ch.close()

    def _record_failure(self, rs: ReplicaSet, replica: int, exc: BaseException, method: str) -> None:
        code = _code(exc)
        reason = {grpc.StatusCode.DEADLINE_EXCEEDED: "deadline", grpc.StatusCode.UNAVAILABLE: "unavailable"}
        self.metrics.shard_failures.labels(str(rs.shard_id), reason.get(code, "error")).inc()
        # one structured line per failed shard call; no query content (vectors, filters, ids)
        log.warning(
            "shard call failed",
            extra={
                "event": "shard_call_failed",
                "shard": rs.shard_id,
                "replica": rs.addresses[replica],
                "method": method,
                "code": code.name,
            },
        )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            rs.mark_bad(replica)

    async def _call(
        self, rs: ReplicaSet, method: str, req: Any, deadline: float, hedge: bool
    ) -> tuple[Any, int]:
        """One logical call to a shard: hedged (reads) or failover-only (hedge=False).

        Returns (response, hedges sent).
        """
        order = rs.order()

        def attempt(i: int) -> Callable[[], Awaitable[Any]]:
            async def run() -> Any:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise TimeoutError()
                try:
                    return await getattr(rs.stubs[i], method)(req, timeout=timeout)
                except BaseException as exc:
                    if not isinstance(exc, asyncio.CancelledError):
                        self._record_failure(rs, i, exc, method)
                    raise

            return run

        cfg = self.cfg
        delay = (
            rs.latency.hedge_delay(
                cfg.hedge_delay_ms / 1e3, cfg.hedge_min_ms / 1e3, cfg.hedge_max_ms / 1e3, cfg.hedge_adaptive
            )
            if hedge
            else 1e9
        )
        t0 = time.monotonic()
        out = await hedged([attempt(i) for i in order], delay, _retryable)
        elapsed = time.monotonic() - t0
        rs.latency.add(elapsed)
        label = str(rs.shard_id)
        self.metrics.shard_seconds.labels(label).observe(elapsed)
        if out.hedges_sent:
            self.metrics.hedges.labels(label, "sent").inc(out.hedges_sent)
        if out.hedge_won:
            self.metrics.hedges.labels(label, "won").inc()
        return out.value, out.hedges_sent

    def shard_budget(self, rs: ReplicaSet) -> float:
        """Seconds a shard gets to answer a search (config: fixed, or adaptive from its p99)."""
        cfg = self.cfg
        if cfg.shard_budget_ms > 0:
            return cfg.shard_budget_ms / 1e3
        return rs.latency.budget(
            cfg.shard_budget_factor, cfg.shard_budget_min_ms / 1e3, cfg.shard_budget_max_ms / 1e3
        )

    async def _search_one(
        self,
        rs: ReplicaSet,
        req: shard_pb2.SearchRequest,
        deadline: float,
        budget: float | None,
        answered: asyncio.Event,
    ) -> tuple[shard_pb2.SearchResponse, int]:
        t0 = time.monotonic()
        budget = self.shard_budget(rs) if budget is None else budget
        if t0 + budget >= deadline:
            return await self._call(rs, "Search", req, deadline, hedge=True)
        # The call itself may run up to the cap: if it is the shard's only late call, it is left
        # to finish after the answer went out, so its time still enters the p99 (a shard that got
        # slower raises its own budget; a stalled one never answers and changes nothing).
        call_deadline = min(deadline, t0 + max(budget, self.cfg.shard_budget_max_ms / 1e3))
        task = asyncio.ensure_future(self._call(rs, "Search", req, call_deadline, hedge=True))
        waiter: asyncio.Future[Any] | None = None
        try:
            done, _ = await asyncio.wait({task}, timeout=budget)
            if task not in done and not answered.is_set():
                # No shard has answered yet (an overloaded host slows them all): the budget drops
                # the slow ones from an answer, it must not turn a slow answer into none. Wait for
                # this shard or the first other one, at most to the call's own deadline.
                waiter = asyncio.ensure_future(answered.wait())
                done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if task not in done:  # another shard answered first: one more budget from then
                    done, _ = await asyncio.wait({task}, timeout=budget)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            if waiter is not None:
                waiter.cancel()
        if task in done:
            return task.result()
        if rs.late_call is None:
            rs.late_call = task
            task.add_done_callback(rs.late_call_done)
        else:
            task.cancel()
        raise ShardOverBudget(rs.shard_id, budget)

    async def search(
        self, req: shard_pb2.SearchRequest, deadline: float, budget: float | None = None
    ) -> FanoutResult:
        """Query every shard in parallel, each within its time budget (`budget` seconds, else the
        shard's own, see shard_budget) and the deadline; a shard that errs or runs over is listed
        missing, not fatal (unless all miss): the answer never waits for a stalled shard longer than
        its budget after the first shard answered; while none has, they get up to the budget cap."""
        answered = asyncio.Event()

        async def one(rs: ReplicaSet) -> tuple[shard_pb2.SearchResponse, int]:
            out = await self._search_one(rs, req, deadline, budget, answered)
            answered.set()
            return out

        tasks = [asyncio.ensure_future(one(rs)) for rs in self.shards]
        result = FanoutResult()
        try:
            await asyncio.wait(tasks)
        finally:  # the caller went away (cancelled): stop the shard calls it no longer waits for
            for task in tasks:
                task.cancel()
        for rs, task in zip(self.shards, tasks, strict=True):
            exc = task.exception()
            if exc is None:
                resp, hedges = task.result()
                result.responses[rs.shard_id] = resp
                result.hedges_sent += hedges
                continue
            if isinstance(exc, grpc.aio.AioRpcError) and not _retryable(exc):
                raise ShardCallError(rs.shard_id, exc)
            result.missing.append(rs.shard_id)
            result.errors[rs.shard_id] = _describe(exc)
        if result.missing:
            self.metrics.partial_results.inc()
        return result

    def owner(self, item_id: str) -> ReplicaSet:
        return self.shards[ids.shard_for(item_id, self.num_shards)]

    async def get(self, item_id: str, deadline: float, include_vectors: bool = True) -> shard_pb2.GetResponse:
        rs = self.owner(item_id)
        req = shard_pb2.GetRequest(item_ids=[item_id], include_vectors=include_vectors)
        try:
            resp, _ = await self._call(rs, "Get", req, deadline, hedge=True)
        except AllAttemptsFailed as e:
            raise ShardUnavailable(rs.shard_id, e) from e
        except grpc.aio.AioRpcError as e:  # hedged() re-raises only non-retryable refusals
            raise ShardCallError(rs.shard_id, e) from e
        return resp  # type: ignore[no-any-return]

    async def write(self, shard_id: int, method: str, req: Any, deadline: float) -> WriteOutcome:
        """Send a write (Upsert/Delete/UpdateMetadata) to every replica of a shard. Acknowledged once
        the write quorum applied it; stragglers get `write_grace_s` more, then count as not (yet) applied.
        Raises ShardCallError when a replica refuses the request itself, ShardUnavailable below
        the quorum (a replica that did apply it passes it on through repair; a retry supersedes)."""
        rs = self.shards[shard_id]
        req = stamp_versions(method, req, self.clock)
        need = quorum_size(self.cfg.write_quorum, len(rs.stubs))

        async def one(i: int) -> Any:
            timeout = max(0.001, deadline - time.monotonic())
            try:
                return await getattr(rs.stubs[i], method)(req, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                self._record_failure(rs, i, exc, method)
                raise

        tasks = {asyncio.ensure_future(one(i)): i for i in range(len(rs.stubs))}
        ok: dict[int, Any] = {}
        failed: dict[int, BaseException] = {}
        pending = set(tasks)
        grace_until: float | None = None
        try:
            while pending:
                limit = deadline if grace_until is None else min(deadline, grace_until)
                done, pending = await asyncio.wait(
                    pending, timeout=max(0.0, limit - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break  # out of time (deadline, or the grace after the quorum)
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        ok[tasks[task]] = task.result()
                    else:
                        failed[tasks[task]] = exc
                if len(ok) >= need and grace_until is None:
                    grace_until = time.monotonic() + self.cfg.write_grace_s
        finally:
            for task in pending:
                task.cancel()
        for exc in failed.values():
            if isinstance(exc, grpc.aio.AioRpcError) and not _retryable(exc):
                raise ShardCallError(rs.shard_id, exc)
        why = {rs.addresses[i]: _describe(e) for i, e in failed.items()}
        why.update({rs.addresses[tasks[t]]: "no answer in time" for t in pending})
        if len(ok) < need:
            self.metrics.writes.labels(str(rs.shard_id), "below_quorum").inc()
            raise ShardUnavailable(
                rs.shard_id,
                WriteBelowQuorum(len(ok), len(rs.stubs), need, self.cfg.write_quorum, why),
            )
        self.metrics.writes.labels(str(rs.shard_id), "all" if len(ok) == len(rs.stubs) else "quorum").inc()
        self.metrics.last_write_ack.labels(str(rs.shard_id)).set(time.time())
        return WriteOutcome([ok[i] for i in sorted(ok)], len(rs.stubs), why)

    async def stats(self, deadline: float) -> list[shard_pb2.StatsResponse | None]:
        async def one(rs: ReplicaSet) -> shard_pb2.StatsResponse | None:
            try:
                resp, _ = await self._call(rs, "Stats", shard_pb2.StatsRequest(), deadline, hedge=False)
                return resp  # type: ignore[no-any-return]
            except (AllAttemptsFailed, grpc.aio.AioRpcError):
                return None

        return list(await asyncio.gather(*(one(rs) for rs in self.shards)))


class ShardOverBudget(Exception):
    """A shard did not answer a search within its time budget (it is left out of the answer)."""

    def __init__(self, shard_id: int, budget: float) -> None:
        super().__init__(f"shard {shard_id}: no answer within its {budget * 1e3:.0f} ms budget")
        self.shard_id = shard_id


class ShardUnavailable(Exception):
    """No replica of a shard could serve a call that has no partial answer (get / write)."""

    def __init__(self, shard_id: int, cause: BaseException, replica: str | None = None) -> None:
        where = f"shard {shard_id}" + (f" replica {replica}" if replica else "")
        super().__init__(f"{where} unavailable: {_describe(cause)}")
        self.shard_id = shard_id


class WriteBelowQuorum(Exception):
    def __init__(self, applied: int, replicas: int, need: int, policy: str, why: dict[str, str]) -> None:
        detail = "; ".join(f"{a}: {w}" for a, w in sorted(why.items()))
        super().__init__(
            f"write applied on {applied} of {replicas} replicas, below the write quorum "
            f"({policy} = {need}); not acknowledged: retry it ({detail})"
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AllAttemptsFailed) and exc.errors:
        exc = exc.errors[-1]
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, asyncio.TimeoutError):
        return "DEADLINE_EXCEEDED"
    return describe(exc)
