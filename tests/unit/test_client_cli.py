"""`vsearch index` sources and the result table (no servers needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from visual_search.client import Hit, ResultList, SearchResult
from visual_search.client_cli import format_result_table, iter_rows, iter_source

MANIFEST = """image,label,split,price,available,region,attr.brand
images/a/1.jpg,milk,catalog,2.5,true,eu,Arla
images/a/2.jpg,milk,query,,,,
images/b/1.jpg,cream,catalog,,false,,
"""


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    p = tmp_path / "manifest.csv"
    p.write_text(MANIFEST)
    return p


def test_manifest_with_split_indexes_the_catalog_split_by_default(manifest: Path) -> None:
    assert [r.item_id for r in iter_rows(manifest)] == ["images/a/1", "images/b/1"]
    assert [r.item_id for r in iter_rows(manifest, "all")] == ["images/a/1", "images/a/2", "images/b/1"]
    assert [r[0] for r in iter_source(manifest, "query")] == ["images/a/2"]


def test_manifest_metadata_columns(manifest: Path) -> None:
    first, second = iter_rows(manifest)
    assert (first.price, first.available, first.region, first.category) == (2.5, True, "eu", "milk")
    assert first.attributes == {"brand": "Arla", "image": "images/a/1.jpg"}
    assert first.path == manifest.parent / "images/a/1.jpg"
    assert (second.price, second.available) == (0.0, False)


def test_bad_manifest_values_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("image,price\nx.jpg,cheap\n")
    with pytest.raises(SystemExit, match=r"m.csv:2: 'price' must be a number"):
        list(iter_rows(p))
    with pytest.raises(SystemExit, match="no such directory or manifest"):
        list(iter_rows(tmp_path / "missing.csv"))


def test_directory_source_stores_the_image_path(tmp_path: Path) -> None:
    (tmp_path / "shoes").mkdir()
    (tmp_path / "shoes" / "red.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    (row,) = iter_rows(tmp_path)
    assert (row.item_id, row.category, row.attributes) == ("shoes/red", "shoes", {"image": "shoes/red.jpg"})


def _hit(item_id: str) -> Hit:
    return Hit(item_id, 0.9, 0.92, "milk", 1.0, True, "", {}, None, False, 0, [])


def _result(*lists: ResultList) -> SearchResult:
    t = {"triton": 1.0, "fanout": 1.0, "rerank": 1.0, "total": 3.0}
    return SearchResult(list(lists), "v1", False, [], t, 0)


def test_result_table_prints_whole_ids_and_explains_the_columns() -> None:
    long_a = "catalog/" + "a" * 60 + "/item-1"
    long_b = "catalog/" + "a" * 60 + "/item-2"
    out = format_result_table(_result(ResultList(None, -1, "", [_hit(long_a), _hit(long_b)])))
    assert long_a in out and long_b in out
    assert "rank = score + business boosts" in out


def test_result_table_says_when_nothing_matched() -> None:
    out = format_result_table(_result(ResultList(None, 0, "person", [])))
    assert "no matches" in out
    assert "detector class 'person'" in out


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    photo = str(tmp_path / "nope.jpg")
    cmd = [sys.executable, "-m", "visual_search.cli", "search", photo, "--gateway", "127.0.0.1:1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "cannot read photo" in r.stderr and "Traceback" not in r.stderr


def test_result_table_says_no_close_match_and_marks_close_hits() -> None:
    far = ResultList(None, 0, "bus", [_hit("yoghurt")], "default-box", no_close_match=True,
                     close_match_threshold=0.685)
    out = format_result_table(_result(far))
    assert "NO CLOSE MATCH" in out and "0.685" in out
    close = Hit("milk-1", 0.9, 0.92, "milk", 1.0, True, "", {}, None, False, 0, [], close_match=True)
    out = format_result_table(_result(ResultList(None, 0, "bottle", [close], close_match_threshold=0.685)))
    assert "NO CLOSE MATCH" not in out and " close " in out
