"""`vsearch eval` end to end on a tiny labeled set: in-process reference and the served path
(real Triton + shard + gateway) agree, and the JSON report carries every metric."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from visual_search import cli
from visual_search.launcher import DEFAULT_MANIFEST, stack_missing

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("Oatly-Oat-Milk", "Arla-Sour-Milk", "Alpro-Blueberry-Soyghurt")

pytestmark = pytest.mark.skipif(stack_missing() is not None, reason=str(stack_missing()))


def tiny_manifest(tmp: Path) -> Path:
    """3 products x (4 catalog + 1 query) photos, image paths pointing into ../shared/data."""
    with DEFAULT_MANIFEST.open() as f:
        rows = list(csv.DictReader(f))
    out = tmp / "manifest.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "label", "split"])
        w.writeheader()
        for lbl in LABELS:
            for split, n in (("catalog", 4), ("query", 1)):
                for r in [r for r in rows if r["label"] == lbl and r["split"] == split][:n]:
                    w.writerow(
                        {"image": str(DEFAULT_MANIFEST.parent / r["image"]), "label": lbl, "split": split}
                    )
    return out


def test_eval_inprocess_and_served_agree(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path)
    out = tmp_path / "eval.json"
    out.write_text(json.dumps({"crossset": {"rows": "kept"}, "results": ["replaced"]}))
    rc = cli.main(
        [
            "eval",
            "--manifest",
            str(manifest),
            "--precision",
            "fp32",
            "--no-sweep",
            "--k",
            "10",
            "--out",
            str(out),
            "--plot",
            "",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["crossset"] == {"rows": "kept"}  # the cross-set protocol's rows share the file
    rows = {r["config"]: r for r in report["results"]}
    assert report["hardware"]["cpus"] >= 1 and report["seconds"] > 0
    for r in rows.values():
        m = r["metrics"]
        assert r["n_queries"] == len(LABELS)
        for key in ("map", "hit@1", "ndcg@10", "mrr", "recall@10", "max_recall@10", "precision@10"):
            assert 0.0 <= m[key] <= 1.0, (r["config"], key)
        assert m["recall@10"] <= m["max_recall@10"] + 1e-9
    ref = rows["inprocess-exact-fp32 catalog=objects+whole query=served-default"]["metrics"]
    served = rows["served-exact query=default (fp32)"]
    assert served["partial_queries"] == 0 and served["latency_ms"]["p50"] > 0
    # the gateway's default: max over the default box and the whole image (whole image alone when
    # nothing is detected)
    assert set(served["query_strategies"]) <= {"max(default-box,whole-image)", "whole-image"}
    # 15 items: below the IVF-PQ training threshold
    assert served["shard_index_types"][0].startswith("flat (")
    # same models, same preprocessing, exact search: the served ranking matches the reference
    assert served["metrics"]["hit@1"] == pytest.approx(ref["hit@1"])
    assert served["metrics"]["map"] == pytest.approx(ref["map"], abs=0.05)
