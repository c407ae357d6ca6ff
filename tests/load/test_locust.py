"""locust against a real stack for a few seconds: the load-test plumbing works and a search
profile runs without errors (R19)."""

from __future__ import annotations

from pathlib import Path

from visual_search.bench.load import PROFILES, run_locust
from visual_search.launcher import Stack


def test_search_profile_runs_without_errors(stack: Stack, tmp_path: Path) -> None:
    stats, _ = run_locust(stack.gateway.address, PROFILES["search"], 2, 8, tmp_path / "search")
    assert stats["requests"] > 0, stats
    assert stats["failures"] == 0, (stats, (tmp_path / "search.log").read_text()[-3000:])
    assert any(name.startswith("Search/") for name in stats["by_name"])
    assert (tmp_path / "search.html").exists()
