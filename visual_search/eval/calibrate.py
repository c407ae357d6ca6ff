"""Fit the "no close match" threshold on the dev sets' matching and non-matching pairs, and score
it cross-set.

    vsearch calibrate [--data ../shared/data] [--precision int8|fp32|both]    (eval/calibrate_cli.py)

A hit is a *close match* when its exact cosine score reaches the threshold; a result list with no
close match says so instead of showing confident-looking junk (a bus photo against a yoghurt
catalog). Per dev query, two scores are taken: its best item when its product is in the catalog
and that best item is right (a close match the user should see), and its best item once every
catalog item of its label is left out ("out-of-catalog": the product is not sold here, only
non-matching pairs remain). The threshold maximises Youden's J = (share of the first kind at or
above it) - (share of the second kind at or above it), each set weighted equally (the middle of a
tie). Reported with it,
on every set: the precision of the hits it flags, and how often queries from the other domains
(dogs against groceries, ...) are told "no close match".

Scores are the served ones: the default photo query (query-side detector; item score = the better
of the default box's and the whole image's score, the gateway's "max" strategy), catalog = whole
photo + detected objects, item score = best entry, exact cosine, the encoder at the served precision.
Protocol (issue 14): "cross-set" fits on two sets and scores the third; "in-set" (the shipped
threshold) fits on all three and is labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from visual_search import preprocess as P
from visual_search.eval import inprocess as I
from visual_search.eval.dataset import LabeledImage
from visual_search.reference import ReferencePipeline

RULE = (
    "threshold maximising Youden's J between in-catalog queries' correct top-1 scores and "
    "out-of-catalog top-1 scores (the query's label left out of the catalog), sets weighted equally; "
    "served scores (default photo query = max(default box, whole image), catalog whole + objects, "
    "item = best entry, exact cosine)"
)
TOP = 10  # hits a grid shows: flagged-hit precision is measured over these
_GRID = np.round(np.arange(0.30, 0.9801, 0.001), 3)


@dataclass
class EmbeddedSet:
    """One labeled set as serving embeds it."""

    name: str
    catalog: I.EmbeddedSet  # entries (whole photo + objects) and their owning item
    queries: np.ndarray  # float32 [Q, M, D]: each query's vectors (default box, whole image)
    q_labels: np.ndarray  # [Q] str
    c_labels: np.ndarray  # [N] str

    def item_scores(self, queries: np.ndarray) -> np.ndarray:
        """float32 [Q, N]: each query against each catalog item (its best entry, the better of the
        query's vectors), as the shards + the gateway's fusion score."""
        return I.fused_item_scores(queries, self.catalog, len(self.c_labels))

    @property
    def same(self) -> np.ndarray:
        """bool [Q, N]: the catalog item is a match of the query (same label)."""
        return self.q_labels[:, None] == self.c_labels[None, :]


def embed_set(pipe: ReferencePipeline, name: str, catalog: list[LabeledImage],
              queries: list[LabeledImage]) -> EmbeddedSet:
    cat = I.catalog_entries(I.embed_images(pipe, catalog), objects=True)
    q = np.stack([I.default_query_vectors(pipe, P.decode_image(x.path.read_bytes())) for x in queries])
    return EmbeddedSet(name, cat, q, np.asarray([x.label for x in queries]),
                       np.asarray([c.label for c in catalog]))


@dataclass
class Pairs:
    """The per-query scores the threshold is fitted on and judged by."""

    correct_top1: np.ndarray  # best item score of in-catalog queries whose best item is a match
    out_of_catalog_top1: np.ndarray  # best non-matching item score (the query's label left out)


def pairs(s: EmbeddedSet) -> Pairs:
    scores, same = s.item_scores(s.queries), s.same
    best = scores.argmax(axis=1)
    right = same[np.arange(len(best)), best]
    return Pairs(scores.max(axis=1)[right], np.where(same, -np.inf, scores).max(axis=1))


def fit_threshold(fit: list[Pairs]) -> float:
    """The cosine maximising Youden's J, sets weighted equally (a big set must not decide alone)."""
    if not fit or any(len(p.correct_top1) == 0 or len(p.out_of_catalog_top1) == 0 for p in fit):
        raise ValueError("every fit set needs queries with a correct top-1 and out-of-catalog queries")
    tpr = np.mean([(p.correct_top1[:, None] >= _GRID).mean(axis=0) for p in fit], axis=0)
    fpr = np.mean([(p.out_of_catalog_top1[:, None] >= _GRID).mean(axis=0) for p in fit], axis=0)
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-9)
    return float(_GRID[best[len(best) // 2]])  # the middle of a tie: the widest margin both ways


def _share(mask: np.ndarray) -> float | None:
    return round(float(mask.mean()), 4) if mask.size else None


def score_threshold(s: EmbeddedSet, t: float, others: list[EmbeddedSet]) -> dict[str, Any]:
    """What a user of set s sees with threshold t (none of it was used to fit t when cross-set)."""
    scores, same = s.item_scores(s.queries), s.same
    top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP]
    top_scores = np.take_along_axis(scores, top, axis=1)
    top_same = np.take_along_axis(same, top, axis=1)
    flagged = top_scores >= t
    close1 = flagged[:, 0]
    p = pairs(s)
    foreign = np.concatenate([s.item_scores(o.queries).max(axis=1) for o in others] or [np.zeros(0)])
    return {
        "threshold": round(t, 4),
        "queries": int(len(s.q_labels)),
        # of the top-10 hits flagged close, the share showing the query's product (label)
        "close_hit_precision": _share(top_same[flagged]),
        "close_hits_per_query": round(float(flagged.sum(axis=1).mean()), 3),
        # queries whose correct best hit is flagged close (what the signal must not hide)
        "correct_top1_close_rate": _share(p.correct_top1 >= t),
        "in_catalog_top1_close_rate": _share(close1),
        "top1_precision_when_close": _share(top_same[close1, 0]),
        "top1_precision_when_not_close": _share(top_same[~close1, 0]),
        "top1_precision_all": _share(top_same[:, 0]),
        # product not sold here (same domain), and queries from the other sets' domains
        "out_of_catalog_no_close_rate": _share(p.out_of_catalog_top1 < t),
        "other_domain_no_close_rate": _share(foreign < t),
        "other_domain_queries": int(len(foreign)),
    }


def _quantiles(x: np.ndarray) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(x, q)), 4) for q in (5, 50, 95)}


