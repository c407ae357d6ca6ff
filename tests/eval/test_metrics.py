"""Retrieval metrics against hand-computed values."""

from __future__ import annotations

import pytest

from visual_search.eval import metrics as M

RANKED = ["a", "b", "a", "c", "a"]  # relevant label "a" at ranks 1, 3, 5


def test_recall_precision_hit() -> None:
    assert M.recall_at(RANKED, "a", 4, 3) == pytest.approx(2 / 4)
    assert M.precision_at(RANKED, "a", 5) == pytest.approx(3 / 5)
    assert M.hit_at(RANKED, "a", 1) == 1.0 and M.hit_at(RANKED, "b", 1) == 0.0
    assert M.max_recall_at(20, 10) == 0.5 and M.max_recall_at(3, 10) == 1.0


def test_mrr_and_ap() -> None:
    assert M.reciprocal_rank(RANKED, "c") == pytest.approx(1 / 4)
    assert M.reciprocal_rank(RANKED, "z") == 0.0
    # AP with 4 relevant in the catalog, 3 retrieved at ranks 1,3,5: (1 + 2/3 + 3/5) / 4
    assert M.average_precision(RANKED, "a", 4) == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)
    assert M.average_precision(["a", "a"], "a", 2) == 1.0


def test_ndcg() -> None:
    import math

    dcg = 1 + 1 / math.log2(4) + 1 / math.log2(6)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert M.ndcg_at(RANKED, "a", 3, 10) == pytest.approx(dcg / ideal)
    assert M.ndcg_at(["a", "a", "a"], "a", 3, 10) == pytest.approx(1.0)


def test_evaluate_aggregates_per_label() -> None:
    rep = M.evaluate([["a", "b"], ["b", "a"]], ["a", "b"], ["a", "a", "b"])
    assert rep.n_queries == 2
    assert rep.metrics["hit@1"] == 1.0
    assert rep.per_label["a"]["recall@1"] == pytest.approx(0.5)
    assert rep.per_label["b"]["map"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.evaluate([["a"]], ["a", "b"], ["a"])
