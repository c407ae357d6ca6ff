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
from visual_search.gateway.process import GatewayProcess
from visual_search.gateway.query import MAX_DEFAULT_WHOLE
from visual_search.launcher import DEFAULT_MANIFEST, Stack, StackOptions, stack_missing

ROOT = Path(__file__).resolve().parents[2]
BUS = (ROOT / "tests" / "data" / "bus.jpg").read_bytes()
ZIDANE = (ROOT / "tests" / "data" / "zidane.jpg").read_bytes()  # not in the catalog
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
def box_client(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[vc.Client]:
    """A second gateway on the same Triton and shards, with the cheaper default-box strategy."""
    log = tmp_path_factory.mktemp("gw-box") / "gateway.log"
    with (
        GatewayProcess(stack.shard_spec(), triton_url=stack.triton.grpc_url, log_path=log,
                       extra_args=["--query-strategy", "default-box"]) as gw,
        vc.Client(gw.address, timeout=120) as c,
    ):
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
    assert res.lists[0].query_box == det.detections[0].box  # the default box, also under "max"
    assert res.lists[0].query_strategy == MAX_DEFAULT_WHOLE  # the choice is visible in the response
    assert res.timings_ms["triton"] > 0


def _triton_counts(stack: Stack) -> dict[str, tuple[int, int]]:
    """Per model: (successful requests, inferences): a request of batch 2 is 1 request, 2 inferences."""
    from visual_search.triton.client import TritonClient

    with TritonClient(stack.triton.grpc_url) as tc:
        stats = tc.statistics()["model_stats"]
    return {
        m["name"]: (int(m["inference_stats"]["success"].get("count", 0)), int(m.get("inference_count", 0)))
        for m in stats
    }


def _triton_calls(stack: Stack, before: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """What changed since `before`: model -> (requests, inferences)."""
    after = _triton_counts(stack)
    out = {m: (a[0] - before.get(m, (0, 0))[0], a[1] - before.get(m, (0, 0))[1]) for m, a in after.items()}
    return {m: d for m, d in out.items() if d != (0, 0)}


def _shard_searches(stack: Stack) -> int:
    """Search calls the shards answered (vsearch_shard_requests_total{method="Search"}), all shards."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    total = 0
    for url in stack.shard_metrics_urls():
        with urlopen(url, timeout=10) as r:
            for fam in text_string_to_metric_families(r.read().decode()):
                total += sum(
                    int(x.value) for x in fam.samples
                    if x.name == "vsearch_shard_requests_total" and x.labels.get("method") == "Search"
                )
    return total


ENSEMBLE_NAMES = ("detect", "embed", "detect_and_embed_default", "detect_and_embed_default_whole")


def test_max_query_is_one_triton_round_trip_and_one_shard_request(stack: Stack, client: vc.Client) -> None:
    before, shard_before = _triton_counts(stack), _shard_searches(stack)
    res = client.search(image=BUS, k=3)
    calls = _triton_calls(stack, before)
    ensembles = {m: n for m, n in calls.items() if m in ENSEMBLE_NAMES}
    assert ensembles == {"detect_and_embed_default_whole": (1, 1)}, calls
    # one decode in Triton, the query-side detector, ONE encoder request of batch 2 (box, whole image)
    assert calls["preprocess_query"] == (1, 1) and calls["detector_query"] == (1, 1)
    assert calls["encoder"] == (1, 2), calls
    assert "detector" not in calls and "preprocess" not in calls
    # both vectors travel in one SearchRequest: one call per shard (2 shards x 1 replica, no hedges)
    assert _shard_searches(stack) - shard_before == len(stack.shards)
    assert res.lists[0].class_name == "bus" and len(res.lists) == 1


def test_default_box_strategy_is_one_encoder_run(stack: Stack, box_client: vc.Client) -> None:
    before = _triton_counts(stack)
    res = box_client.search(image=BUS, k=3)
    calls = _triton_calls(stack, before)
    ensembles = {m: n for m, n in calls.items() if m in ENSEMBLE_NAMES}
    assert ensembles == {"detect_and_embed_default": (1, 1)}, calls
    assert calls["encoder"] == (1, 1), calls
    rl = res.lists[0]
    assert rl.query_strategy == "default-box" and rl.detection_index == 0 and rl.class_name == "bus"
    assert rl.query_box == box_client.detect(BUS).detections[0].box


# Options under which a photo query and a vector query rank alike: exact scores, no business boosts,
# no near-duplicate collapse, no perceptual-hash lookup (a vector query has no photo to hash).
COMPARABLE = vc.search_pb2.SearchOptions(exact=True, keep_duplicates=True, no_business_rerank=True,
                                         no_exact_lookup=True)


def _raw_search(c: vc.Client, k: int, **query: object) -> vc.search_pb2.ResultList:
    res = c.search_raw(vc.build_query(k=k, options=COMPARABLE, **query))
    assert len(res.results) == 1
    return res.results[0]


def test_max_query_hits_are_the_per_item_max_of_its_two_vectors(
    stack: Stack, client: vc.Client, box_client: vc.Client, indexed: dict
) -> None:
    """The served "max" list = search the default-box vector and the whole-image vector separately
    and keep, per item, the better hit (score, entry); the default-box gateway = the first alone."""
    from visual_search.triton.client import TritonClient

    with TritonClient(stack.triton.grpc_url) as tc:
        vecs = tc.detect_and_embed_default_whole(ZIDANE).embeddings
    assert vecs.shape == (2, C.EMBEDDING_DIM)
    k = 8  # of the 10 catalog items: the cut matters
    fused = _raw_search(client, k, image=ZIDANE)
    det = client.detect(ZIDANE).detections[0]
    assert fused.query_strategy == MAX_DEFAULT_WHOLE and fused.detection_index == 0
    assert fused.class_name == det.class_name and vc.Box.from_pb(fused.query_box) == det.box
    version = client.detect(ZIDANE).model_version
    per_vector = [_raw_search(client, k, vector=v, model_version=version).hits for v in vecs]
    best: dict[str, vc.search_pb2.Match] = {}
    for hits in per_vector:
        for h in hits:
            if h.item_id not in best or h.score > best[h.item_id].score:
                best[h.item_id] = h
    expected = sorted(best.values(), key=lambda h: (-h.score, h.item_id))[:k]
    assert [h.item_id for h in fused.hits] == [h.item_id for h in expected]
    assert [h.score for h in fused.hits] == pytest.approx([h.score for h in expected], abs=2e-3)
    assert [h.entry_id for h in fused.hits] == [h.entry_id for h in expected]
    # the whole-image vector decided some of them: this is not the default-box list under a new name
    box_scores = {h.item_id: h.score for h in per_vector[0]}
    assert any(h.score > box_scores.get(h.item_id, -2.0) + 1e-3 for h in fused.hits)
    # the default-box gateway returns the first vector's list alone
    alone = _raw_search(box_client, k, image=ZIDANE)
    assert alone.query_strategy == "default-box"
    assert [h.item_id for h in alone.hits] == [h.item_id for h in per_vector[0]]
    assert [h.score for h in alone.hits] == pytest.approx([h.score for h in per_vector[0]], abs=2e-3)


def test_max_query_of_a_photo_without_detections_is_the_whole_image(client: vc.Client) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(buf, "PNG")
    rl = client.search(image=buf.getvalue(), k=3).lists[0]
    assert rl.query_strategy == "whole-image" and rl.detection_index == -1 and rl.query_box is None


def test_all_objects_box_index_and_explicit_box(client: vc.Client, indexed: dict) -> None:
    res = client.search(image=BUS, all_objects=True, k=3)
    assert [rl.detection_index for rl in res.lists] == [0, 1, 2, 3, 4]
    # each person box of the indexed bus photo finds the bus item through its own entry
    assert all(rl.hits[0].item_id == "bus" and rl.hits[0].matched_box is not None for rl in res.lists)
    one = client.search(image=BUS, box_index=1, k=1)
    assert one.lists[0].class_name == "person" and one.hits[0].item_id == "bus"
    box = client.search(image=BUS, box=[48, 398, 243, 905], k=1)
    assert box.lists[0].detection_index == -1 and box.hits[0].item_id == "bus"
    assert box.lists[0].query_strategy == "box"  # tap-a-box: searched exactly as given
    assert {rl.query_strategy for rl in res.lists} == {"all-objects"}
    assert one.lists[0].query_strategy == "box-index"
    whole = client.search(image=BUS, whole_image=True, k=1)
    assert whole.lists[0].query_strategy == "whole-image" and whole.lists[0].query_box is None
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


def stored_price(client: vc.Client, item_id: str) -> float:
    """The stored item's price (other items may share its photo, so look for it by id)."""
    opts = vc.search_pb2.SearchOptions(include_self=True, keep_duplicates=True)
    hits = client.search(item_id=item_id, k=50, options=opts).hits
    return next(h.price for h in hits if h.item_id == item_id)


def test_same_id_several_times_in_one_stream_last_version_wins(client: vc.Client, indexed: dict) -> None:
    """Issue 12.4: versions of one id in one stream are written in stream order, every time; each
    result names the request it answers. A failing last version leaves the previous one."""
    photos = [p.read_bytes() for _, p, _ in catalog_rows()[:6]]
    for trial in range(3):
        item = f"dup-{trial}"
        versions = [vc.IndexItem(item, photos[v], price=100.0 * trial + v) for v in range(6)]
        stream = [vc.IndexItem(f"other-{trial}-{j}", photos[j]) for j in range(2)] + versions
        results = list(client.index(stream))
        assert sorted(r.request_index for r in results) == list(range(len(stream)))
        assert all(r.item_id == stream[r.request_index].item_id and r.ok for r in results)
        assert stored_price(client, item) == 100.0 * trial + 5, f"trial {trial}"
    bad_last = [
        vc.IndexItem("dup-x", photos[0], price=1.0),
        vc.IndexItem("dup-x", photos[1], price=2.0),
        vc.IndexItem("dup-x", b"not an image", price=3.0),
    ]
    results = sorted(client.index(bad_last), key=lambda r: r.request_index)
    assert [r.ok for r in results] == [True, True, False]
    assert stored_price(client, "dup-x") == 2.0


def test_exact_copy_is_found_first_even_when_not_among_the_vector_hits(
    client: vc.Client, indexed: dict
) -> None:
    """Hash-first: the shopper sends the catalog photo itself and taps a detail of it; the catalog
    also has close-up items of that detail, which the vector search ranks first (k=1). The
    perceptual-hash lookup still returns the catalog item first, flagged exact."""
    item_id, path, _ = catalog_rows()[7]
    photo = path.read_bytes()
    img = Image.open(io.BytesIO(photo)).convert("RGB")
    w, h = img.size
    details = []  # 36 close-ups of the top-left corner, rescaled / re-encoded: other photos, other hashes
    for frac in (0.45, 0.38, 0.3):
        for n in range(12):
            crop = img.crop((0, 0, int(w * frac), int(h * frac)))
            s = 1.0 - 0.03 * n
            crop = crop.resize((max(8, int(crop.width * s)), max(8, int(crop.height * s))))
            buf = io.BytesIO()
            crop.save(buf, "JPEG", quality=95 - n)
            details.append(vc.IndexItem(f"detail-{frac}-{n}", buf.getvalue(), category="detail"))
    assert all(r.ok for r in client.index(details))
    box = [0.0, 0.0, w * 0.3, h * 0.3]
    # keep_duplicates: each shard returns exactly k = 1 candidate (no extra ones for collapsing)
    no_lookup = vc.search_pb2.SearchOptions(no_exact_lookup=True, keep_duplicates=True)
    vector_only = client.search(image=photo, box=box, k=1, options=no_lookup)
    # the case: the copy is not among the vector hits (its shard's top candidates are close-ups)
    assert vector_only.hits[0].item_id != item_id and not vector_only.hits[0].exact_match
    res = client.search(image=photo, box=box, k=1, options=vc.search_pb2.SearchOptions(keep_duplicates=True))
    assert res.hits[0].item_id == item_id and res.hits[0].exact_match
    # a filter still applies to the exact copy: excluded when it does not match
    res = client.search(image=photo, box=box, k=1, filters=["category=detail"])
    assert res.hits[0].item_id.startswith("detail-") and not res.hits[0].exact_match


def test_no_close_match_is_flagged_and_a_copy_is_a_close_match(client: vc.Client, indexed: dict) -> None:
    """Calibrated threshold (artifacts/models/calibration.json): a dog photo against a grocery
    catalog is 'no close match'; a catalog photo is a close match; flags follow the threshold."""
    dog = DEFAULT_MANIFEST.parents[1] / "oxford_pets_dogs" / "images" / "beagle" / "beagle_111.jpg"
    res = client.search(image=dog.read_bytes(), k=5)
    rl = res.lists[0]
    assert rl.close_match_threshold > 0.3, "the served fp32 model version has a calibrated threshold"
    assert rl.hits and rl.no_close_match and not any(h.close_match for h in rl.hits)
    assert max(h.score for h in rl.hits) < rl.close_match_threshold

    item_id, path, _ = catalog_rows()[4]
    rl = client.search(image=path.read_bytes(), k=10).lists[0]
    assert rl.hits[0].item_id == item_id and rl.hits[0].close_match and not rl.no_close_match
    for h in rl.hits:
        assert h.close_match == (h.exact_match or h.score >= rl.close_match_threshold), h