def calibrate(sets: list[EmbeddedSet]) -> dict[str, Any]:
    """Cross-set rows (fit on the others, score one), in-set rows and the shipped threshold."""
    ps = {s.name: pairs(s) for s in sets}
    cross = []
    for s in sets:
        rest = [o for o in sets if o.name != s.name]
        t = fit_threshold([ps[o.name] for o in rest])
        cross.append({"dataset": s.name, "protocol": "cross-set", "fit_sets": [o.name for o in rest],
                      **score_threshold(s, t, rest)})
    shipped = fit_threshold(list(ps.values()))
    in_set = [{"dataset": s.name, "protocol": "in-set", "fit_sets": [o.name for o in sets],
               **score_threshold(s, shipped, [o for o in sets if o.name != s.name])} for s in sets]
    dists = {
        s.name: {
            "correct_top1": _quantiles(ps[s.name].correct_top1),
            "out_of_catalog_top1": _quantiles(ps[s.name].out_of_catalog_top1),
        }
        for s in sets
    }
    return {"threshold": shipped, "cross_set": cross, "in_set": in_set, "score_distributions": dists}


def probe(s: EmbeddedSet, vectors: np.ndarray) -> float:
    """Best item score of one query's vectors [M, D] against set s's catalog (e.g. the bus photo)."""
    return float(s.item_scores(vectors[None].astype(np.float32)).max())
