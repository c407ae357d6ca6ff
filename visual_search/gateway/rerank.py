"""Business re-rank after the merge: boosts, exact-copy promotion, near-duplicate collapse (R4, R5).

Order of operations, and why:
1. boosts: rank_score = score + boost_available*[available] + boost_region*[region == user's];
   small additive boosts reorder near-ties without letting a poor match jump a good one;
2. exact copies (pHash within a few bits of the query photo) go first: the caller is holding the
   catalog photo itself;
3. near-duplicate collapse (cosine > threshold between result vectors): the best-ranked of a
   group stays, the others are listed in its `duplicates` - so step 2 decides the survivor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visual_search.gateway.merge import Candidate
from visual_search.gateway.phash import hamming


@dataclass(frozen=True)
class RerankParams:
    boost_available: float = 0.02
    boost_region: float = 0.02
    user_region: str = ""
    business: bool = True
    collapse: bool = True
    dedup_threshold: float = 0.95
    query_phash: int = 0  # 0 = no query photo
    phash_max_distance: int = 6


def apply_boosts(cands: list[Candidate], p: RerankParams) -> None:
    for c in cands:
        boost = 0.0
        if p.business:
            if c.metadata.available:
                boost += p.boost_available
            if p.user_region and c.metadata.region == p.user_region:
                boost += p.boost_region
        c.rank_score = c.score + boost


def mark_exact(cands: list[Candidate], query_phash: int, max_distance: int) -> None:
    if not query_phash:
        return
    for c in cands:
        ph = int(c.metadata.phash)
        c.exact_match = bool(ph) and hamming(ph, query_phash) <= max_distance


def collapse_duplicates(ranked: list[Candidate], threshold: float) -> list[Candidate]:
    """Greedy in rank order: drop a candidate whose vector is > threshold cosine to a kept one.

    Dot products are elementwise multiply + sum on purpose: for these tiny matrices a BLAS call
    costs more in thread wake-up (and spinning on a busy host) than the arithmetic.
    """
    kept: list[Candidate] = []
    with_vec: list[Candidate] = []  # the kept candidates that have a vector, in kept order
    mat = np.empty((len(ranked), 0), np.float32)
    for c in ranked:
        if c.vector is not None and with_vec:
            sims = (mat[: len(with_vec)] * c.vector).sum(axis=1)
            j = int(np.argmax(sims))
            if float(sims[j]) > threshold:
                with_vec[j].duplicates.append(c.item_id)
                continue
        kept.append(c)
        if c.vector is not None:
            if mat.shape[1] != c.vector.shape[0]:
                mat = np.empty((len(ranked), c.vector.shape[0]), np.float32)
            mat[len(with_vec)] = c.vector
            with_vec.append(c)
    return kept


def rerank(cands: list[Candidate], k: int, p: RerankParams) -> list[Candidate]:
    """Boost, promote exact copies, collapse near-duplicates, cut to k."""
    apply_boosts(cands, p)
    mark_exact(cands, p.query_phash, p.phash_max_distance)
    ranked = sorted(cands, key=lambda c: (not c.exact_match, -c.rank_score, c.item_id))
    if p.collapse:
        ranked = collapse_duplicates(ranked, p.dedup_threshold)
    return ranked[:k]
