"""`vsearch bench ingest`: bulk-ingest items/s of a real catalog through IndexItems, before/after.

One local stack (Triton + 2 shards + a gateway with the current defaults) plus a second gateway on
the same Triton and shards with the pre-batching settings (`--index-concurrency 4
--index-upsert-batch 1`: four items in flight, one item per shard Upsert, as IndexItems did
before). The catalog is cut into chunks; every chunk is indexed through both gateways (distinct
item-id prefixes, alternating which goes first), so load drift on a shared host hits both alike.
For reference, the same photos straight to Triton's detect_and_embed at the same concurrency give
the ceiling any gateway could reach. -> benchmarks/ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from visual_search.bench.report import write_report
from visual_search.gateway.config import GatewayConfig as D

REPO_ROOT = Path(__file__).resolve().parents[2]
OLD_ARGS = ["--index-concurrency", "4", "--index-upsert-batch", "1"]


def _index(address: str, items: list[Any]) -> tuple[float, int]:
    from visual_search.client import Client

    with Client(address, timeout=600) as c:
        t0 = time.perf_counter()
        ok = sum(r.ok for r in c.index(items, timeout=3600))
        return time.perf_counter() - t0, ok


async def _triton_only(url: str, photos: list[bytes], concurrency: int) -> float:
    from visual_search.triton.client import AsyncTritonClient

    async with AsyncTritonClient(url) as tc:
        sem = asyncio.Semaphore(concurrency)

        async def one(b: bytes) -> None:
            async with sem:
                await tc.detect_and_embed(b)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in photos))
        return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visual_search.bench.report import hardware
    from visual_search.client import IndexItem
    from visual_search.client_cli import iter_source
    from visual_search.gateway.process import GatewayProcess
    from visual_search.launcher import Stack, StackOptions

    rows = list(iter_source(args.manifest, "catalog"))
    if args.limit:
        rows = rows[: args.limit]
    photos = {item_id: path.read_bytes() for item_id, path, _ in rows}
    load_start = round(os.getloadavg()[0], 2)
    totals = {"before": [0.0, 0], "after": [0.0, 0]}
    chunks = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, Stack(
        StackOptions(Path(tmp) / "stack", shards=2, precision=args.precision)
    ) as stack:
        gw_after = stack.gateway
        with GatewayProcess(
            stack.shard_spec(), triton_url=stack.triton.grpc_url, log_path=Path(tmp) / "old-gw.log",
            extra_args=OLD_ARGS,
        ) as gw_before:
            warm = [IndexItem(f"warm/{i}", photos[r[0]]) for i, r in enumerate(rows[:4])]
            _index(gw_before.address, warm)
            _index(gw_after.address, warm)
            for n, a in enumerate(range(0, len(rows), args.chunk)):
                chunk = rows[a : a + args.chunk]
                order = ("before", "after") if n % 2 == 0 else ("after", "before")
                rec: dict[str, Any] = {"items": len(chunk), "first": order[0]}
                for mode in order:
                    address = gw_before.address if mode == "before" else gw_after.address
                    items = [
                        IndexItem(f"{mode}/{item_id}", photos[item_id], category=label)
                        for item_id, _, label in chunk
                    ]
                    seconds, ok = _index(address, items)
                    totals[mode][0] += seconds
                    totals[mode][1] += ok
                    rate = round(ok / seconds, 2)
                    rec[mode] = {"seconds": round(seconds, 2), "ok": ok, "items_per_s": rate}
                chunks.append(rec)
            sample = [photos[r[0]] for r in rows[: args.triton_sample]]
            triton_s = asyncio.run(_triton_only(stack.triton.grpc_url, sample, 4))
    before = totals["before"][1] / totals["before"][0]
    after = totals["after"][1] / totals["after"][0]
    return {
        "benchmark": "ingest",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arguments": {k: str(v) for k, v in vars(args).items() if k != "func"},
        "catalog": {"manifest": str(args.manifest), "split": "catalog", "items": len(rows)},
        "modes": {
            "before": "gateway " + " ".join(OLD_ARGS) + " (one item per shard Upsert, 4 in flight)",
            "after": (
                f"gateway defaults: {D.index_concurrency} in flight, {D.index_triton_concurrency} on Triton, "
                f"group-committed Upserts (<= {D.index_upsert_batch} items)"
            ),
        },
        "hardware": hardware(),
        "load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "chunks": chunks,
        "results": {
            "before_items_per_s": round(before, 2),
            "after_items_per_s": round(after, 2),
            "speedup": round(after / before, 2),
            "ok_items": {"before": totals["before"][1], "after": totals["after"][1]},
            "triton_detect_and_embed_only_items_per_s_at_concurrency_4": round(len(sample) / triton_s, 2),
        },
        "goal": ">= 2x items/s",
    }


def _main(args: argparse.Namespace) -> int:
    return write_report(run(args), args.out, "results")


def register(subparsers: argparse._SubParsersAction) -> None:
    from visual_search.launcher import DEFAULT_MANIFEST

    p = subparsers.add_parser("ingest", help="bulk-ingest items/s of the catalog, before/after batching")
    p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    p.add_argument("--limit", type=int, default=0, help="catalog items (0 = all of the catalog split)")
    p.add_argument("--chunk", type=int, default=50, help="items per alternating chunk")
    p.add_argument("--triton-sample", type=int, default=60, help="photos for the Triton-only reference")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "int8"))
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "ingest.json")
    p.set_defaults(func=_main)
