"""Canary probe files, recall and verdicts (no processes; the e2e test runs them on a stack)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visual_search.eval import canary as K

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "grocery_packages_dev" / "manifest.csv"


def test_probe_recall_is_normalised_by_what_k_allows() -> None:
    assert K.probe_recall(["a", "b", "c"], ["a", "b"], k=3) == 1.0
    assert K.probe_recall(["a", "x", "y"], ["a", "b"], k=3) == 0.5
    assert K.probe_recall(["a", "b"], ["a", "b", "c", "d"], k=2) == 1.0  # k caps the denominator
    assert K.probe_recall(["x", "a"], ["a"], k=1) == 0.0  # only the top k counts
    assert K.probe_recall(["a"], [], k=5) == 0.0


def test_helm_style_bare_list_loads(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"query_item_id": "sku-1", "expected_item_ids": ["sku-1", "sku-2"]}]))
    ps = K.load_probes(f)
    assert ps.k == 10 and ps.probes[0].query() == {"item_id": "sku-1"}
    assert ps.probes[0].expected_item_ids == ("sku-1", "sku-2")


def test_roundtrip_photo_probes_inline_and_by_path(tmp_path: Path) -> None:
    img = tmp_path / "q.jpg"
    img.write_bytes(b"\xff\xd8fake")
    ps = K.ProbeSet([K.Probe(("a",), image=img.read_bytes(), name="q", label="L")], k=5, model_version="v1")
    for inline in (True, False):
        f = tmp_path / f"p{inline}.json"
        K.save_probes(ps, f, inline_images=inline, paths=[str(img)])
        back = K.load_probes(f)
        assert back.k == 5 and back.model_version == "v1"
        assert back.probes[0].image == img.read_bytes() and back.probes[0].label == "L"


@pytest.mark.parametrize("bad", [{"expected_item_ids": ["a"]}, {"query_item_id": "x"}])
def test_bad_probe_is_refused(tmp_path: Path, bad: dict) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps([bad]))
    with pytest.raises(ValueError):
        K.load_probes(f)


def _report(recalls: list[float], versions: list[str], errors: int = 0) -> K.CanaryReport:
    probe = K.Probe(("a",), query_item_id="a")
    res = [K.ProbeResult(probe, recall=r) for r in recalls]
    res += [K.ProbeResult(probe, error="UNAVAILABLE: x") for _ in range(errors)]
    return K.CanaryReport(10, res, versions, 0.1)


def test_verdict_floor_version_and_errors() -> None:
    assert _report([1.0, 0.8], ["v1"]).verdict(0.9, "v1") == []
    assert "floor" in _report([1.0, 0.6], ["v1"]).verdict(0.9)[0]
    assert any("!= expected" in w for w in _report([1.0], ["v2"]).verdict(0.5, "v1"))
    assert any("several" in w for w in _report([1.0], ["v1", "v2"]).verdict(0.5))
    assert any("every probe failed" in w for w in _report([], ["v1"], errors=2).verdict(0.0))
    assert _report([1.0], ["v1"], errors=1).failed == 1


@pytest.mark.skipif(not SHARED.exists(), reason="shared data not present")
def test_label_probes_expect_same_label_catalog_items() -> None:
    ps, paths = K.build_from_labels(SHARED, n=6, k=5, seed=1)
    assert len(ps.probes) == 6 == len(paths)
    assert len({p.label for p in ps.probes}) == 6  # spread over labels
    for p in ps.probes:
        assert p.image and all(e.split("/")[1] == p.label for e in p.expected_item_ids)
    again, _ = K.build_from_labels(SHARED, n=6, k=5, seed=1)
    assert [p.name for p in again.probes] == [p.name for p in ps.probes]  # reproducible


def test_recall_by_shard_shows_the_shard_that_lost_its_items() -> None:
    from visual_search.ids import shard_for

    on = {s: [f"sku-{i}" for i in range(200) if shard_for(f"sku-{i}", 2) == s][:2] for s in (0, 1)}
    probe = K.Probe((on[0][0], on[0][1], on[1][0], on[1][1]), query_item_id=on[0][0])
    # shard 1's items are gone from the answers; shard 0's are there
    got = K.ProbeResult(probe, returned=[on[0][0], on[0][1], "x"], recall=0.5)
    report = K.CanaryReport(10, [got], ["m"], 0.1)
    assert report.recall_by_shard(2) == {0: 1.0, 1: 0.0}
    errored = K.CanaryReport(10, [K.ProbeResult(probe, error="UNAVAILABLE: down")], ["m"], 0.1)
    assert errored.recall_by_shard(2) == {0: 0.0, 1: 0.0}
