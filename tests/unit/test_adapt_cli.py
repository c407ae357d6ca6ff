"""`vsearch adapt` / `vsearch eval --protocol crossset` wiring in the serving venv (no torch here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _vsearch(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "visual_search.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def test_adapt_without_the_export_env_says_how_to_install_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-python")
    r = _vsearch("adapt", "--manifest", "m.csv", VSEARCH_EXPORT_PYTHON=missing)
    assert r.returncode != 0
    assert missing in r.stderr and "install_export.sh" in r.stderr


def test_adapt_needs_a_manifest_or_a_folder() -> None:
    r = _vsearch("adapt")
    assert r.returncode == 2 and "--manifest" in r.stderr


def test_eval_crossset_runs_in_the_export_env(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-python")
    r = _vsearch("eval", "--protocol", "crossset", VSEARCH_EXPORT_PYTHON=missing)
    assert r.returncode != 0 and "install_export.sh" in r.stderr
