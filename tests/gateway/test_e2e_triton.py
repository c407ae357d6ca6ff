"""End to end with the real models: `vsearch up`'s Stack (Triton + 2 shards + gateway), real
photos indexed through IndexItems and queried by photo, crop, box, all objects, item id."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visual_search import cli
from visual_search import client as vc
from visual_search import contract as C
from visual_search.launcher import DEFAULT_MANIFEST, Stack, StackOptions, stack_missing

ROOT = Path(__file__).resolve().parents[2]
BUS = (ROOT / "tests" / "data" / "bus.jpg").read_bytes()
LABELS = ("Oatly-Oat-Milk", "Arla-Sour-Milk", "Alpro-Blueberry-Soyghurt")


pytestmark = pytest.mark.skipif(stack_missing() is not None, reason=str(stack_missing()))


def catalog_rows(per_label: int = 3) -> list[tuple[str, Path, str]]:
    from visual_search.client_cli import iter_source

    rows = [r for r in iter_source(DEFAULT_MANIFEST, "catalog") if r[2] in LABELS]
    out: list[tuple[str, Path, str]] = []
    for label in LABELS:
        out += [r for r in rows if r[2] == label][:per_label]
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(StackOptions(tmp_path_factory.mktemp("stack"), shards=2, precision="fp32")) as s:
        yield s


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[vc.Client]:
    with vc.Client(stack.gateway.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def indexed(client: vc.Client) -> dict[str, vc.IndexResult]:
    items = [
        vc.IndexItem(i, p.read_bytes(), category=lbl, price=2.5, region="eu") for i, p, lbl in catalog_rows()
    ]
    items.insert(2, vc.IndexItem("corrupt", b"\xff\xd8\xff\xe0 truncated jpeg"))
    items.append(vc.IndexItem("bus", BUS, category="street"))
    return {r.item_id: r for r in client.index(items)}


def test_index_reports_per_item_and_a_bad_image_does_not_stop_the_stream(indexed: dict) -> None:
    assert not indexed["corrupt"].ok and indexed["corrupt"].error_code == "INVALID_ARGUMENT"
    good = {k: v for k, v in indexed.items() if k != "corrupt"}
    assert len(good) == 3 * len(LABELS) + 1 and all(r.ok for r in good.values())
    assert indexed["bus"].entries == 1 + 5  # whole image + 5 detected objects
    assert {r.shard_id for r in good.values()} == {0, 1}


def test_exact_copy_comes_first_and_is_flagged(client: vc.Client, indexed: dict) -> None:
    item_id, path, _ = catalog_rows()[4]
    res = client.search(image=path.read_bytes(), k=5)
    assert res.hits[0].item_id == item_id and res.hits[0].exact_match
    assert res.model_version == client.detect(BUS).model_version


def test_crop_of_a_catalog_photo_finds_it(client: vc.Client, indexed: dict) -> None:
    item_id, path, label = catalog_rows()[1]
    img = Image.open(path).convert("RGB")
    w, h = img.size
    crop = img.crop((int(w * 0.1), int(h * 0.1), int(w * 0.9), int(h * 0.9)))
    buf = io.BytesIO()
    crop.save(buf, "JPEG", quality=80)
    res = client.search(image=buf.getvalue(), k=5, options=None)
    assert item_id in [h.item_id for h in res.hits[:3]]
    assert res.hits[0].category == label


def test_detect_orders_by_salience_and_search_uses_the_default_box(client: vc.Client) -> None:
    det = client.detect(BUS)
    assert det.default_index == 0 and det.detections[0].class_name == "bus" and det.detections[0].is_default
    sal = [d.salience for d in det.detections]
    assert sal == sorted(sal, reverse=True) and len(det.detections) == 5
    res = client.search(image=BUS, k=3)
    assert res.lists[0].detection_index == 0 and res.lists[0].class_name == "bus"
    assert res.lists[0].query_box == det.detections[0].box
    assert res.timings_ms["triton"] > 0


def _triton_requests(stack: Stack) -> dict[str, int]:
    from visual_search.triton.client import TritonClient

    with TritonClient(stack.triton.grpc_url) as tc:
        stats = tc.statistics()["model_stats"]
    return {m["name"]: int(m["inference_stats"]["success"].get("count", 0)) for m in stats}


def test_default_box_query_is_one_triton_round_trip(stack: Stack, client: vc.Client) -> None:
    before = _triton_requests(stack)
    res = client.search(image=BUS, k=3)
    after = _triton_requests(stack)
    calls = {m: after[m] - before.get(m, 0) for m in after if after[m] != before.get(m, 0)}
    ensembles = {m: n for m, n in calls.items() if m in ("detect", "embed", "detect_and_embed_default")}
    assert ensembles == {"detect_and_embed_default": 1}, calls
    # one decode in Triton, the query-side detector, one crop embedded
    assert calls["preprocess_query"] == 1 and calls["detector_query"] == 1 and calls["encoder"] == 1
    assert "detector" not in calls and "preprocess" not in calls
    assert res.lists[0].class_name == "bus"


def test_all_objects_box_index_and_explicit_box(client: vc.Client, indexed: dict) -> None:
    res = client.search(image=BUS, all_objects=True, k=3)
    assert [rl.detection_index for rl in res.lists] == [0, 1, 2, 3, 4]
    # each person box of the indexed bus photo finds the bus item through its own entry
    assert all(rl.hits[0].item_id == "bus" and rl.hits[0].matched_box is not None for rl in res.lists)
    one = client.search(image=BUS, box_index=1, k=1)
    assert one.lists[0].class_name == "person" and one.hits[0].item_id == "bus"
    box = client.search(image=BUS, box=[48, 398, 243, 905], k=1)
    assert box.lists[0].detection_index == -1 and box.hits[0].item_id == "bus"
    with pytest.raises(vc.InvalidArgument, match="box_index 9"):
        client.search(image=BUS, box_index=9, k=1)
    with pytest.raises(vc.InvalidArgument, match="outside"):
        client.search(image=BUS, box=[2000, 2000, 2100, 2100], k=1)


def test_more_like_this_and_vector_query_with_the_served_version(client: vc.Client, indexed: dict) -> None:
    item_id, _, _ = catalog_rows()[0]
    res = client.search(item_id=item_id, k=3)
    assert item_id not in [h.item_id for h in res.hits] and len(res.hits) == 3
    itself = client.search(item_id=item_id, k=1, options=vc.search_pb2.SearchOptions(include_self=True))
    assert itself.hits[0].item_id == item_id and itself.hits[0].score == pytest.approx(1.0, abs=5e-3)
    rng = np.random.default_rng(0)
    v = rng.standard_normal(C.EMBEDDING_DIM)
    res = client.search(vector=v / np.linalg.norm(v), model_version=res.model_version, k=2)
    assert len(res.hits) == 2


def test_delete_then_gone(client: vc.Client, indexed: dict) -> None:
    assert client.search(image=BUS, k=1).hits[0].item_id == "bus"
    assert client.delete(["bus"]) == (1, [])
    assert "bus" not in [h.item_id for h in client.search(image=BUS, k=5).hits]


def test_cli_index_resumes_from_its_state_file(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = catalog_rows(per_label=1)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    csv = tmp_path / "m.csv"
    lines = ["image,label,split"] + [f"{p},{lbl},catalog" for _, p, lbl in rows] + ["bad.jpg,x,catalog"]
    csv.write_text("\n".join(lines) + "\n")
    state = tmp_path / "state.txt"
    argv = ["index", str(csv), "--gateway", stack.gateway.address, "--state", str(state)]
    assert cli.main(argv) == 1  # one bad image
    assert len(state.read_text().split()) == len(rows)
    err = capsys.readouterr().err
    assert "1 x INVALID_ARGUMENT" in err
    assert cli.main(argv) == 1
    assert f"{len(rows)} already indexed" in capsys.readouterr().err  # only the bad one retried
