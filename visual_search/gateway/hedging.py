"""Hedged requests (R14): ask one replica; if it has not answered after `delay`, ask the next.

The first successful answer wins and the others are cancelled. A replica that fails with a
retryable error is replaced at once (failover, not a hedge); an error that is the caller's fault
(bad argument, wrong model version) is raised immediately, since every replica would say the same.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class HedgeOutcome(Generic[T]):
    value: T
    winner: int  # index into the attempts of the one that answered
    hedges_sent: int  # attempts started because an earlier one was slow
    hedge_won: bool  # the winner was started by a hedge (not first, not a failover)
    errors: list[BaseException] = field(default_factory=list)


class AllAttemptsFailed(Exception):
    def __init__(self, errors: list[BaseException]) -> None:
        super().__init__(f"all {len(errors)} attempts failed; last: {errors[-1] if errors else None}")
        self.errors = errors


async def hedged(
    attempts: Sequence[Callable[[], Awaitable[T]]],
    delay: float,
    retryable: Callable[[BaseException], bool] = lambda e: True,
) -> HedgeOutcome[T]:
    """Run attempts[0], hedging with the next after each `delay` seconds without an answer."""
    if not attempts:
        raise ValueError("no attempts")
    pending: dict[asyncio.Future[T], int] = {}
    by_hedge: set[int] = set()
    errors: list[BaseException] = []
    nxt = 0
    hedges = 0

    def launch(is_hedge: bool) -> None:
        nonlocal nxt, hedges
        fut = asyncio.ensure_future(attempts[nxt]())
        pending[fut] = nxt
        if is_hedge:
            by_hedge.add(nxt)
            hedges += 1
        nxt += 1

    launch(False)
    try:
        while pending:
            more = nxt < len(attempts)
            done, _ = await asyncio.wait(
                pending, timeout=delay if more else None, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                launch(True)
                continue
            failed = False
            for fut in done:
                i = pending.pop(fut)
                exc = fut.exception()
                if exc is None:
                    return HedgeOutcome(fut.result(), i, hedges, i in by_hedge, errors)
                if not retryable(exc):
                    raise exc
                errors.append(exc)
                failed = True
            if failed and nxt < len(attempts):
                launch(False)
        raise AllAttemptsFailed(errors)
    finally:
        for fut in pending:
            fut.cancel()


class LatencyWindow:
    """Recent answer times of one shard, for an adaptive hedge delay (its p95)."""

    def __init__(self, size: int = 256, min_samples: int = 20) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self.min_samples = min_samples

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def quantile(self, q: float) -> float | None:
        if len(self._samples) < self.min_samples:
            return None
        s = sorted(self._samples)
        return s[min(len(s) - 1, int(q * len(s)))]

    def p95(self) -> float | None:
        return self.quantile(0.95)

    def budget(self, factor: float, lo: float, hi: float) -> float:
        """Per-shard time budget: `factor` x the recent p99, within [lo, hi]; `hi` until enough
        samples exist."""
        p = self.quantile(0.99)
        return hi if p is None else min(hi, max(lo, factor * p))

    def hedge_delay(self, default: float, lo: float, hi: float, adaptive: bool = True) -> float:
        p = self.p95() if adaptive else None
        return min(hi, max(lo, p if p is not None else default))
