"""Crash-safe snapshots: files are written into a temporary directory, fsynced, described by a
manifest (sizes + crc32), and the directory is atomically renamed into place. A crash at any
point leaves either the previous snapshot or the new one, never a half-written one; leftover
temporary directories are removed on start, and a snapshot failing its checksums is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visual_search.shard.wal import fsync_dir

MANIFEST = "manifest.json"
KEEP = 2


class SnapshotCorrupt(RuntimeError):
    pass


def _crc_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(16 * 1024 * 1024):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_snapshot(
    root: Path, seq: int, files: Mapping[str, bytes | memoryview], meta: Mapping[str, Any]
) -> Path:
    """Write `files` (name -> bytes) as snapshot `seq`; returns the final directory."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"snap-{seq:020d}-{time.time_ns()}"
    tmp = root / f".tmp-{name}"
    tmp.mkdir()
    entries = {}
    for fname, data in files.items():
        path = tmp / fname
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        entries[fname] = {"bytes": path.stat().st_size, "crc32": zlib.crc32(data)}
    manifest = {"wal_sequence": seq, "created_unix": time.time(), "files": entries, **meta}
    with open(tmp / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    final = root / name
    os.rename(tmp, final)
    fsync_dir(root)
    for old in list_snapshots(root)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_snapshots(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("snap-"))


def verify(path: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise SnapshotCorrupt(f"{path}: unreadable manifest: {exc}") from exc
    for fname, info in manifest["files"].items():
        p = path / fname
        if not p.exists() or p.stat().st_size != info["bytes"] or _crc_file(p) != info["crc32"]:
            raise SnapshotCorrupt(f"{path}: {fname} fails its size/checksum")
    return manifest


def latest_valid(root: Path, log: Any = None) -> tuple[Path, dict[str, Any]] | None:
    """Newest snapshot passing verification; removes temporary leftovers of crashed writes."""
    if root.exists():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
    for path in reversed(list_snapshots(root)):
        try:
            return path, verify(path)
        except SnapshotCorrupt as exc:
            if log is not None:
                log.error("skipping corrupt snapshot", extra={"path": str(path), "error": str(exc)})
    return None
