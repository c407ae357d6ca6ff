"""Multi-item writes routed by item owner (DeleteItems, UpdateMetadata) with per-item outcomes.

The caller validates the whole request first, so nothing reaches a shard unless every item is
well-formed. Each owning shard then gets one request with its items, to every replica. A shard
can still fail mid-way (down, deadline): the others' writes stand (they are durable and cannot be
taken back), so the answer names, per item, whether it was applied and, if not, why; it fails
as a whole only when no shard applied anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from visual_search.errors import public_message
from visual_search.gateway.fanout import ShardCallError, ShardFanout, ShardUnavailable
from visual_search.v1 import search_pb2

log = logging.getLogger(__name__)


@dataclass
class ShardOutcome:
    shard_id: int
    positions: list[int]  # indexes into the request's item list
    response: Any | None = None  # the first replica's answer when the write quorum applied it
    under_replicated: bool = False  # applied on the quorum, not (yet) on every replica
    not_found: set[str] = field(default_factory=set)  # unknown to every replica that answered
    code: str = ""  # gRPC status name of the failure
    error: str = ""
    exc: Exception | None = None


async def write_by_owner(
    fanout: ShardFanout,
    item_ids: Sequence[str],
    method: str,
    build: Callable[[list[int]], Any],
    deadline: float,
) -> list[ShardOutcome]:
    """Send build(positions) to every replica of each owning shard, in parallel."""
    groups: dict[int, list[int]] = {}
    for pos, item_id in enumerate(item_ids):
        groups.setdefault(fanout.owner(item_id).shard_id, []).append(pos)

    async def one(shard_id: int, positions: list[int]) -> ShardOutcome:
        out = ShardOutcome(shard_id, positions)
        try:
            wrote = await fanout.write(shard_id, method, build(positions), deadline)
            out.response, out.under_replicated = wrote.responses[0], wrote.under_replicated
            # A replica still catching up may not hold an item yet: unknown only if unknown to all.
            out.not_found = set.intersection(*(set(r.not_found) for r in wrote.responses))
        except ShardCallError as e:
            out.code, out.error, out.exc = e.code.name, public_message(str(e)), e
        except ShardUnavailable as e:
            msg = public_message(f"{e} (some replicas may have applied it)")
            out.code, out.error, out.exc = "UNAVAILABLE", msg, e
        except TimeoutError as e:
            out.code, out.error, out.exc = "DEADLINE_EXCEEDED", f"shard {shard_id}: deadline exceeded", e
        if out.exc is not None:
            log.warning(
                "shard write failed: method=%s shard=%d items=%d code=%s", method, shard_id, len(positions),
                out.code,
            )
        return out

    return list(await asyncio.gather(*(one(s, p) for s, p in groups.items())))


def item_results(
    item_ids: Sequence[str], outcomes: list[ShardOutcome], not_found: set[str]
) -> tuple[list[search_pb2.ItemWriteResult], list[int]]:
    """Per-item results in request order, and the failed shard ids. Raises the first shard failure
    when no shard applied anything (the caller then sees that status, e.g. UNAVAILABLE)."""
    if outcomes and all(o.response is None for o in outcomes):
        raise outcomes[0].exc or RuntimeError(outcomes[0].error)
    results = [search_pb2.ItemWriteResult(item_id=i) for i in item_ids]
    failed = []
    for o in outcomes:
        if o.response is None:
            failed.append(o.shard_id)
        for pos in o.positions:
            r = results[pos]
            r.shard_id = o.shard_id
            if o.response is None:
                r.error_code, r.error = o.code, o.error
            elif r.item_id in not_found:
                r.error_code, r.error = "NOT_FOUND", "not indexed"
            else:
                r.applied = True
    return results, sorted(failed)


def under_replicated(item_ids: Sequence[str], outcomes: list[ShardOutcome], not_found: set[str]) -> list[str]:
    """Applied items whose shard acknowledged on the quorum but not on every replica."""
    return [
        item_ids[p] for o in outcomes if o.response is not None and o.under_replicated
        for p in o.positions if item_ids[p] not in not_found
    ]
