"""Multi-item writes through a real gateway and real shard processes (no Triton): UpdateMetadata
(then filters and business re-rank see it), `vsearch update` from a CSV, whole-request validation
before any shard is touched, and per-item results when a shard is down mid-write."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.conftest import MODEL, Cluster
from visual_search import client as vc
from visual_search import ids
from visual_search.gateway.process import GatewayProcess
from visual_search.supervise import free_port
from visual_search.v1 import search_pb2, shard_pb2

NO_RERANK = search_pb2.SearchOptions(no_business_rerank=True)


@pytest.fixture(scope="module")
def gateway(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        cluster.spec(), model_version=MODEL, log_path=tmp_path_factory.mktemp("gw") / "gw.log"
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[vc.Client]:
    with vc.Client(gateway.address, timeout=10, retries=0) as c:
        yield c


def on_shard(shard: int, n: int, start: int = 0) -> list[str]:
    out = [f"item{i:04d}" for i in range(start, 300) if ids.shard_for(f"item{i:04d}", 2) == shard]
    return out[:n]


def test_update_then_filter_and_rerank_see_it_immediately(cluster: Cluster, client: vc.Client) -> None:
    a, b = on_shard(0, 1)[0], on_shard(1, 1)[0]  # one item on each shard (shard 0 has two replicas)
    q = cluster.vectors[a]
    res = client.update_metadata(
        [
            vc.MetadataUpdate(a, category="clearance", price=777.0, attributes={"colour": "teal"}),
            vc.MetadataUpdate(b, category="clearance", available=False),
            vc.MetadataUpdate("never-indexed", price=1.0),
        ]
    )
    assert res.applied == [a, b] and res.not_found == ["never-indexed"] and not res.failed
    hits = client.search(vector=q, model_version=MODEL, k=10, filters=["category=clearance"]).hits
    assert {h.item_id for h in hits} == {a, b}
    assert hits[0].item_id == a and hits[0].price == 777.0 and hits[0].attributes == {"colour": "teal"}
    pricey = client.search(vector=q, model_version=MODEL, k=5, filters=["price=700..800"]).hits
    assert [h.item_id for h in pricey] == [a]
    # business re-rank reads the same metadata: availability boost gone for b, kept for a
    qb = cluster.vectors[b]
    hb = client.search(vector=qb, model_version=MODEL, k=1).hits[0]
    assert hb.item_id == b and not hb.available and hb.rank_score == pytest.approx(hb.score, abs=1e-6)
    # the vector is untouched: the item still finds itself with cosine ~1 (read from both replicas)
    for _ in range(2):
        assert client.search(vector=q, model_version=MODEL, k=1, options=NO_RERANK).hits[0].score > 0.999


def test_update_cli_applies_a_csv_with_progress(
    cluster: Cluster, gateway: GatewayProcess, tmp_path: Path
) -> None:
    items = on_shard(0, 3, start=100) + on_shard(1, 3, start=100)
    rows = ["item_id,price,available,attr.promo"] + [f"{i},{5 + n},false,summer" for n, i in enumerate(items)]
    rows.append("no-such-item,1,,")
    csv = tmp_path / "prices.csv"
    csv.write_text("\n".join(rows) + "\n")
    env = {**os.environ, "VSEARCH_GATEWAY": gateway.address}
    out = subprocess.run(
        [sys.executable, "-m", "visual_search.cli", "update", str(csv), "--batch", "4"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "done: 6 updated, 1 not found, 0 failed" in out.stdout
    assert "updated 6/7" in out.stderr  # progress line
    with vc.Client(gateway.address) as c:
        q = cluster.vectors[items[0]]
        hits = c.search(vector=q, model_version=MODEL, k=10, filters=["attr.promo=summer"]).hits
        assert {h.item_id for h in hits} == set(items)
        assert all(not h.available and h.price == 5 + items.index(h.item_id) for h in hits)
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,price\nitem0001,cheap\n")
    out = subprocess.run(
        [sys.executable, "-m", "visual_search.cli", "update", str(bad)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert out.returncode != 0 and "bad.csv:2" in out.stderr


def test_whole_request_is_validated_before_any_shard_is_touched(cluster: Cluster, client: vc.Client) -> None:
    a, b = on_shard(0, 1, start=200)[0], on_shard(1, 1, start=200)[0]
    # 10,001 ids: one real item on each shard plus filler; refused whole, nothing deleted
    with pytest.raises(vc.InvalidArgument, match="10001 item_ids exceed"):
        client.delete([a, b] + [f"x{i}" for i in range(9_999)])
    with pytest.raises(vc.InvalidArgument, match=r"item_ids\[2\]: item_id is empty"):
        client.delete([a, b, ""])
    with pytest.raises(vc.InvalidArgument, match="longer than 256 bytes"):
        client.delete([a, "y" * 300])
    for bad in (
        [vc.MetadataUpdate(a, price=1.0), vc.MetadataUpdate(b, price=float("inf"))],
        [vc.MetadataUpdate(a, price=1.0), vc.MetadataUpdate(b)],
        [vc.MetadataUpdate(a, price=1.0), vc.MetadataUpdate(a, price=2.0)],
        [vc.MetadataUpdate(a, price=1.0)] + [vc.MetadataUpdate(f"x{i}", price=1.0) for i in range(10_000)],
    ):
        with pytest.raises(vc.InvalidArgument):
            client.update_metadata(bad)
    for item in (a, b):  # still indexed, metadata unchanged
        hit = client.search(item_id=item, k=1, options=search_pb2.SearchOptions(include_self=True)).hits[0]
        assert hit.item_id == item and hit.price == float(int(item[4:]) % 50)


def test_a_shard_down_mid_write_is_reported_item_by_item(cluster: Cluster, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # shard 1 is down (nothing listens there)
    a, b = on_shard(0, 2, start=250), on_shard(1, 2, start=250)
    with (
        GatewayProcess(cluster.spec(None, [dead]), model_version=MODEL, log_path=tmp_path / "gw.log") as gw,
        vc.Client(gw.address, timeout=10, retries=0) as c,
    ):
        res = c.update_metadata([vc.MetadataUpdate(i, region="moon") for i in (a[0], b[0], a[1], b[1])])
        assert res.applied == [a[0], a[1]] and res.failed_shards == [1]
        assert [i.item_id for i in res.failed] == [b[0], b[1]]
        assert all(i.error_code == "UNAVAILABLE" and i.shard_id == 1 for i in res.failed)
        hits = c.search(vector=cluster.vectors[a[0]], model_version=MODEL, k=5, filters=["region=moon"]).hits
        assert {h.item_id for h in hits} == {a[0], a[1]}
        with pytest.raises(vc.PartialWrite) as e:
            c.delete([a[0], b[0], "never-indexed-on-0"])
        r = e.value.result
        assert [(i.item_id, i.applied, i.error_code) for i in r.items if i.item_id in (a[0], b[0])] == [
            (a[0], True, ""), (b[0], False, "UNAVAILABLE"),
        ]
        with pytest.raises(vc.Unavailable):  # every touched shard failed: nothing applied, whole failure
            c.update_metadata([vc.MetadataUpdate(b[1], region="mars")])
    got = cluster.shard1.stub().Get(shard_pb2.GetRequest(item_ids=[b[0], b[1]]), timeout=5)
    assert len(got.items) == 2 and all(it.metadata.region != "moon" for it in got.items)
