"""Small-count CI version of `vsearch bench crash` (the full run uses >= 100 kills)."""

from __future__ import annotations

from pathlib import Path

from visual_search.bench.crash import run_crash_test, run_replica_crash_test


def test_sigkill_during_ingest_loses_nothing(tmp_path: Path) -> None:
    result = run_crash_test(3, tmp_path / "data", min_delay=0.3, max_delay=0.8, search_sample=30, seed=1)
    assert result["upserts_acked"] > 0
    assert result["problems"] == {"lost_acked": 0, "wrong_vector": 0, "resurrected": 0, "not_searchable": 0}


def test_replica_killed_and_wiped_during_ingest_catches_up_before_serving(tmp_path: Path) -> None:
    """Kill replica B of two during ingest, wipe it, bring it back empty while ingest goes on: it is
    NOT_SERVING until it caught up from A, and then holds every acknowledged write."""
    result = run_replica_crash_test(3, tmp_path / "data", preload=3000, search_sample=30, seed=2)
    assert result["upserts_acked"] > 3000 and result["b_write_failures"] > 0
    assert result["never_served_before_caught_up"], result["rounds"]
    assert result["problems"] == {"lost_acked": 0, "wrong_vector": 0, "resurrected": 0, "not_searchable": 0}
    assert result["all_converged"]
    wiped = [r for r in result["rounds"] if r["b_restart"] == "empty"]
    assert len(wiped) == 3 and all(r["items_copied"] >= 3000 for r in wiped)
    assert all(r["read_refused_while_catching_up"] in (True, None) for r in result["rounds"])
