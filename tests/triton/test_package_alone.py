"""The Triton code has one home: a copy of the visual_search package alone (no ensemble/, no
model_repository/, as in the vsearch image) runs `vsearch triton` and writes the same configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_package_alone_generates_the_committed_configs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "visual_search", src / "visual_search", ignore=skip)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(src)}
    out = tmp_path / "repo"

    def vsearch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "visual_search.cli", *args],
            cwd=src, env=env, capture_output=True, text=True, timeout=120,
        )

    r = vsearch("triton", "--help")
    assert r.returncode == 0 and "generate" in r.stdout and "skipping" not in r.stderr, r.stderr
    # The encoder's version parameter comes from the manifest beside the weights.
    enc = ROOT / "artifacts" / "models" / "encoder_fp32.onnx"
    r = vsearch("triton", "generate", "--flavour", "gpu", "--configs-only", "--encoder", str(enc),
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    committed = ROOT / "model_repository" / "gpu"
    names = sorted(p.name for p in committed.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        assert (out / name / "config.pbtxt").read_text() == (committed / name / "config.pbtxt").read_text()
    # The python-backend models travel with the package (repository.py copies them from there).
    for model in ("preprocess", "postprocess", "crop", "split", "detector", "encoder"):
        assert (src / "visual_search" / "triton" / "models" / model / "model.py").is_file()


def test_old_generate_command_still_works(tmp_path: Path) -> None:
    """`python -m ensemble.generate` (older scripts) is a shim over the same generator."""
    r = subprocess.run(
        [sys.executable, "-m", "ensemble.generate", "--configs-only", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    committed = ROOT / "model_repository" / "cpu"
    for cfg in committed.glob("*/config.pbtxt"):
        assert (tmp_path / cfg.parent.name / "config.pbtxt").read_text() == cfg.read_text()
