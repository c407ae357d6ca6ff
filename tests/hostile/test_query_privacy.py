"""The query photo is never written to disk, never logged, and never left in a place other users can
read (issue 12): a photo carrying a unique marker (a JPEG comment segment, which every decoder skips
but every byte copy keeps) is sent through Detect and Search; then every file the stack or anyone
wrote since - its run directory with all logs, /tmp, and the shared-memory regions Triton's python
backend passes requests through - is searched for the marker."""

from __future__ import annotations

import os
import secrets
import stat
import time
from pathlib import Path

from tests.hostile.conftest import BUS, auth
from visual_search.launcher import Stack
from visual_search.v1 import search_pb2, search_pb2_grpc

MAX_SCAN_BYTES = 256 * 1024 * 1024  # larger files were not written by one query


def marked_jpeg(marker: bytes) -> bytes:
    """bus.jpg with a COM segment right after SOI holding `marker`."""
    seg = b"\xff\xfe" + (len(marker) + 2).to_bytes(2, "big") + marker
    return BUS[:2] + seg + BUS[2:]


def files_written_since(root: Path, t0: float) -> list[Path]:
    out = []
    for dirpath, _, names in os.walk(root, onerror=lambda e: None):
        for n in names:
            p = Path(dirpath) / n
            try:
                st = p.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mtime >= t0 and st.st_size <= MAX_SCAN_BYTES:
                out.append(p)
    return out


def holds(path: Path, marker: bytes) -> bool:
    try:
        return marker in path.read_bytes()
    except OSError:  # gone or unreadable to us: nothing we could leak from it
        return False


def test_query_photo_is_not_persisted_logged_or_world_readable(
    stack: Stack, gateway: search_pb2_grpc.VisualSearchStub
) -> None:
    marker = b"vsearch-privacy-" + secrets.token_hex(16).encode()
    photo = marked_jpeg(marker)
    t0 = time.time() - 1.0
    gateway.Detect(search_pb2.DetectRequest(image=photo), metadata=auth(), timeout=120)
    for q in (search_pb2.ImageQuery(image=photo), search_pb2.ImageQuery(image=photo, whole_image=True)):
        resp = gateway.Search(search_pb2.QueryRequest(k=3, image=q), metadata=auth(), timeout=120)
        assert resp.results[0].hits[0].item_id == "bus"  # the marked photo was really served
    time.sleep(1.0)  # let log handlers flush

    on_disk = [p for root in (stack.opts.run_dir, Path("/tmp")) for p in files_written_since(root, t0)]
    leaked = sorted(str(p) for p in on_disk if holds(p, marker))
    assert not leaked, f"query photo bytes written to {leaked}"

    regions = stack.triton.shm_regions()
    assert regions, "the stack's Triton should pass requests through its own shm regions"
    readable = sorted(str(p) for p in regions if p.exists() and p.stat().st_mode & 0o077)
    assert not readable, f"shm regions readable by group/others: {readable}"
    foreign = [p for p in files_written_since(Path("/dev/shm"), t0) if p not in regions]
    exposed = sorted(str(p) for p in foreign if p.stat().st_mode & 0o077 and holds(p, marker))
    assert not exposed, f"query photo in readable shared memory: {exposed}"
