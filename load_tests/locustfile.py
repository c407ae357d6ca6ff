"""locust users that drive the public gRPC API (R19): search, ingest, and a mix of both.

Run headless against a gateway on loopback, e.g.
    locust -f load_tests/locustfile.py --headless -u 4 -r 4 -t 30s --host 127.0.0.1:50051 SearchUser
Photos come from VSEARCH_LOAD_PHOTOS (a folder, searched recursively for .jpg/.png) or the query
split of ../shared/data. Every call is reported to locust under its RPC name.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, task

from visual_search.v1 import search_pb2, search_pb2_grpc, shard_pb2

grpc_gevent.init_gevent()  # grpc's own threads must cooperate with locust's gevent loop

REPO = Path(__file__).resolve().parents[1]
CATEGORIES_FOR_FILTERS = ("Yoghurt", "Soyghurt", "Juice", "Milk")
REGIONS = ("eu", "us", "apac")


def load_photos(limit: int = 200) -> list[bytes]:
    root = os.environ.get("VSEARCH_LOAD_PHOTOS")
    if root:
        paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    else:
        import csv

        paths = []
        for manifest in sorted((REPO.parent / "shared" / "data").glob("*/manifest.csv")):
            with manifest.open() as f:
                paths += [manifest.parent / r["image"] for r in csv.DictReader(f) if r["split"] == "query"]
    if not paths:
        raise RuntimeError("no photos for the load test: set VSEARCH_LOAD_PHOTOS to a folder of images")
    random.Random(0).shuffle(paths)
    return [p.read_bytes() for p in paths[:limit]]


PHOTOS: list[bytes] = []


@events.init.add_listener
def _load(environment: Any, **_: Any) -> None:
    PHOTOS.extend(load_photos())


class GrpcUser(User):
    """Opens one channel per simulated user; reports each call's latency and outcome to locust."""

    abstract = True
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(self.host or "127.0.0.1:50051")
        self.stub = search_pb2_grpc.VisualSearchStub(self.channel)
        token = os.environ.get("VSEARCH_AUTH_TOKEN")
        self.md = [("authorization", f"Bearer {token}")] if token else None

    def on_stop(self) -> None:
        self.channel.close()

    def call(self, name: str, fn: Any, request: Any, size: int = 0) -> Any:
        start = time.perf_counter()
        exc: Exception | None = None
        resp = None
        try:
            resp = fn(request, timeout=10.0, metadata=self.md)
        except grpc.RpcError as e:
            exc = e
        self.report(name, start, exc, size)
        return resp

    def report(self, name: str, start: float, exc: Exception | None, size: int = 0) -> None:
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=size,
            exception=exc,
            context={},
        )


class SearchUser(GrpcUser):
    """Query mix: default box, random detected box, whole image, with and without filters."""

    weight = 4

    @task(6)
    def search_default_box(self) -> None:
        q = search_pb2.QueryRequest(k=24)
        q.image.image = random.choice(PHOTOS)
        self.call("Search/default", self.stub.Search, q)

    @task(2)
    def search_filtered(self) -> None:
        q = search_pb2.QueryRequest(k=24)
        q.image.image = random.choice(PHOTOS)
        q.filter.clauses.add(field="available", bool_equals=True)
        q.filter.clauses.add(field="price", range=shard_pb2.Range(max=random.choice((5.0, 20.0, 100.0))))
        q.options.user_region = random.choice(REGIONS)
        self.call("Search/filtered", self.stub.Search, q)

    @task(1)
    def search_box(self) -> None:
        q = search_pb2.QueryRequest(k=24)
        q.image.image = random.choice(PHOTOS)
        x2, y2 = random.uniform(60, 200), random.uniform(60, 200)
        q.image.box.CopyFrom(search_pb2.Box(x1=10, y1=10, x2=x2, y2=y2))
        self.call("Search/box", self.stub.Search, q)

    @task(1)
    def detect(self) -> None:
        self.call("Detect", self.stub.Detect, search_pb2.DetectRequest(image=random.choice(PHOTOS)))


class IngestUser(GrpcUser):
    """Catalog churn: index new items (one photo each), delete some of them again."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.mine: list[str] = []

    @task(4)
    def index_item(self) -> None:
        item_id = f"load-{uuid.uuid4().hex[:12]}"
        req = search_pb2.IndexItemRequest(
            item_id=item_id,
            image=random.choice(PHOTOS),
            metadata=shard_pb2.ItemMetadata(
                category=random.choice(CATEGORIES_FOR_FILTERS),
                price=round(random.uniform(1, 50), 2),
                available=random.random() < 0.8,
                region=random.choice(REGIONS),
            ),
        )
        start = time.perf_counter()
        exc: Exception | None = None
        try:
            results = list(self.stub.IndexItems(iter([req]), timeout=30.0, metadata=self.md))
            if not results or not results[0].ok:
                exc = RuntimeError(results[0].error if results else "no result")
            else:
                self.mine.append(item_id)
        except grpc.RpcError as e:
            exc = e
        self.report("IndexItems", start, exc)

    @task(1)
    def delete_item(self) -> None:
        if self.mine:
            item_id = self.mine.pop(random.randrange(len(self.mine)))
            self.call("DeleteItems", self.stub.DeleteItems, search_pb2.DeleteItemsRequest(item_ids=[item_id]))
