"""Small-count CI version of `vsearch bench crash` (the full run uses >= 100 kills)."""

from __future__ import annotations

from pathlib import Path

from visual_search.bench.crash import run_crash_test


def test_sigkill_during_ingest_loses_nothing(tmp_path: Path) -> None:
    result = run_crash_test(3, tmp_path / "data", min_delay=0.3, max_delay=0.8, search_sample=30, seed=1)
    assert result["upserts_acked"] > 0
    assert result["problems"] == {"lost_acked": 0, "wrong_vector": 0, "resurrected": 0, "not_searchable": 0}
