"""Labeled retrieval sets in the `manifest.csv` format of ../shared/data (image,label,split,...)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("catalog", "query")
# The labeled development sets (three domains) and where they live: ../shared/data beside the repo.
DEV_SETS = ("oxford_pets_dogs", "grocery_packages_dev", "clothing10_cc0")
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass(frozen=True)
class LabeledImage:
    path: Path
    label: str
    split: str

    @property
    def item_id(self) -> str:
        """Stable item id: the image path relative to the manifest's folder."""
        return self.path.parent.name + "/" + self.path.name


def load_manifest(manifest: str | Path) -> list[LabeledImage]:
    """Read a manifest; image paths are relative to its folder. Raises ValueError on bad rows."""
    manifest = Path(manifest)
    root = manifest.parent
    rows: list[LabeledImage] = []
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image", "label", "split"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{manifest}: missing columns {sorted(missing)}")
        for n, row in enumerate(reader, start=2):
            split = row["split"].strip()
            if split not in SPLITS:
                raise ValueError(f"{manifest}:{n}: split must be one of {SPLITS}, got {split!r}")
            rows.append(LabeledImage(root / row["image"], row["label"].strip(), split))
    if not rows:
        raise ValueError(f"{manifest}: no rows")
    return rows


def split(rows: list[LabeledImage]) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """(catalog, queries)."""
    return [r for r in rows if r.split == "catalog"], [r for r in rows if r.split == "query"]
