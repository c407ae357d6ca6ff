"""`vsearch bench crash`: ingest while SIGKILLing the shard process, then verify durability.

Each round starts the shard on the same data dir, runs a writer (upserts of random batch sizes,
deletes of earlier items, replacements) and SIGKILLs the process after a random delay. After the
restart, every acknowledged item must be present (Get) with its last acknowledged vector and
findable by search, and every acknowledged delete must stay gone. A write in flight at the kill
is "unknown": whatever the restarted shard shows for it is adopted as truth and must then stay.
Snapshots (short interval) and background training also get killed mid-way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("crash", help="SIGKILL-during-ingest durability test")
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--min-delay", type=float, default=0.2, help="seconds of ingest before a kill (min)")
    p.add_argument("--max-delay", type=float, default=1.5)
    p.add_argument("--search-sample", type=int, default=100, help="acked items searched per round")
    p.add_argument("--data-dir", default="", help="keep the shard data here (default: temp dir)")
    p.add_argument("--out", default="benchmarks/crash.json")
    p.add_argument("--seed", type=int, default=0)
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
        v = rng.standard_normal((len(names), 256)).astype(np.float32)
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

    from visual_search.testing import ShardProcess

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


def run(args: argparse.Namespace) -> int:
    tmp = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="vsearch-crash-"))
    try:
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1
