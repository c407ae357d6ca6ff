"""A real stack (tritonserver + 2 shards + gateway with a public token) driven as a hostile
client would: straight to every port, with bad inputs and without credentials (issue 12).

Images are built in memory; every check is against real processes on loopback.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from visual_search.launcher import Stack, StackOptions, stack_missing
from visual_search.v1 import search_pb2, search_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
BUS = (ROOT / "tests" / "data" / "bus.jpg").read_bytes()
ZIDANE = (ROOT / "tests" / "data" / "zidane.jpg").read_bytes()
API_TOKEN = "hostile-suite-public-token"
SEEDED = ("bus", "zidane")


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A noisy RGB PNG of the given size (noise: the detector and pHash get real pixels)."""
    a = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def auth(token: str = API_TOKEN, scheme: str = "Bearer") -> list[tuple[str, str]]:
    return [("authorization", f"{scheme} {token}")]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    why = stack_missing()
    if why:
        pytest.skip(why)
    opts = StackOptions(
        tmp_path_factory.mktemp("hostile"),
        shards=2,
        precision="fp32",
        gateway_args=["--auth-token", API_TOKEN],
    )
    with Stack(opts) as s:
        yield s


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> Iterator[search_pb2_grpc.VisualSearchStub]:
    """Public API stub; the catalog holds the two test photos."""
    with grpc.insecure_channel(stack.gateway.address) as ch:
        stub = search_pb2_grpc.VisualSearchStub(ch)
        reqs = [
            search_pb2.IndexItemRequest(item_id=i, image=img, metadata={"category": "street"})
            for i, img in zip(SEEDED, (BUS, ZIDANE), strict=True)
        ]
        results = list(stub.IndexItems(iter(reqs), metadata=auth(), timeout=300))
        assert all(r.ok for r in results), [r.error for r in results]
        yield stub


def still_serving(gateway: search_pb2_grpc.VisualSearchStub) -> None:
    """A normal photo query still answers, with the seeded item first."""
    q = search_pb2.QueryRequest(k=3, image=search_pb2.ImageQuery(image=BUS, whole_image=True))
    resp = gateway.Search(q, metadata=auth(), timeout=120)
    assert resp.results[0].hits[0].item_id == "bus"
