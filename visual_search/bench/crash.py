"""`vsearch bench crash`: ingest while SIGKILLing the shard process, then verify durability.

Each round starts the shard on the same data dir, runs a writer (upserts of random batch sizes,
deletes of earlier items, replacements) and SIGKILLs the process after a random delay. After the
restart, every acknowledged item must be present (Get) with its last acknowledged vector and
findable by search, and every acknowledged delete must stay gone. A write in flight at the kill
is "unknown": whatever the restarted shard shows for it is adopted as truth and must then stay.
Snapshots (short interval) and background training also get killed mid-way.

`--replicas`: two replicas of one shard naming each other as peers; the writer sends every
versioned write to both (as the gateway does) and counts it acknowledged once replica A applied it
(write quorum "one", the hardest case for B). Each round SIGKILLs replica B during ingest, wipes
its data dir, ingests on while it is down, restarts it EMPTY and, with ingest still running,
watches it: it must report NOT_SERVING (and refuse reads) until it has caught up from A, and when
it turns SERVING every acknowledged write must be there. Catch-up time (items, seconds) is
measured against a restart of B on its own data dir (WAL/snapshot recovery) in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from visual_search import contract


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("crash", help="SIGKILL-during-ingest durability test")
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--min-delay", type=float, default=0.2, help="seconds of ingest before a kill (min)")
    p.add_argument("--max-delay", type=float, default=1.5)
    p.add_argument("--search-sample", type=int, default=100, help="acked items searched per round")
    p.add_argument("--data-dir", default="", help="keep the shard data here (default: temp dir)")
    p.add_argument("--out", default="benchmarks/crash.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--replicas",
        action="store_true",
        help="kill one of two replicas, bring it back empty, measure catch-up (default out: "
        "benchmarks/replica_catchup.json)",
    )
    p.add_argument("--preload", type=int, default=100_000, help="--replicas: items written before the kills")
    p.set_defaults(func=run)


class Ledger:
    """What the client knows: acked state per item (vector or deleted) and in-flight writes."""

    def __init__(self) -> None:
        self.live: dict[str, bytes] = {}  # item -> f16 vector of the last acked upsert
        self.deleted: set[str] = set()
        self.unknown: dict[str, bytes | None] = {}  # in flight at the kill: vector or None (delete)
        self.lock = threading.Lock()


def _writer(
    stub: Any,
    ledger: Ledger,
    stop: threading.Event,
    rng: Any,
    counter: list[int],
    model: str,
    stats: dict[str, int],
) -> None:
    import grpc
    import numpy as np

    from visual_search import ids
    from visual_search.v1 import shard_pb2 as pb

    while not stop.is_set():
        op = rng.random()
        with ledger.lock:
            live = list(ledger.live)
        if op < 0.15 and live:
            victims = [
                live[i] for i in rng.choice(len(live), min(len(live), int(rng.integers(1, 5))), replace=False)
            ]
            with ledger.lock:
                for v in victims:
                    ledger.unknown[v] = None
            try:
                stub.Delete(pb.DeleteRequest(item_ids=victims), timeout=10)
            except (grpc.RpcError, ValueError):  # ValueError: channel closed by the kill
                return  # leave them unknown
            with ledger.lock:
                for v in victims:
                    ledger.unknown.pop(v, None)
                    ledger.live.pop(v, None)
                    ledger.deleted.add(v)
            stats["deletes_acked"] += len(victims)
            continue
        n = int(rng.integers(1, 60))
        names = []
        for _ in range(n):
            if op > 0.9 and live:  # replace an existing item with a new vector
                names.append(live[int(rng.integers(len(live)))])
            else:
                names.append(f"it-{counter[0]}")
                counter[0] += 1
        names = list(dict.fromkeys(names))
        v = rng.standard_normal((len(names), contract.EMBEDDING_DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        blobs = [x.astype("<f2").tobytes() for x in v]
        items = [
            pb.Item(
                item_id=name,
                metadata=pb.ItemMetadata(category="c", price=1.0),
                entries=[pb.Entry(entry_id=ids.entry_id(name, 0), vector_f16=b)],
            )
            for name, b in zip(names, blobs, strict=True)
        ]
        with ledger.lock:
            for name, b in zip(names, blobs, strict=True):
                ledger.unknown[name] = b
        try:
            stub.Upsert(pb.UpsertRequest(items=items, model_version=model), timeout=10)
        except (grpc.RpcError, ValueError):
            return
        with ledger.lock:
            for name, b in zip(names, blobs, strict=True):
                ledger.unknown.pop(name, None)
                ledger.live[name] = b
                ledger.deleted.discard(name)
        stats["upserts_acked"] += len(names)


def _verify(stub: Any, ledger: Ledger, model: str, rng: Any, sample: int) -> dict[str, int]:
    from visual_search.v1 import shard_pb2 as pb

    problems = {"lost_acked": 0, "wrong_vector": 0, "resurrected": 0, "not_searchable": 0}
    # Resolve in-flight writes by observation (they are durable or not; both are allowed).
    unknown = list(ledger.unknown.items())
    names = [n for n, _ in unknown]
    present = {}
    for a in range(0, len(names), 1000):
        got = stub.Get(pb.GetRequest(item_ids=names[a : a + 1000], include_vectors=True), timeout=30)
        present.update({it.item_id: it.entries[0].vector_f16 for it in got.items})
    for name, _blob in unknown:
        if name in present:
            ledger.live[name] = present[name]
            ledger.deleted.discard(name)
        else:
            ledger.live.pop(name, None)
            ledger.deleted.add(name)
    ledger.unknown.clear()
    live = list(ledger.live)
    for a in range(0, len(live), 1000):
        chunk = live[a : a + 1000]
        got = stub.Get(pb.GetRequest(item_ids=chunk, include_vectors=True), timeout=30)
        problems["lost_acked"] += len(got.not_found)
        for it in got.items:
            if it.entries[0].vector_f16 != ledger.live[it.item_id]:
                problems["wrong_vector"] += 1
    dead = list(ledger.deleted)
    for a in range(0, len(dead), 1000):
        got = stub.Get(pb.GetRequest(item_ids=dead[a : a + 1000]), timeout=30)
        problems["resurrected"] += len(got.items)
    for i in rng.choice(len(live), min(sample, len(live)), replace=False) if live else []:
        name = live[int(i)]
        resp = stub.Search(
            pb.SearchRequest(
                queries=[pb.QueryVector(vector_f16=ledger.live[name])], k=10, model_version=model
            ),
            timeout=10,
        )
        hits = [h.item_id for h in resp.results[0].hits]
        if name not in hits:
            problems["not_searchable"] += 1
        problems["resurrected"] += len(set(hits) & ledger.deleted)
    return problems


def run_crash_test(
    kills: int,
    data_dir: Path,
    *,
    min_delay: float = 0.2,
    max_delay: float = 1.5,
    search_sample: int = 100,
    seed: int = 0,
    log: Any = print,
) -> dict[str, Any]:
    import numpy as np

    from visual_search.shard.process import ShardProcess

    model = "crash-model"
    rng = np.random.default_rng(seed)
    ledger = Ledger()
    counter = [0]
    stats = {"upserts_acked": 0, "deletes_acked": 0}
    totals = {"lost_acked": 0, "wrong_vector": 0, "resurrected": 0, "not_searchable": 0}
    restart_s: list[float] = []
    external_start_failures: list[str] = []
    shard = ShardProcess(
        data_dir,
        model_version=model,
        startup_timeout=300,
        extra_args=[
            "--faiss-threads",
            "1",
            "--pq-bits",
            "4",
            "--train-threshold",
            "3000",
            "--snapshot-interval",
            "1",
            "--policy-interval",
            "0.5",
            "--log-level",
            "WARNING",
        ],
    )
    t_start = time.time()
    for round_no in range(kills + 1):
        t = time.time()
        for attempt in range(3):  # a start killed from outside (shared host) is one more crash
            try:
                shard.start()
                break
            except RuntimeError as exc:
                external_start_failures.append(f"round {round_no}: {exc}")
                log(f"round {round_no}: start attempt {attempt} failed: {exc}")
        else:
            raise RuntimeError(f"shard would not start: {external_start_failures[-3:]}")
        restart_s.append(time.time() - t)
        problems = _verify(shard.stub(), ledger, model, rng, search_sample)
        for k, v in problems.items():
            totals[k] += v
        if any(problems.values()):
            log(f"round {round_no}: PROBLEMS {problems}")
        if round_no == kills:
            shard.stop()
            break
        stop = threading.Event()
        th = threading.Thread(
            target=_writer, args=(shard.stub(), ledger, stop, rng, counter, model, stats), daemon=True
        )
        th.start()
        time.sleep(float(rng.uniform(min_delay, max_delay)))
        shard.kill()
        stop.set()
        th.join(30)
        if round_no % 10 == 0:
            log(f"round {round_no}: live={len(ledger.live)} deleted={len(ledger.deleted)} {stats} {totals}")
    return {
        "kills": kills,
        "rounds_verified": kills + 1,
        "items_live_at_end": len(ledger.live),
        "items_deleted_at_end": len(ledger.deleted),
        **stats,
        "problems": totals,
        "ok": not any(totals.values()),
        "restart_s": {"mean": round(float(np.mean(restart_s)), 2), "max": round(float(np.max(restart_s)), 2)},
        "elapsed_s": round(time.time() - t_start, 1),
    }


class ReplicatedWriter:
    """The gateway's write path for the crash writer: one version per write, sent to both replicas;
    acknowledged when replica A applied it (B may be down, starting, or catching up)."""

    def __init__(self, a: Any, b: Any) -> None:
        from visual_search.shard.versions import HybridClock

        self.a, self.b = a, b
        self.clock = HybridClock()
        self.b_failures = 0

    def _send(self, method: str, req: Any, timeout: float) -> Any:
        from visual_search.gateway.fanout import stamp_versions

        req = stamp_versions(method, req, self.clock)
        out = getattr(self.a.stub(), method)(req, timeout=timeout)
        try:
            getattr(self.b.stub(), method)(req, timeout=timeout)
        except Exception:  # noqa: BLE001 - B down / starting / killed mid-call: repair's job
            self.b_failures += 1
        return out

    def Upsert(self, req: Any, timeout: float) -> Any:  # noqa: N802 - stub method names
        return self._send("Upsert", req, timeout)

    def Delete(self, req: Any, timeout: float) -> Any:  # noqa: N802
        return self._send("Delete", req, timeout)


def _preload(writer: ReplicatedWriter, ledger: Ledger, n: int, model: str, seed: int) -> None:
    import numpy as np

    from visual_search import ids
    from visual_search.v1 import shard_pb2 as pb

    rng = np.random.default_rng(seed + 1)
    for a in range(0, n, 1000):
        v = rng.standard_normal((min(1000, n - a), contract.EMBEDDING_DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        blobs = {f"pre-{a + i}": x.astype("<f2").tobytes() for i, x in enumerate(v)}
        items = [
            pb.Item(
                item_id=k,
                metadata=pb.ItemMetadata(category="c", price=1.0),
                entries=[pb.Entry(entry_id=ids.entry_id(k, 0), vector_f16=b)],
            )
            for k, b in blobs.items()
        ]
        writer.Upsert(pb.UpsertRequest(items=items, model_version=model), timeout=120)
        ledger.live.update(blobs)


def _watch_catch_up(b: Any, timeout: float) -> dict[str, Any]:
    """Poll B from its start until it reports SERVING: how long, what it said before, and whether
    a read was refused while it was catching up."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from visual_search.shard import auth as shard_auth
    from visual_search.v1 import shard_pb2 as pb

    t0 = time.monotonic()
    seen: dict[str, Any] = {"not_serving_polls": 0, "read_refused": None, "answering_s": None}
    with shard_auth.channel(b.address, b.token) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        shard = pb_grpc(ch)
        while time.monotonic() - t0 < timeout:
            try:
                st = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
            except grpc.RpcError:
                time.sleep(0.02)
                continue
            if seen["answering_s"] is None:
                seen["answering_s"] = time.monotonic() - t0
            if st == health_pb2.HealthCheckResponse.SERVING:
                seen["serving_s"] = time.monotonic() - t0
                seen["status"] = shard.ReplicaStatus(pb.ReplicaStatusRequest(), timeout=10)
                return seen
            seen["not_serving_polls"] += 1
            if seen["read_refused"] is None:
                try:
                    shard.Get(pb.GetRequest(item_ids=["pre-0"]), timeout=5)
                    seen["read_refused"] = False
                except grpc.RpcError as exc:
                    seen["read_refused"] = exc.code() == grpc.StatusCode.UNAVAILABLE
            time.sleep(0.02)
    raise RuntimeError(f"replica B not SERVING {timeout}s after its start")


