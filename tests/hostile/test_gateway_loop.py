"""Large photos against a real gateway (issue 12 item 6): decode runs off the event loop, so a cheap
vector query sent while a large photo is being decoded is answered first; when the bounded decode
pool is full, callers get RESOURCE_EXHAUSTED with a clear message (Search and per item in
IndexItems) and the gateway keeps serving. Real shard + real gateway processes, no Triton (photo
queries are decoded and checked, then refused as needing Triton)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from visual_search import contract as C
from visual_search.bench.gateway_loop import large_jpeg
from visual_search.gateway.process import GatewayProcess, metric_value
from visual_search.shard.process import ShardProcess
from visual_search.v1 import search_pb2, search_pb2_grpc

MODEL = "hostile-loop-v1"


@pytest.fixture(scope="module")
def photo() -> bytes:
    return large_jpeg(4000)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardProcess]:
    with ShardProcess(tmp_path_factory.mktemp("loop") / "shard", model_version=MODEL) as s:
        yield s


def _stub(address: str) -> tuple[grpc.Channel, search_pb2_grpc.VisualSearchStub]:
    ch = grpc.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
    )
    return ch, search_pb2_grpc.VisualSearchStub(ch)


def _vector_query() -> search_pb2.QueryRequest:
    v = np.random.default_rng(1).standard_normal(C.EMBEDDING_DIM).astype(np.float32)
    v /= np.linalg.norm(v)
    q = search_pb2.QueryRequest(k=5)
    q.vector.vector_f16 = v.astype("<f2").tobytes()
    q.vector.model_version = MODEL
    return q


def _photo_query(photo: bytes) -> search_pb2.QueryRequest:
    q = search_pb2.QueryRequest(k=5)
    q.image.image = photo
    return q


def test_vector_query_answered_while_a_large_photo_is_decoded(
    shard: ShardProcess, photo: bytes, tmp_path: Path
) -> None:
    with GatewayProcess(shard.address, model_version=MODEL, log_path=tmp_path / "gw.log") as gw:
        ch, stub = _stub(gw.address)
        with ch:
            stub.Search(_vector_query(), timeout=30)  # warm the channel and the shard
            for _ in range(3):
                photo_call = stub.Search.future(_photo_query(photo), timeout=120)
                deadline = time.monotonic() + 60
                while metric_value(gw.metrics_text(), "vsearch_gateway_inflight_requests") < 1:
                    assert time.monotonic() < deadline and not photo_call.done()
                    time.sleep(0.005)
                vec = stub.Search(_vector_query(), timeout=30)
                assert vec.model_version == MODEL
                assert not photo_call.done(), "photo answered before the vector query"
                with pytest.raises(grpc.RpcError) as e:
                    photo_call.result()
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "Triton" in e.value.details()


def test_full_decode_pool_gives_resource_exhausted_and_keeps_serving(
    shard: ShardProcess, photo: bytes, tmp_path: Path
) -> None:
    args = ["--cpu-workers", "1", "--cpu-max-pending", "1"]
    log = tmp_path / "gw.log"
    with GatewayProcess(shard.address, model_version=MODEL, log_path=log, extra_args=args) as gw:
        ch, stub = _stub(gw.address)
        with ch:
            def one(_: int) -> grpc.StatusCode:
                try:
                    stub.Search(_photo_query(photo), timeout=120)
                    return grpc.StatusCode.OK
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        assert "busy" in e.details() and "retry" in e.details(), e.details()
                    return e.code()

            with ThreadPoolExecutor(6) as ex:
                codes = list(ex.map(one, range(6)))
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
            assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}, codes

            # IndexItems: a full pool is reported per item, the stream completes
            reqs = [search_pb2.IndexItemRequest(item_id=f"big{i}", image=photo) for i in range(8)]
            results = list(stub.IndexItems(iter(reqs), timeout=120))
            assert sorted(r.request_index for r in results) == list(range(8))
            got = {r.error_code for r in results}
            assert "RESOURCE_EXHAUSTED" in got and got <= {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}, got

            # the pool drains: the gateway still serves cheap and photo queries normally
            assert stub.Search(_vector_query(), timeout=30).model_version == MODEL
            with pytest.raises(grpc.RpcError) as e:
                stub.Search(_photo_query(photo), timeout=120)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
