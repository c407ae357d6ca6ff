"""ONNX metadata_props stamping: every artifact says what it is and where it came from."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import onnx

OPSET = 17


def export_date() -> str:
    """UTC export time; SOURCE_DATE_EPOCH pins it for byte-reproducible rebuilds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return t.replace(microsecond=0).isoformat()


def stamp(path: Path, props: dict[str, str], producer: str = "visual-search-export") -> None:
    """Merge `props` into the model's metadata_props (existing keys, e.g. ultralytics', kept)."""
    model = onnx.load(str(path))
    current = {p.key: p.value for p in model.metadata_props}
    current.update({k: str(v) for k, v in props.items()})
    del model.metadata_props[:]
    for k in sorted(current):
        model.metadata_props.add(key=k, value=current[k])
    model.producer_name = producer
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def read(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
