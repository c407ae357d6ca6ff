"""artifacts/models/manifest.json: every artifact with sha256, size, ONNX metadata, versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export import metadata
from export.env import sha256_file

SCHEMA = 1


def write(root: Path, files: dict[str, str],
          default_precision: dict[str, str] | None = None) -> dict[str, Any]:
    """(Re)write the manifest from the files on disk; metadata is read back from each ONNX.

    default_precision (per role) is what serving uses: INT8 only where it passed its gates.
    """
    arts: dict[str, Any] = {}
    for name, fname in sorted(files.items()):
        p = root / fname
        meta = metadata.read(p)
        arts[name] = {"file": fname, "sha256": sha256_file(p), "bytes": p.stat().st_size,
                      "role": name.split("_")[0], "precision": meta.get("precision", ""),
                      "model_version": meta.get("model_version", ""), "metadata": meta}
    versions = {a["precision"]: a["model_version"] for a in arts.values() if a["role"] == "encoder"}
    if default_precision is None:
        default_precision = {role: "fp32" for role in sorted({a["role"] for a in arts.values()})}
    man = {"schema": SCHEMA, "encoder_model_version": versions, "default_precision": default_precision,
           "artifacts": arts}
    (root / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    return man


def complete(root: Path, files: dict[str, str], skip_int8: bool) -> bool:
    """True when the manifest lists every wanted artifact and each file matches its sha256."""
    mpath = root / "manifest.json"
    if not mpath.exists():
        return False
    arts = json.loads(mpath.read_text()).get("artifacts", {})
    wanted = [k for k in files if not (skip_int8 and k.endswith("int8"))]
    return all(k in arts and (root / arts[k]["file"]).exists()
               and sha256_file(root / arts[k]["file"]) == arts[k]["sha256"] for k in wanted)
