"""Replica catch-up and anti-entropy: pull from every peer replica of the same shard.

A replica started with `--peers` is NOT_SERVING (health, and UNAVAILABLE for Search/Get, so the
gateway's hedging reads another replica) until it has pulled from its peers once: for each peer,
ReplicaStatus (uid, WAL sequence, digest), then Sync from the last sequence pulled from that uid
(a full copy for a new or wiped peer, or one whose WAL no longer reaches back). It is caught up
when a round of pulls found nothing it was missing, from every peer or from at least one peer that
is itself caught up (a dead peer must not keep the shard down). "Found nothing" matters while
writes go on: those that could not reach this replica directly (it was starting; the writer's
channel was still backing off) show up in the next pull, so it keeps pulling, without serving,
until they stop. With no peer answering it waits, except that a replica that
started with data of its own serves after `peer_wait_s` (one that started empty never serves on its
own, whatever writes it took meanwhile).

Afterwards the same pull runs every `interval_s` (anti-entropy), skipped for a peer whose digest
equals ours, and bounded to `rate_items_s` applied items per second; `Repair` runs one round now.
Every replica pulls, none pushes: a write that reached only some replicas reaches the others
through their own pulls (also transitively: pulled writes are forwarded from the WAL).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from visual_search.shard.engine import ShardEngine
from visual_search.tokens import bearer_metadata
from visual_search.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger(__name__)
_STATUS_TIMEOUT_S = 5.0
_SYNC_TIMEOUT_S = 3600.0


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying the shard-to-shard token (shard/auth.py), if one is set."""
    return bearer_metadata(token)


