"""Write-ahead log: checksummed, fsynced records in size-rotated segment files.

Record = header <u32 payload_len, u32 crc32(seq|op|payload), u64 seq, u8 op> + payload.
A write is acknowledged only after its record is fsynced. On open, the last segment is scanned
and truncated at the first torn/corrupt record (a crash mid-append); corruption in an older,
sealed segment means lost acknowledged data, so opening fails loudly instead.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

_HEADER = struct.Struct("<IIQB")
MAX_RECORD = 256 * 1024 * 1024
OP_UPSERT = 1
OP_DELETE = 2
OP_METADATA = 3  # UpdateMetadataRequest: metadata-only patches (vectors untouched)
OP_SYNC = 4  # writes pulled from a peer replica (a shard_pb2.SyncRecord)


class WalCorrupt(RuntimeError):
    pass


def _crc(seq: int, op: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<QB", seq, op)))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan(path: Path) -> Iterator[tuple[int, int, bytes, int]]:
    """Yield (seq, op, payload, end_offset) of valid records; stops at the first bad one."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc, seq, op = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if length > MAX_RECORD or end > len(data):
            return
        payload = data[pos + _HEADER.size : end]
        if _crc(seq, op, payload) != crc:
            return
        yield seq, op, payload, end
        pos = end


class WriteAheadLog:
    def __init__(
        self, directory: str | os.PathLike[str], segment_bytes: int = 64 * 1024 * 1024, fsync: bool = True
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self.last_seq = 0
        self._recover()

    def _segments(self) -> list[tuple[int, Path]]:
        segs = []
        for p in self.dir.glob("wal-*.log"):
            try:
                segs.append((int(p.stem[4:]), p))
            except ValueError:
                continue
        return sorted(segs)

    def _recover(self) -> None:
        segs = self._segments()
        for idx, (_first, path) in enumerate(segs):
            valid_end = 0
            for seq, _op, _payload, end in _scan(path):
                if seq <= self.last_seq:
                    raise WalCorrupt(f"{path}: sequence {seq} not increasing after {self.last_seq}")
                self.last_seq = seq
                valid_end = end
            size = path.stat().st_size
            if valid_end < size:
                if idx != len(segs) - 1:
                    raise WalCorrupt(f"{path}: corrupt record at offset {valid_end} in a sealed segment")
                with open(path, "r+b") as f:  # torn tail of the active segment: drop it
                    f.truncate(valid_end)
                    f.flush()
                    os.fsync(f.fileno())
        self._open_segment(segs[-1][1] if segs else None)

    def _open_segment(self, path: Path | None) -> None:
        if path is None:
            path = self.dir / f"wal-{self.last_seq + 1:020d}.log"
        self._path = path
        self._fh = open(path, "ab")  # noqa: SIM115 - held open for appends until close()
        fsync_dir(self.dir)

    def replay(self, after_seq: int) -> Iterator[tuple[int, int, bytes]]:
        """Records with seq > after_seq, in order (segments wholly at or below it are not read)."""
        segs = self._segments()
        for i, (_first, path) in enumerate(segs):
            if i + 1 < len(segs) and segs[i + 1][0] <= after_seq + 1:
                continue
            for seq, op, payload, _end in _scan(path):
                if seq > after_seq:
                    yield seq, op, payload

    def append(self, op: int, payload: bytes) -> int:
        """Append one record and fsync it; returns its sequence number (durable on return)."""
        if len(payload) > MAX_RECORD:
            raise ValueError(f"WAL record of {len(payload)} bytes exceeds {MAX_RECORD}")
        with self._lock:
            if self._fh.tell() >= self.segment_bytes:
                self._fh.close()
                self._open_segment(self.dir / f"wal-{self.last_seq + 1:020d}.log")
            seq = self.last_seq + 1
            self._fh.write(_HEADER.pack(len(payload), _crc(seq, op, payload), seq, op) + payload)
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
            self.last_seq = seq
            return seq

    def drop_upto(self, seq: int) -> None:
        """Delete sealed segments whose records are all <= seq (covered by a snapshot)."""
        with self._lock:
            segs = self._segments()
            for (_first, path), (next_first, _next) in zip(segs, segs[1:], strict=False):
                if next_first - 1 <= seq and path != self._path:
                    path.unlink()

    def first_seq(self) -> int:
        """Sequence of the oldest record the WAL can still hold (older ones were dropped)."""
        segs = self._segments()
        return segs[0][0] if segs else self.last_seq + 1

    def covers(self, after_seq: int) -> bool:
        """Are all records after `after_seq` still here (a peer can pull them)?"""
        return after_seq >= self.last_seq or self.first_seq() <= after_seq + 1

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for _f, p in self._segments())

    def close(self) -> None:
        with self._lock:
            self._fh.close()
