"""The head's fast window-GeM path (integral images) trains the same head as the per-view path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPORT_PY = REPO / ".venv-export" / "bin" / "python"

SCRIPT = r"""
import numpy as np, torch
from export import head
from export.encoder import Projection
rng = np.random.default_rng(1)
maps = (rng.random((30, 64, 7, 7)) * (rng.random((30, 64, 7, 7)) > 0.4)).astype(np.float16)
win = head.WindowGeM([maps[:12], maps[12:]])
for e, y, x, h, w in [(0, 0, 0, 7, 7), (13, 1, 2, 4, 5), (29, 3, 3, 4, 4)]:
    ref = head._gem(torch.from_numpy(maps[e][:, y:y + h, x:x + w].astype(np.float32))).numpy()
    got = win.gem(np.array([[e, y, x, h, w]]))[0]
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 1e-5, (got, ref)
init = Projection(np.zeros(64, np.float32), rng.standard_normal((16, 64)).astype(np.float32))
groups = [[2 * i, 2 * i + 1] for i in range(15)]
scale = rng.uniform(0.5, 2.0, 64).astype(np.float32)
slow = head.train(maps, groups, init, steps=5, channel_scale=scale)
fast = head.train(win, groups, init, steps=5, channel_scale=scale)
assert np.abs(slow.components - fast.components).max() < 1e-4
assert np.abs(slow.components - init.components).max() > 1e-4  # it did train
print("ok")
"""


@pytest.mark.slow
def test_window_gem_path_trains_the_same_head() -> None:
    if not EXPORT_PY.exists():
        pytest.skip("needs .venv-export (bash scripts/install_export.sh) with torch")
    r = subprocess.run([str(EXPORT_PY), "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-2000:]
