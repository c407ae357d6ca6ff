"""Retrieval metrics over ranked label lists (relevant = same label as the query).

Each function takes the ranked labels returned for one query, the query's label and the number of
relevant items in the catalog (needed for recall, AP and nDCG, which count relevant items that
were never retrieved). Aggregation is a plain mean over queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def _rel(ranked: Sequence[str], label: str) -> np.ndarray:
    return np.fromiter((r == label for r in ranked), dtype=bool, count=len(ranked))


def recall_at(ranked: Sequence[str], label: str, n_relevant: int, k: int) -> float:
    """Fraction of all relevant catalog items found in the top k."""
    if n_relevant == 0:
        return 0.0
    return float(_rel(ranked[:k], label).sum()) / n_relevant


def max_recall_at(n_relevant: int, k: int) -> float:
    """Best recall@k any ranking can reach (k < n_relevant caps it below 1)."""
    return min(1.0, k / n_relevant) if n_relevant else 0.0


def precision_at(ranked: Sequence[str], label: str, k: int) -> float:
    return float(_rel(ranked[:k], label).sum()) / k


def hit_at(ranked: Sequence[str], label: str, k: int) -> float:
    """1 if any of the top k is relevant (hit@1 = top-1 accuracy)."""
    return float(_rel(ranked[:k], label).any())


def reciprocal_rank(ranked: Sequence[str], label: str) -> float:
    rel = _rel(ranked, label)
    return 1.0 / (int(np.argmax(rel)) + 1) if rel.any() else 0.0


def average_precision(ranked: Sequence[str], label: str, n_relevant: int) -> float:
    """AP over the returned ranking; relevant items not returned count as misses."""
    if n_relevant == 0:
        return 0.0
    rel = _rel(ranked, label)
    if not rel.any():
        return 0.0
    hits = np.cumsum(rel)
    precisions = hits[rel] / (np.flatnonzero(rel) + 1)
    return float(precisions.sum()) / n_relevant


def ndcg_at(ranked: Sequence[str], label: str, n_relevant: int, k: int) -> float:
    """Binary-relevance nDCG@k."""
    rel = _rel(ranked[:k], label).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((rel * discounts[: rel.size]).sum())
    ideal = float(discounts[: min(k, n_relevant)].sum())
    return dcg / ideal if ideal > 0 else 0.0


KS = (1, 5, 10, 100)


@dataclass
class Report:
    """Mean metrics over queries, overall and per label."""

    n_queries: int
    metrics: dict[str, float]
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)


def query_metrics(ranked: Sequence[str], label: str, n_relevant: int) -> dict[str, float]:
    m: dict[str, float] = {}
    for k in KS:
        m[f"recall@{k}"] = recall_at(ranked, label, n_relevant, k)
        m[f"max_recall@{k}"] = max_recall_at(n_relevant, k)
        m[f"precision@{k}"] = precision_at(ranked, label, k)
    m["hit@1"] = hit_at(ranked, label, 1)
    m["hit@5"] = hit_at(ranked, label, 5)
    m["mrr"] = reciprocal_rank(ranked, label)
    m["map"] = average_precision(ranked, label, n_relevant)
    m["ndcg@10"] = ndcg_at(ranked, label, n_relevant, 10)
    return m


def evaluate(
    rankings: Sequence[Sequence[str]], query_labels: Sequence[str], catalog_labels: Sequence[str]
) -> Report:
    """Mean metrics for `rankings[i]` (ranked catalog labels) answering a query of `query_labels[i]`."""
    if len(rankings) != len(query_labels):
        raise ValueError(f"{len(rankings)} rankings for {len(query_labels)} queries")
    counts: dict[str, int] = {}
    for lab in catalog_labels:
        counts[lab] = counts.get(lab, 0) + 1
    per_query = [query_metrics(r, q, counts.get(q, 0)) for r, q in zip(rankings, query_labels, strict=True)]
    if not per_query:
        return Report(0, {})

    def mean(rows: list[dict[str, float]]) -> dict[str, float]:
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}

    by_label: dict[str, list[dict[str, float]]] = {}
    for q, m in zip(query_labels, per_query, strict=True):
        by_label.setdefault(q, []).append(m)
    return Report(len(per_query), mean(per_query), {k: mean(v) for k, v in sorted(by_label.items())})
