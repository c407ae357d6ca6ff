"""`vsearch bench update`: metadata-only updates/s per shard vs re-indexing the same items, one run.

A real shard process (WAL fsync on, gRPC on loopback) holds N synthetic items with E entries each
(about what a grocery photo gives: whole image + ~3 objects). Measured in the same run:
- UpdateMetadata in batches of B (price + availability of every item) - the new path;
- UpdateMetadata one item per call - what batching buys;
- Upsert of the same items in batches of B (vectors re-sent, re-added to the index): the cheapest
  re-index, with the embeddings already known (a real re-index also runs the photo through Triton,
  see `vsearch bench ingest`);
- through a gateway with 2 shards: UpdateMetadata via the typed client, items/s in total.
-> benchmarks/update.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from visual_search.bench.report import write_report

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "bench-update-v1"
SHARD_ARGS = ["--train-threshold", "100000000", "--faiss-threads", "1", "--snapshot-interval", "3600"]


def _items(n: int, entries: int, seed: int, shard_filter: Any = None) -> list[Any]:
    from visual_search import contract, ids
    from visual_search.v1 import shard_pb2

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        iid = f"sku-{i:07d}"
        if shard_filter is not None and not shard_filter(iid):
            continue
        v = rng.standard_normal((entries, contract.EMBEDDING_DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        md = shard_pb2.ItemMetadata(
            category=f"c{i % 40}", price=float(i % 100), available=True, region=("eu", "us")[i % 2],
            attributes={"brand": f"b{i % 200}"}, phash=i + 1,
        )
        es = [
            shard_pb2.Entry(entry_id=ids.entry_id(iid, j), vector_f16=v[j].astype("<f2").tobytes())
            for j in range(entries)
        ]
        out.append(shard_pb2.Item(item_id=iid, metadata=md, entries=es))
    return out


def _patches(items: list[Any], round_: int) -> list[Any]:
    from visual_search.v1 import shard_pb2

    return [
        shard_pb2.MetadataPatch(
            item_id=it.item_id, price=float(round_ * 1000 + k % 100), available=k % 3 != 0
        )
        for k, it in enumerate(items)
    ]


def _timed(fn: Any, batches: list[Any]) -> float:
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return time.perf_counter() - t0


def _chunks(xs: list[Any], n: int) -> list[list[Any]]:
    return [xs[a : a + n] for a in range(0, len(xs), n)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visual_search import ids
    from visual_search.bench.report import hardware
    from visual_search.client import Client
    from visual_search.gateway.process import GatewayProcess
    from visual_search.shard.process import ShardProcess
    from visual_search.v1 import shard_pb2

    load_start = round(os.getloadavg()[0], 2)
    out: dict[str, Any] = {"benchmark": "update", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out["arguments"] = {k: str(v) for k, v in vars(args).items() if k != "func"}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        items = _items(args.items, args.entries, seed=1)
        with ShardProcess(Path(tmp) / "s0", model_version=MODEL, extra_args=SHARD_ARGS) as sp:
            stub = sp.stub()
            for b in _chunks(items, args.batch):
                stub.Upsert(shard_pb2.UpsertRequest(items=b, model_version=MODEL), timeout=120)

            def update(b: list[Any]) -> None:
                r = stub.UpdateMetadata(shard_pb2.UpdateMetadataRequest(patches=b), timeout=120)
                if r.updated != len(b):
                    raise RuntimeError(f"updated {r.updated} of {len(b)}")

            def upsert(b: list[Any]) -> None:
                stub.Upsert(shard_pb2.UpsertRequest(items=b, model_version=MODEL), timeout=120)

            rounds_update, rounds_upsert = [], []
            for r in range(args.rounds):  # interleaved, so load changes hit both paths alike
                s = _timed(update, _chunks(_patches(items, r + 1), args.batch))
                rounds_update.append(round(len(items) / s, 1))
                s = _timed(upsert, _chunks(items, args.batch))
                rounds_upsert.append(round(len(items) / s, 1))
            single = _patches(items[: args.single], 9)
            s_single = _timed(update, [[p] for p in single])
            # the change is visible to filters at once (checked, not timed)
            q = shard_pb2.QueryVector(vector_f16=items[5].entries[0].vector_f16)
            rng = shard_pb2.Range(min=9000)
            flt = shard_pb2.Filter(clauses=[shard_pb2.FilterClause(field="price", range=rng)])
            patch = shard_pb2.MetadataPatch(item_id=items[5].item_id, price=9999.0)
            stub.UpdateMetadata(shard_pb2.UpdateMetadataRequest(patches=[patch]))
            search = shard_pb2.SearchRequest(queries=[q], k=1, filter=flt, model_version=MODEL)
            hits = stub.Search(search).results[0].hits
            visible = [h.item_id for h in hits] == [items[5].item_id]
            st = stub.Stats(shard_pb2.StatsRequest())
        med_u, med_r = float(np.median(rounds_update)), float(np.median(rounds_upsert))
        results["one_shard"] = {
            "items": len(items),
            "entries_per_item": args.entries,
            "batch": args.batch,
            "update_metadata_items_per_s": rounds_update,
            "update_metadata_items_per_s_median": med_u,
            "reindex_upsert_items_per_s": rounds_upsert,
            "reindex_upsert_items_per_s_median": med_r,
            "update_vs_reindex_upsert": round(med_u / med_r, 2),
            "update_metadata_unbatched_items_per_s": round(len(single) / s_single, 1),
            "update_visible_to_filter_at_once": visible,
            "wal_bytes_at_end": st.wal_bytes,
        }

        # Through the public API: 2 shards + gateway, typed client, batches of B.
        n_gw = min(args.items, args.gateway_items)
        gw_items = items[:n_gw]
        shards = [
            ShardProcess(Path(tmp) / f"g{s}", shard_id=s, model_version=MODEL, extra_args=SHARD_ARGS)
            for s in range(2)
        ]
        try:
            for sp in shards:
                sp.start()
                mine = [it for it in gw_items if ids.shard_for(it.item_id, 2) == sp.shard_id]
                for b in _chunks(mine, args.batch):
                    sp.stub().Upsert(shard_pb2.UpsertRequest(items=b, model_version=MODEL), timeout=120)
            spec = ";".join(sp.address for sp in shards)
            with (
                GatewayProcess(spec, model_version=MODEL, log_path=Path(tmp) / "gw.log") as gw,
                Client(gw.address, timeout=120) as c,
            ):
                per_round = []
                for r in range(args.rounds):
                    t0 = time.perf_counter()
                    for b in _chunks(_patches(gw_items, r + 20), args.batch):
                        res = c.update_metadata(b)
                        if len(res.applied) != len(b):
                            raise RuntimeError(f"applied {len(res.applied)} of {len(b)}")
                    per_round.append(round(n_gw / (time.perf_counter() - t0), 1))
            results["gateway_two_shards"] = {
                "items": n_gw,
                "batch": args.batch,
                "items_per_s": per_round,
                "items_per_s_median": float(np.median(per_round)),
                "items_per_s_per_shard_median": round(float(np.median(per_round)) / 2, 1),
            }
        finally:
            for sp in shards:
                sp.stop()
    out["hardware"] = hardware()
    out["load_average_1m"] = {"start": load_start, "end": round(os.getloadavg()[0], 2)}
    out["results"] = results
    out["goal"] = ">= 5,000 metadata updates/s per shard, batched"
    out["note"] = (
        "Re-indexing through IndexItems also runs every photo through Triton (detect + embed): "
        "see benchmarks/ingest.json for its items/s on the same machine."
    )
    return out


def _main(args: argparse.Namespace) -> int:
    return write_report(run(args), args.out, "results")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("update", help="metadata-only updates/s per shard vs re-indexing (one run)")
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--entries", type=int, default=4, help="entries per item (whole image + objects)")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--single", type=int, default=500, help="items updated one per call")
    p.add_argument("--gateway-items", type=int, default=10_000)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "update.json")
    p.set_defaults(func=_main)
