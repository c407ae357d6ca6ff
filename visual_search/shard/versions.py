"""Per-item last-write-wins versions, delete markers and the replica digest.

Replicas of a shard apply writes independently, so their WAL sequence numbers mean nothing to each
other; what they agree on is the version each write carries (a hybrid-logical-clock value the
gateway stamps, nanoseconds since the Unix epoch). For every item a replica remembers the version
of the write it holds: the live item's, or a delete marker's (kept so a repair cannot bring a
deleted item back from a peer that missed the delete). A write older than what is held is
superseded, not applied; equal versions are the same write (kept as is).

The digest is the XOR of a 64-bit hash of (item_id, version, deleted) over every item and marker,
kept up to date in O(1) per change: two replicas holding the same writes have the same digest,
whatever order the writes came in. Not thread-safe: the engine changes it under its write lock.
"""

from __future__ import annotations

import hashlib
import time


def _h(item_id: str, version: int, deleted: bool) -> int:
    data = b"%d:%d:" % (version, deleted) + item_id.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class HybridClock:
    """Strictly increasing nanosecond timestamps: wall clock, or last + 1 if the clock stalls or
    steps back (so versions from one writer are ordered even within a nanosecond)."""

    def __init__(self) -> None:
        self.last = 0

    def observe(self, version: int) -> None:
        """Never issue a version at or below one already seen (keeps local writes newest)."""
        self.last = max(self.last, version)

    def now(self) -> int:
        self.last = max(time.time_ns(), self.last + 1)
        return self.last


class VersionBook:
    """item_id -> version of the live item, item_id -> version of its delete marker, digest."""

    def __init__(self) -> None:
        self.live: dict[str, int] = {}
        self.deleted: dict[str, int] = {}
        self.digest = 0
        self.clock = HybridClock()

    def held(self, item_id: str) -> int:
        """Version of what this replica holds for the item (live or deleted); -1 = never seen."""
        v = self.live.get(item_id)
        if v is not None:
            return v
        return self.deleted.get(item_id, -1)

    def newer(self, item_id: str, version: int) -> bool:
        """Would a write at `version` replace what is held (strictly newer)?"""
        return version > self.held(item_id)

    def _drop(self, item_id: str) -> None:
        v = self.live.pop(item_id, None)
        if v is not None:
            self.digest ^= _h(item_id, v, False)
        m = self.deleted.pop(item_id, None)
        if m is not None:
            self.digest ^= _h(item_id, m, True)

    def set_live(self, item_id: str, version: int) -> None:
        self._drop(item_id)
        self.live[item_id] = version
        self.digest ^= _h(item_id, version, False)
        self.clock.observe(version)

    def set_deleted(self, item_id: str, version: int) -> None:
        self._drop(item_id)
        self.deleted[item_id] = version
        self.digest ^= _h(item_id, version, True)
        self.clock.observe(version)

    def forget_live(self, item_id: str) -> None:
        """The item left the store without a delete (its entries moved to another item)."""
        v = self.live.pop(item_id, None)
        if v is not None:
            self.digest ^= _h(item_id, v, False)
