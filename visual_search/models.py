"""Where the exported models are and what they are: the one loader for artifacts/models/.

Serving, Triton config generation, shards and evaluation ask this module for artifact paths and
for the embedding model version (stamped on shards and carried by query vectors), instead of
hard-coding file names. Needs no torch: it only reads manifest.json (written by `python -m export`).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from visual_search import contract as C

Precision = Literal["int8", "fp32"]
Role = Literal["detector", "encoder"]
ENV_VAR = "VISUAL_SEARCH_ARTIFACTS"  # overrides the repo's artifacts/models (e.g. in containers)


class ArtifactError(RuntimeError):
    """Artifacts are missing, unknown, or do not match the manifest."""


def artifacts_dir() -> Path:
    """$VISUAL_SEARCH_ARTIFACTS, else <repo>/artifacts/models."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parent.parent / C.ARTIFACTS_DIR


@lru_cache(maxsize=4)
def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ArtifactError(f"{path} not found: run `bash scripts/export_models.sh` (needs .venv-export)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_manifest() -> dict[str, Any]:
    """The parsed manifest.json (cached per path)."""
    return _load(artifacts_dir() / "manifest.json")


def default_precision(role: Role = "encoder") -> Precision:
    """Precision serving uses for a role unless told otherwise: INT8 only where it passed its gates
    (benchmarks/int8_gates.json), else FP32."""
    p = load_manifest().get("default_precision", {}).get(role, "fp32")
    return "int8" if p == "int8" else "fp32"


def _name(name_or_role: str, precision: Precision | None) -> str:
    if name_or_role in ("detector", "encoder"):
        return f"{name_or_role}_{precision or default_precision(name_or_role)}"  # type: ignore[arg-type]
    return name_or_role


def artifact(name: str, precision: Precision | None = None) -> dict[str, Any]:
    """Manifest entry for 'encoder_int8' etc., or for a role ('encoder') at a precision."""
    key = _name(name, precision)
    arts = load_manifest()["artifacts"]
    if key not in arts:
        raise ArtifactError(f"no artifact {key!r} in manifest; have {sorted(arts)}")
    entry: dict[str, Any] = arts[key]
    return entry


def artifact_path(name: str, precision: Precision | None = None, verify: bool = False) -> Path:
    """Path of an artifact ('detector', 'encoder_fp32', ...); verify=True checks its sha256."""
    entry = artifact(name, precision)
    path = artifacts_dir() / entry["file"]
    if not path.exists():
        raise ArtifactError(f"{path} listed in manifest but missing")
    if verify:
        h = hashlib.sha256(path.read_bytes()).hexdigest()
        if h != entry["sha256"]:
            raise ArtifactError(f"{path} sha256 {h} != manifest {entry['sha256']}")
    return path


def model_version(precision: Precision | None = None) -> str:
    """Embedding model version of the encoder at `precision` (what search shards are stamped with).

    INT8 and FP32 embeddings differ slightly, so they carry different versions
    (the INT8 one ends in '-int8'); a shard built with one must be queried with the same one.
    """
    return str(artifact("encoder", precision)["model_version"])


def metadata(name: str, precision: Precision | None = None) -> dict[str, str]:
    """The ONNX metadata_props of an artifact, as recorded in the manifest."""
    return dict(artifact(name, precision)["metadata"])
