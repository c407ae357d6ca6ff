"""Labeled dev sets and the calibration set, always through visual_search.preprocess."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.env import DATASETS, REPO, SHARED, sha256_file
from visual_search import preprocess as P


@dataclass(frozen=True)
class Item:
    path: Path
    label: str
    split: str  # "catalog" or "query"


def load_set(name: str) -> list[Item]:
    """One dev set's manifest rows, in manifest order (deterministic)."""
    root = SHARED / "data" / name
    with open(root / "manifest.csv", newline="") as f:
        return [Item(root / r["image"], r["label"], r["split"]) for r in csv.DictReader(f)]


def catalog_images() -> list[Path]:
    """Catalog-split images of every dev set: the only images used for fitting/calibration."""
    return [it.path for name in DATASETS for it in load_set(name) if it.split == "catalog"]


def calibration_images(n: int) -> list[Path]:
    """A fixed, evenly spaced subset of the catalog images (reproducible, covers both sets)."""
    imgs = sorted(catalog_images(), key=lambda p: str(p.relative_to(SHARED)))
    idx = np.linspace(0, len(imgs) - 1, num=min(n, len(imgs))).round().astype(int)
    return [imgs[i] for i in sorted(set(idx.tolist()))]


def set_hash(paths: list[Path]) -> str:
    """sha256 over (relative path, file sha256) of an image set: recorded in model metadata."""
    h = hashlib.sha256()
    for p in sorted(paths, key=str):
        rel = p.relative_to(SHARED) if p.is_relative_to(SHARED) else p.relative_to(REPO)
        h.update(f"{rel}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def decode(path: Path) -> np.ndarray:
    return P.decode_image(path.read_bytes())


def encoder_batches(paths: list[Path], batch: int = 32) -> Iterator[np.ndarray]:
    """Whole images -> [B,3,224,224] float32 via the shared encoder_input."""
    for i in range(0, len(paths), batch):
        yield np.stack([P.encoder_input(decode(p)) for p in paths[i : i + batch]])


def detector_inputs(paths: list[Path]) -> tuple[np.ndarray, list[P.Letterbox]]:
    """Whole images -> [N,3,640,640] letterboxed float32 via the shared letterbox."""
    outs = [P.letterbox(decode(p)) for p in paths]
    return np.stack([o[0] for o in outs]), [o[1] for o in outs]
