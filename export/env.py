"""Paths and the offline setup ultralytics needs (no network on these machines)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from visual_search import contract as C

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO / ".." / "shared").resolve()
ARTIFACTS = REPO / C.ARTIFACTS_DIR
BENCHMARKS = REPO / "benchmarks"
DATASETS = ("oxford_pets_dogs", "grocery_packages_dev", "clothing10_cc0")
DETECTOR_WEIGHTS = SHARED / "models" / "yolo11n_dequant.pt"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
)


def setup_offline() -> Path:
    """Point ultralytics/matplotlib at writable dirs and pre-seed the fonts it would download.

    Must run before `import ultralytics`: it reads these variables at import time.
    """
    cfg = REPO / ".cache" / "ultralytics"
    mpl = REPO / ".cache" / "matplotlib"
    cfg.mkdir(parents=True, exist_ok=True)
    mpl.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cfg))
    os.environ.setdefault("MPLCONFIGDIR", str(mpl))
    font = next((Path(f) for f in FONT_CANDIDATES if Path(f).exists()), None)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if font is not None and not (cfg / name).exists():
            shutil.copyfile(font, cfg / name)
    return cfg


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (weights are tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
