from __future__ import annotations

from pathlib import Path

import pytest

from visual_search.shard.wal import OP_DELETE, OP_UPSERT, WalCorrupt, WriteAheadLog


def test_append_replay_roundtrip(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    seqs = [wal.append(OP_UPSERT, f"rec{i}".encode()) for i in range(5)]
    wal.append(OP_DELETE, b"gone")
    wal.close()
    assert seqs == [1, 2, 3, 4, 5]
    wal = WriteAheadLog(tmp_path)
    assert wal.last_seq == 6
    recs = list(wal.replay(after_seq=3))
    assert [(s, op, p) for s, op, p in recs] == [
        (4, OP_UPSERT, b"rec3"),
        (5, OP_UPSERT, b"rec4"),
        (6, OP_DELETE, b"gone"),
    ]


@pytest.mark.parametrize("cut", [1, 5, 13, 20])
def test_torn_tail_is_truncated_and_log_stays_appendable(tmp_path: Path, cut: int) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(OP_UPSERT, b"a" * 10)
    wal.append(OP_UPSERT, b"b" * 10)
    wal.close()
    seg = next(tmp_path.glob("wal-*.log"))
    size = seg.stat().st_size
    with open(seg, "r+b") as f:  # a crash in the middle of the second record
        f.truncate(size - cut)
    wal = WriteAheadLog(tmp_path)
    assert wal.last_seq == 1
    assert wal.append(OP_UPSERT, b"c") == 2
    assert [p for _s, _o, p in wal.replay(0)] == [b"a" * 10, b"c"]


def test_corrupt_tail_record_checksum(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(OP_UPSERT, b"good")
    wal.append(OP_UPSERT, b"flipme")
    wal.close()
    seg = next(tmp_path.glob("wal-*.log"))
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(bytes(data))
    wal = WriteAheadLog(tmp_path)
    assert [p for _s, _o, p in wal.replay(0)] == [b"good"]


def test_rotation_drop_and_sealed_corruption_detected(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=64)
    for i in range(10):
        wal.append(OP_UPSERT, bytes([i]) * 40)
    segs = sorted(tmp_path.glob("wal-*.log"))
    assert len(segs) > 3
    wal.drop_upto(5)
    assert [s for s, _o, _p in wal.replay(5)] == [6, 7, 8, 9, 10]
    wal.close()
    first = sorted(tmp_path.glob("wal-*.log"))[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(WalCorrupt):
        WriteAheadLog(tmp_path, segment_bytes=64)
