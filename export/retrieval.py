"""Retrieval mAP with exact cosine search (catalog = split catalog, query = split query)."""

from __future__ import annotations

import numpy as np


def mean_ap(emb: np.ndarray, labels: list[str], splits: list[str]) -> dict[str, float]:
    """mAP and hit@1 over all queries; relevant = same label (every query has relevant items)."""
    e = emb.astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    lab = np.array(labels)
    cat = np.array([s == "catalog" for s in splits])
    qry = np.array([s == "query" for s in splits])
    sims = e[qry] @ e[cat].T
    aps, hits = [], []
    for i, ql in enumerate(lab[qry]):
        order = np.argsort(-sims[i], kind="stable")
        rel = (lab[cat][order] == ql).astype(np.float64)
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append(float((prec * rel).sum() / max(rel.sum(), 1)))
        hits.append(float(rel[0]))
    return {"mAP": round(float(np.mean(aps)), 4), "hit@1": round(float(np.mean(hits)), 4)}
