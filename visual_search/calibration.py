"""The "no close match" threshold of each embedding model version: one file, read by the gateway.

Cosine scores mean different things under different encoders, so the threshold is keyed by the
embedding model version (artifacts/models/calibration.json, written by `vsearch calibrate`). A
version with no entry (e.g. a freshly adapted encoder) is served *uncalibrated*: threshold 0, no
hit is flagged either way, and the response says so (ResultList.close_match_threshold == 0).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from visual_search import models

FILE_NAME = "calibration.json"
SCHEMA = 1


class CalibrationError(ValueError):
    """The calibration file or a threshold is unusable."""


@dataclass(frozen=True)
class Calibration:
    model_version: str
    threshold: float  # a hit is a close match when its exact cosine score >= threshold
    rule: str = ""  # how it was fitted (vsearch calibrate)
    fit_sets: list[str] = field(default_factory=list)
    cross_set: dict[str, Any] = field(default_factory=dict)  # measured on sets left out of the fit


def default_path() -> Path:
    return models.artifacts_dir() / FILE_NAME


def check_threshold(t: float) -> float:
    """A usable threshold is a cosine in (0, 1]; 0 means 'not calibrated'."""
    if not math.isfinite(t) or not 0.0 <= t <= 1.0:
        raise CalibrationError(f"close-match threshold must be a cosine in [0, 1] (0 = off), got {t}")
    return float(t)


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"schema": SCHEMA, "by_model_version": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CalibrationError(f"{path}: not JSON ({e})") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(
        data.get("by_model_version"), dict
    ):
        raise CalibrationError(f"{path}: want {{'schema': {SCHEMA}, 'by_model_version': {{...}}}}")
    return data


def load(model_version: str, path: Path | None = None) -> Calibration | None:
    """The calibration of `model_version`, or None when that version was never calibrated."""
    entry = _read(path or default_path())["by_model_version"].get(model_version)
    if entry is None:
        return None
    try:
        cal = Calibration(**entry)
    except TypeError as e:
        raise CalibrationError(f"calibration of {model_version}: {e}") from e
    check_threshold(cal.threshold)
    return cal


def write_entry(model_version: str, cal: Calibration, path: Path | None = None) -> Path:
    """Add or replace one version's entry; atomic (temp file + rename) so a reader never sees half."""
    path = path or default_path()
    check_threshold(cal.threshold)
    data = _read(path)
    data["by_model_version"][model_version] = asdict(cal)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration-")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def is_close(score: float, exact_match: bool, threshold: float) -> bool:
    """Close match: an exact copy, or a score at or above a calibrated (non-zero) threshold."""
    return exact_match or (threshold > 0.0 and score >= threshold)
