"""Served-path evaluation: index a labeled catalog through the public API (gateway -> Triton ->
shards) and run every query photo, so the numbers include detection, INT8, IVF-PQ and re-rank.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from visual_search.client import Client, IndexItem
from visual_search.eval import metrics as M
from visual_search.eval.dataset import LabeledImage
from visual_search.v1 import search_pb2


@dataclass
class ServedRun:
    """Metrics of one query configuration plus its latency distribution."""

    name: str
    report: M.Report
    latency_ms: dict[str, float] = field(default_factory=dict)
    partial_queries: int = 0
    # ResultList.query_strategy as the gateway reported it -> queries (what was actually searched)
    query_strategies: dict[str, int] = field(default_factory=dict)


def index_catalog(client: Client, catalog: Sequence[LabeledImage], prefix: str) -> dict[str, str]:
    """Index every catalog photo as item `<prefix>/<item_id>` (category = label). Returns
    item id -> label; raises if any item failed, since a partial catalog would skew every metric."""
    items = (
        IndexItem(
            f"{prefix}/{c.item_id}",
            c.path.read_bytes(),
            category=c.label,
            attributes={"image": f"{prefix}/{c.item_id}"},
        )
        for c in catalog
    )
    labels = {f"{prefix}/{c.item_id}": c.label for c in catalog}
    failed = [r for r in client.index(items, timeout=600) if not r.ok]
    if failed:
        f = failed[0]
        raise RuntimeError(f"{len(failed)} catalog items failed to index, e.g. {f.item_id}: {f.error}")
    return labels


def run_queries(
    client: Client,
    name: str,
    queries: Sequence[LabeledImage],
    labels: dict[str, str],
    catalog_labels: Sequence[str],
    k: int,
    whole_image: bool = False,
    options: search_pb2.SearchOptions | None = None,
) -> ServedRun:
    """Search each query photo (default box, or the whole image) and score the ranked labels."""
    rankings: list[list[str]] = []
    lat: list[float] = []
    partial = 0
    strategies: dict[str, int] = {}
    for q in queries:
        t = time.perf_counter()
        res = client.search(
            image=q.path.read_bytes(), whole_image=whole_image, k=k, options=options, timeout=120
        )
        lat.append((time.perf_counter() - t) * 1000.0)
        partial += res.partial
        for rl in res.lists:
            strategies[rl.query_strategy] = strategies.get(rl.query_strategy, 0) + 1
        rankings.append([labels.get(h.item_id, "?") for h in res.hits])
    report = M.evaluate(rankings, [q.label for q in queries], catalog_labels)
    a = np.asarray(lat)
    stats = {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "mean": float(a.mean())}
    return ServedRun(name, report, stats, partial, strategies)