class PeerClient:
    """Stub for one peer replica; `token` (or `metadata`) is sent with every call."""

    def __init__(
        self, address: str, token: str | None = None, metadata: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.address = address
        self.metadata = tuple(metadata) + auth_metadata(token)
        self._channel = grpc.insecure_channel(
            address,
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        self.stub = shard_pb2_grpc.SearchShardStub(self._channel)

    def status(self, timeout: float = _STATUS_TIMEOUT_S) -> shard_pb2.ReplicaStatusResponse:
        return self.stub.ReplicaStatus(
            shard_pb2.ReplicaStatusRequest(), timeout=timeout, metadata=self.metadata
        )

    def sync(self, req: shard_pb2.SyncRequest, timeout: float = _SYNC_TIMEOUT_S) -> grpc.Future:
        return self.stub.Sync(req, timeout=timeout, metadata=self.metadata)

    def close(self) -> None:
        self._channel.close()


@dataclass
class PeerProgress:
    address: str
    replica_uid: str = ""
    state: str = "new"
    error: str = ""
    last_sync_unix: float = 0.0
    items_copied: int = 0
    peer_caught_up: bool = False

    def message(self, engine: ShardEngine) -> shard_pb2.PeerState:
        return shard_pb2.PeerState(
            address=self.address,
            replica_uid=self.replica_uid,
            synced_seq=engine.peer_seq.get(self.replica_uid, 0),
            state=self.state,
            last_sync_unix=self.last_sync_unix,
            error=self.error,
            items_copied=self.items_copied,
        )


class _RateLimit:
    """At most `per_s` units per second on average (None = unbounded)."""

    def __init__(self, per_s: float | None) -> None:
        self.per_s = per_s
        self.t0 = time.monotonic()
        self.used = 0

    def spend(self, n: int, stop: threading.Event) -> None:
        if not self.per_s or not n:
            return
        self.used += n
        wait = self.used / self.per_s - (time.monotonic() - self.t0)
        if wait > 0:
            stop.wait(wait)


class Replicator:
    def __init__(
        self,
        engine: ShardEngine,
        peers: Sequence[str],
        *,
        token: str | None = None,
        interval_s: float = 10.0,
        rate_items_s: float = 2000.0,
        peer_wait_s: float = 60.0,
        on_caught_up: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.clients = [PeerClient(a, token) for a in peers]
        self.progress = {c.address: PeerProgress(c.address) for c in self.clients}
        self.interval_s = interval_s
        self.rate_items_s = rate_items_s
        self.peer_wait_s = peer_wait_s
        self.on_caught_up = on_caught_up
        self.caught_up = threading.Event()
        self.caught_up_after_s: float | None = None
        self._round_lock = threading.Lock()  # one pull round at a time (loop or Repair)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._synced: list[str] = []  # peers pulled completely in the last round
        st = engine.replica_status()
        self.started_with_data = st["applied_seq"] > 0 or st["items"] > 0
        if not self.clients:
            self._mark_caught_up(0.0, "no peers")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replication", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for c in self.clients:
            c.close()

    def _mark_caught_up(self, elapsed: float, why: str) -> None:
        self.caught_up_after_s = elapsed
        self.caught_up.set()
        log.info(
            "replica caught up",
            extra={"reason": why, "seconds": round(elapsed, 2), **self.engine.replica_status()},
        )
        if self.on_caught_up is not None:
            self.on_caught_up()

    def _run(self) -> None:
        t0 = time.monotonic()
        next_log = t0
        while not self.caught_up.is_set() and not self._stop.is_set():
            before = self.items_copied()
            synced = self.pull_round(rate_items_s=None)
            elapsed = time.monotonic() - t0
            if synced and self.items_copied() > before:
                continue  # it was missing writes: pull again until a round finds none
            if synced == len(self.clients):
                self._mark_caught_up(elapsed, "nothing missing from any peer")
            elif any(self.progress[a].peer_caught_up for a in self._synced):
                self._mark_caught_up(elapsed, "nothing missing from a caught-up peer")
            elif not synced and elapsed > self.peer_wait_s and self.started_with_data:
                log.warning("no peer answered; serving this replica's own data", extra={"seconds": elapsed})
                self._mark_caught_up(elapsed, "peer wait expired, own data")
            else:
                if time.monotonic() >= next_log:
                    log.warning("not serving yet: catching up with peers", extra=self.snapshot_dict())
                    next_log = time.monotonic() + 10.0
                self._stop.wait(0.5)
        while not self._stop.wait(self.interval_s):
            self.pull_round(rate_items_s=self.rate_items_s)

    def snapshot_dict(self) -> dict[str, object]:
        return {a: {"state": p.state, "error": p.error} for a, p in self.progress.items()}

    def pull_round(self, rate_items_s: float | None) -> int:
        """Pull from every peer once; returns how many peers were pulled completely."""
        with self._round_lock:
            self._synced = []
            for client in self.clients:
                if self._stop.is_set():
                    break
                if self._pull(client, _RateLimit(rate_items_s)):
                    self._synced.append(client.address)
            return len(self._synced)

    def _pull(self, client: PeerClient, rate: _RateLimit) -> bool:
        prog = self.progress[client.address]
        eng = self.engine
        try:
            st = client.status()
            if st.replica_uid == eng.uid:  # `--peers` may list every replica, this one included
                prog.replica_uid, prog.state, prog.error = st.replica_uid, "self", ""
                return True
            if st.shard_id != eng.shard_id or st.model_version != eng.model_version:
                raise ValueError(
                    f"peer serves shard {st.shard_id} / {st.model_version!r}, "
                    f"not shard {eng.shard_id} / {eng.model_version!r}"
                )
            prog.replica_uid, prog.peer_caught_up = st.replica_uid, st.caught_up
            have = eng.peer_seq.get(st.replica_uid, 0)
            if st.digest == eng.replica_status()["digest"]:
                eng.note_in_sync(st.replica_uid, st.applied_seq)
            elif have < st.applied_seq or not have:
                req = shard_pb2.SyncRequest(replica_uid=st.replica_uid if have else "", after_seq=have)
                for rec in client.sync(req):
                    n = eng.apply_pulled(rec)
                    prog.items_copied += n
                    rate.spend(n, self._stop)
                    if self._stop.is_set():
                        return False
            prog.state, prog.error, prog.last_sync_unix = "synced", "", time.time()
            return True
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            prog.state = "unreachable" if code == grpc.StatusCode.UNAVAILABLE else "error"
            prog.error = (
                f"{code.name if code else 'ERROR'}: {exc.details() if isinstance(exc, grpc.Call) else exc}"
            )
        except Exception as exc:  # noqa: BLE001 - a bad peer must not stop replication from others
            prog.state, prog.error = "error", f"{type(exc).__name__}: {exc}"
        log.warning("pull from peer failed", extra={"peer": client.address, "error": prog.error})
        return False

    def items_copied(self) -> int:
        return sum(p.items_copied for p in self.progress.values())

    def repair(self) -> tuple[int, list[shard_pb2.PeerState]]:
        """One unthrottled pull round now (the `Repair` RPC); returns (items copied, peer states)."""
        before = self.items_copied()
        self.pull_round(rate_items_s=None)
        return self.items_copied() - before, self.peer_states()

    def peer_states(self) -> list[shard_pb2.PeerState]:
        return [self.progress[c.address].message(self.engine) for c in self.clients]


def repair_replicas(
    addresses: Sequence[str], token: str | None = None, timeout: float = 600.0
) -> dict[str, Any]:
    """`vsearch shard repair`: every replica runs one pull round from its peers now, then their
    digests are compared (equal = the same writes, whatever order they arrived in)."""
    clients = [PeerClient(a, token) for a in addresses]
    try:
        copied = [
            c.stub.Repair(shard_pb2.RepairRequest(), timeout=timeout, metadata=c.metadata).items_copied
            for c in clients
        ]
        statuses = [c.status() for c in clients]
    finally:
        for c in clients:
            c.close()
    rows = [
        {
            "address": c.address,
            "replica_uid": st.replica_uid,
            "items": st.items,
            "delete_markers": st.delete_markers,
            "items_copied": n,
            "caught_up": st.caught_up,
            "digest": st.digest,
            "peers": [{"address": p.address, "state": p.state, "error": p.error} for p in st.peers],
        }
        for c, st, n in zip(clients, statuses, copied, strict=True)
    ]
    return {"replicas": rows, "in_sync": len({r["digest"] for r in rows}) == 1}
