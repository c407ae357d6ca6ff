"""The 'no close match' threshold: how it is fitted, stored per model version and served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from visual_search import calibration as CAL
from visual_search.eval import calibrate as F
from visual_search.eval.inprocess import EmbeddedSet as Entries
from visual_search.gateway.config import GatewayConfig, ShardMap
from visual_search.gateway.service import close_match_threshold


def _pairs(rng: np.random.Generator, pos: tuple[float, float], neg: tuple[float, float], n: int) -> F.Pairs:
    return F.Pairs(rng.normal(*pos, n).astype(np.float32), rng.normal(*neg, n).astype(np.float32))


def test_threshold_separates_matches_from_out_of_catalog_scores() -> None:
    rng = np.random.default_rng(0)
    t = F.fit_threshold([_pairs(rng, (0.80, 0.02), (0.55, 0.02), 400)])
    assert 0.6 < t < 0.75


def test_sets_weigh_equally_whatever_their_size() -> None:
    rng = np.random.default_rng(1)
    big = _pairs(rng, (0.80, 0.02), (0.60, 0.02), 5000)  # separates at ~0.70
    small = _pairs(rng, (0.60, 0.02), (0.40, 0.02), 20)  # separates at ~0.50
    t_both = F.fit_threshold([big, small])
    t_big = F.fit_threshold([big])
    assert abs(t_big - 0.70) < 0.03
    # pooled by count, the big set would pull the threshold to its own ~0.70; weighted equally,
    # losing all of the small set's matches costs as much as losing all of the big set's
    assert t_both < 0.66


def test_fit_refuses_a_set_without_matches() -> None:
    with pytest.raises(ValueError, match="correct top-1"):
        F.fit_threshold([F.Pairs(np.zeros(0, np.float32), np.ones(3, np.float32))])


def _toy_set(name: str, centre: int, rng: np.random.Generator) -> F.EmbeddedSet:
    """Two labels per set, near two axes of a 16-d space; set `centre` picks the axes."""
    d = 16
    labels = ["a", "b"]
    cat, owner, c_labels, q, q_labels = [], [], [], [], []
    for li, lbl in enumerate(labels):
        axis = np.zeros(d, np.float32)
        axis[centre + li] = 1
        for _ in range(3):
            v = axis + 0.15 * rng.standard_normal(d).astype(np.float32)
            cat.append(v / np.linalg.norm(v))
            owner.append(len(c_labels))
            c_labels.append(lbl)
        for _ in range(4):
            v = axis + 0.15 * rng.standard_normal(d).astype(np.float32)
            q.append(v / np.linalg.norm(v))
            q_labels.append(lbl)
    return F.EmbeddedSet(name, Entries(np.vstack(cat), np.asarray(owner)), np.vstack(q),
                         np.asarray(q_labels), np.asarray(c_labels))


def test_a_query_with_two_vectors_scores_each_item_by_the_better_one() -> None:
    """The served default query is max(default box, whole image): calibration must score it so."""
    s = _toy_set("toy", 0, np.random.default_rng(3))
    box, whole = s.queries[0], s.queries[-1]  # near label a's axis, near label b's axis
    both = s.item_scores(np.stack([box, whole])[None])[0]
    alone = s.item_scores(np.stack([box, whole]))  # [2, N]: each vector as its own query
    np.testing.assert_allclose(both, alone.max(axis=0), rtol=1e-6)
    assert both[s.c_labels == "a"].min() > alone[1][s.c_labels == "a"].max()  # not the min, not one side
    assert both[s.c_labels == "b"].min() > alone[0][s.c_labels == "b"].max()


def test_cross_set_rows_fit_without_the_scored_set() -> None:
    rng = np.random.default_rng(2)
    sets = [_toy_set(n, c, rng) for n, c in (("s1", 0), ("s2", 4), ("s3", 8))]
    res = F.calibrate(sets)
    assert [r["dataset"] for r in res["cross_set"]] == ["s1", "s2", "s3"]
    for r in res["cross_set"]:
        assert r["dataset"] not in r["fit_sets"] and len(r["fit_sets"]) == 2
        # toy sets are separable: matches are close, other domains and other labels are not
        assert r["correct_top1_close_rate"] == 1.0 and r["other_domain_no_close_rate"] == 1.0
        assert r["out_of_catalog_no_close_rate"] == 1.0 and r["close_hit_precision"] == 1.0
    assert all(r["protocol"] == "in-set" and len(r["fit_sets"]) == 3 for r in res["in_set"])
    assert 0.0 < res["threshold"] < 1.0


def test_calibration_file_round_trip_per_model_version(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    assert CAL.load("v1", path) is None  # no file: uncalibrated
    CAL.write_entry("v1", CAL.Calibration("v1", 0.7, rule="r", fit_sets=["x"]), path)
    CAL.write_entry("v2", CAL.Calibration("v2", 0.6), path)
    got = CAL.load("v1", path)
    assert got is not None and got.threshold == 0.7 and got.fit_sets == ["x"]
    assert CAL.load("v3", path) is None
    assert oct(path.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("content", ["not json", json.dumps({"schema": 9}),
                                     json.dumps({"schema": 1, "by_model_version": {"v": {"threshold": 2}}})])
def test_a_broken_calibration_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(content)
    with pytest.raises(CAL.CalibrationError):
        CAL.load("v", path)


def test_served_threshold_override_calibrated_and_uncalibrated(tmp_path: Path, monkeypatch) -> None:
    from visual_search import models

    monkeypatch.setenv(models.ENV_VAR, str(tmp_path))
    CAL.write_entry("cal", CAL.Calibration("cal", 0.71))
    cfg = GatewayConfig(ShardMap((("127.0.0.1:1",),)))
    assert close_match_threshold(cfg, "cal") == 0.71
    assert close_match_threshold(cfg, "adapted-not-calibrated") == 0.0
    assert close_match_threshold(GatewayConfig(cfg.shard_map, close_match_threshold=0.5), "cal") == 0.5
    with pytest.raises(CAL.CalibrationError, match="cosine"):
        close_match_threshold(GatewayConfig(cfg.shard_map, close_match_threshold=1.5), "cal")
    assert CAL.is_close(0.2, True, 0.7) and CAL.is_close(0.71, False, 0.71)
    assert not CAL.is_close(0.7, False, 0.71) and not CAL.is_close(0.99, False, 0.0)