def _summary(values: list[float]) -> dict[str, float] | None:
    import numpy as np

    if not values:
        return None
    return {"mean": round(float(np.mean(values)), 2), "max": round(float(np.max(values)), 2)}


def pb_grpc(channel: Any) -> Any:
    from visual_search.v1 import shard_pb2_grpc

    return shard_pb2_grpc.SearchShardStub(channel)


def run_replica_crash_test(
    kills: int,
    root: Path,
    *,
    preload: int = 100_000,
    min_delay: float = 0.2,
    max_delay: float = 1.5,
    down_s: float = 1.0,
    search_sample: int = 100,
    seed: int = 0,
    log: Any = print,
) -> dict[str, Any]:
    import shutil as _shutil

    import numpy as np

    from visual_search.shard.process import ShardProcess
    from visual_search.supervise import free_port, wait_healthy
    from visual_search.v1 import shard_pb2 as pb

    model = "crash-model"
    rng = np.random.default_rng(seed)
    ports = [free_port(), free_port()]
    common = [
        "--faiss-threads", "1", "--pq-bits", "4", "--train-threshold", "3000",
        "--snapshot-interval", "2", "--policy-interval", "0.5", "--repair-interval", "1",
        "--log-level", "WARNING",
    ]  # fmt: skip
    a, b = (
        ShardProcess(
            root / name,
            port=ports[i],
            model_version=model,
            startup_timeout=600,
            extra_args=[*common, "--peers", f"127.0.0.1:{ports[1 - i]}"],
        )
        for i, name in enumerate(("a", "b"))
    )
    ledger = Ledger()
    writer = ReplicatedWriter(a, b)
    counter = [0]
    stats = {"upserts_acked": 0, "deletes_acked": 0}
    totals = {"lost_acked": 0, "wrong_vector": 0, "resurrected": 0, "not_searchable": 0}
    rounds: list[dict[str, Any]] = []
    t_start = time.time()
    a.start(wait=False)
    b.start(wait=False)
    try:
        wait_healthy(a.address, 600, a.proc)
        wait_healthy(b.address, 600, b.proc)
        t = time.time()
        _preload(writer, ledger, preload, model, seed)
        preload_s = time.time() - t
        log(f"preloaded {preload} items in {preload_s:.1f}s")
        for round_no in range(kills + 1):
            wipe = round_no > 0  # round 0 is the baseline: B restarts on its own data dir
            stop = threading.Event()
            th = threading.Thread(
                target=_writer, args=(writer, ledger, stop, rng, counter, model, stats), daemon=True
            )
            th.start()
            time.sleep(float(rng.uniform(min_delay, max_delay)))
            b.kill()
            if wipe:
                _shutil.rmtree(b.data_dir)
            time.sleep(down_s)  # ingest goes on while B is down: only A has these writes
            items_on_a = a.stub().ReplicaStatus(pb.ReplicaStatusRequest(), timeout=10).items
            b.start(wait=False)
            seen = _watch_catch_up(b, 600)
            stop.set()
            th.join(30)
            st = seen.pop("status")
            problems = _verify(b.stub(), ledger, model, rng, search_sample)
            missing_at_serving = dict(problems)
            if any(problems.values()):  # a direct write B missed after its restart is repair's job
                b.stub().Repair(pb.RepairRequest(), timeout=600)
                problems = _verify(b.stub(), ledger, model, rng, search_sample)
            for k, v in problems.items():
                totals[k] += v
            a.stub().Repair(pb.RepairRequest(), timeout=600)
            b.stub().Repair(pb.RepairRequest(), timeout=600)
            digests = {
                p.stub().ReplicaStatus(pb.ReplicaStatusRequest(), timeout=10).digest for p in (a, b)
            }
            r = {
                "round": round_no,
                "b_restart": "empty" if wipe else "own data dir",
                "items_on_a": int(items_on_a),
                "items_on_b_when_serving": int(st.items),
                "items_copied": int(sum(p.items_copied for p in st.peers)),
                "seconds_to_answering": round(seen["answering_s"], 3),
                "seconds_to_serving": round(seen["serving_s"], 3),
                "not_serving_polls": seen["not_serving_polls"],
                "read_refused_while_catching_up": seen["read_refused"],
                "missing_at_serving": missing_at_serving,
                "problems_after_repair": problems,
                "converged": len(digests) == 1,
            }
            rounds.append(r)
            log(f"round {round_no}: {r}")
    finally:
        a.stop()
        b.stop()
    wiped = [r for r in rounds if r["b_restart"] == "empty"]
    return {
        "kills": kills,
        "ingest_before_kill_s": [min_delay, max_delay],
        "b_down_s": down_s,
        "preload_items": preload,
        "preload_s": round(preload_s, 1),
        "items_live_at_end": len(ledger.live),
        "items_deleted_at_end": len(ledger.deleted),
        **stats,
        "b_write_failures": writer.b_failures,
        "problems": totals,
        "never_served_before_caught_up": all(
            not any(r["missing_at_serving"].values()) for r in rounds
        ),
        "all_converged": all(r["converged"] for r in rounds),
        "ok": not any(totals.values()) and all(r["converged"] for r in rounds),
        "catch_up_empty": {
            "items_copied": _summary([r["items_copied"] for r in wiped]),
            "seconds_to_serving": _summary([r["seconds_to_serving"] for r in wiped]),
            "items_per_second": _summary([r["items_copied"] / r["seconds_to_serving"] for r in wiped]),
        },
        "baseline_restart_own_data_s": rounds[0]["seconds_to_serving"] if rounds else None,
        "rounds": rounds,
        "elapsed_s": round(time.time() - t_start, 1),
    }


def run(args: argparse.Namespace) -> int:
    tmp = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="vsearch-crash-"))
    try:
        if args.replicas:
            result = run_replica_crash_test(
                args.kills,
                tmp / "data",
                preload=args.preload,
                min_delay=args.min_delay,
                max_delay=args.max_delay,
                search_sample=args.search_sample,
                seed=args.seed,
            )
            if args.out == "benchmarks/crash.json":
                args.out = "benchmarks/replica_catchup.json"
        else:
            result = run_crash_test(
                args.kills,
                tmp / "data",
                min_delay=args.min_delay,
                max_delay=args.max_delay,
                search_sample=args.search_sample,
                seed=args.seed,
            )
    finally:
        if not args.data_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    result["arguments"] = {k: v for k, v in vars(args).items() if k != "func"}
    result["loadavg_at_end"] = os.getloadavg()
    result["hardware"] = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1
