"""Extreme aspect ratios (issue 12 item 1): refused with INVALID_ARGUMENT at every entry - the
gateway's Search (default box, whole image, all objects, explicit box), IndexItems, and Triton
directly (encoded bytes and raw pixels) - before any resize; the stack keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg

from tests.hostile.conftest import BUS, auth, png, still_serving
from visual_search import contract as C
from visual_search.launcher import Stack
from visual_search.triton import names as N
from visual_search.triton.client import InferenceError, TritonClient
from visual_search.v1 import search_pb2, search_pb2_grpc

SIDE = 100
THIN = png(int(SIDE * C.MAX_ASPECT_RATIO) + 1, SIDE)  # just past the limit
TALL = png(SIDE, int(SIDE * C.MAX_ASPECT_RATIO) + 1)
AT_LIMIT = png(int(SIDE * C.MAX_ASPECT_RATIO), SIDE)


def _selections() -> dict[str, search_pb2.ImageQuery]:
    return {
        "default_box": search_pb2.ImageQuery(image=THIN),
        "whole_image": search_pb2.ImageQuery(image=THIN, whole_image=True),
        "all_objects": search_pb2.ImageQuery(image=THIN, all_objects=True),
        "box": search_pb2.ImageQuery(image=TALL, box=search_pb2.Box(x1=0, y1=0, x2=50, y2=50)),
        "box_index": search_pb2.ImageQuery(image=TALL, box_index=0),
    }


@pytest.mark.parametrize("selection", sorted(_selections()))
def test_search_refuses_extreme_aspect_ratio(
    gateway: search_pb2_grpc.VisualSearchStub, selection: str
) -> None:
    q = search_pb2.QueryRequest(k=3, image=_selections()[selection])
    with pytest.raises(grpc.RpcError) as e:
        gateway.Search(q, metadata=auth(), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "aspect ratio" in e.value.details() and f"{C.MAX_ASPECT_RATIO:g}:1" in e.value.details()
    still_serving(gateway)


def test_detect_refuses_extreme_aspect_ratio(gateway: search_pb2_grpc.VisualSearchStub) -> None:
    with pytest.raises(grpc.RpcError) as e:
        gateway.Detect(search_pb2.DetectRequest(image=THIN), metadata=auth(), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "aspect ratio" in e.value.details()


def test_at_the_limit_is_served(gateway: search_pb2_grpc.VisualSearchStub) -> None:
    at_limit = [search_pb2.ImageQuery(image=AT_LIMIT)]
    at_limit.append(search_pb2.ImageQuery(image=AT_LIMIT, all_objects=True))
    for sel in at_limit:
        resp = gateway.Search(search_pb2.QueryRequest(k=2, image=sel), metadata=auth(), timeout=120)
        assert resp.results


def test_index_items_refuses_it_per_item_and_indexes_the_rest(
    gateway: search_pb2_grpc.VisualSearchStub,
) -> None:
    reqs = [
        search_pb2.IndexItemRequest(item_id="thin", image=THIN),
        search_pb2.IndexItemRequest(item_id="bus-copy", image=BUS),
        search_pb2.IndexItemRequest(item_id="tall", image=TALL),
    ]
    results = {r.item_id: r for r in gateway.IndexItems(iter(reqs), metadata=auth(), timeout=300)}
    for bad in ("thin", "tall"):
        assert not results[bad].ok and results[bad].error_code == "INVALID_ARGUMENT"
        assert "aspect ratio" in results[bad].error
    assert results["bus-copy"].ok
    with pytest.raises(grpc.RpcError) as e:  # nothing of the refused item was stored
        gateway.Search(search_pb2.QueryRequest(k=5, item_id="thin"), metadata=auth(), timeout=60)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "model",
    [N.DETECT, N.EMBED, N.DETECT_AND_EMBED, N.DETECT_AND_EMBED_DEFAULT, N.DETECT_AND_EMBED_DEFAULT_WHOLE],
)
def test_triton_directly_refuses_it_per_request(stack: Stack, model: str) -> None:
    with TritonClient(stack.triton.grpc_url) as tc:
        with pytest.raises(InferenceError) as e:
            tc._infer(model, THIN)
        assert "aspect ratio" in e.value.message and "INVALID_ARGUMENT" in str(e.value.status)
        tc.embed(BUS)  # the same models keep answering
        assert tc.is_ready()


def _crop_inputs(rgb: np.ndarray, boxes: np.ndarray | None = None) -> list[tg.InferInput]:
    t = tg.InferInput(N.IMAGE_RGB, list(rgb.shape), "UINT8")
    t.set_data_from_numpy(rgb)
    out = [t]
    if boxes is not None:
        b = tg.InferInput(N.BOXES, list(boxes.shape), "FP32")
        b.set_data_from_numpy(boxes)
        out.append(b)
    return out


def test_triton_crop_model_bounds_raw_pixels_and_box_count(stack: Stack) -> None:
    """The `crop` step takes decoded pixels and boxes from any caller: same limits apply."""
    c = tg.InferenceServerClient(stack.triton.grpc_url)
    try:
        thin = np.zeros((SIDE, int(SIDE * C.MAX_ASPECT_RATIO) + 1, 3), np.uint8)
        with pytest.raises(tg.InferenceServerException) as e:
            c.infer(N.CROP, _crop_inputs(thin), timeout=60)
        assert "aspect ratio" in e.value.message()
        many = np.tile(np.array([[0, 0, 50, 50]], np.float32), (C.MAX_BOXES_PER_IMAGE + 1, 1))
        square = np.zeros((200, 200, 3), np.uint8)
        with pytest.raises(tg.InferenceServerException) as e:
            c.infer(N.CROP, _crop_inputs(square, many), timeout=60)
        assert f"at most {C.MAX_BOXES_PER_IMAGE}" in e.value.message()
        ok = c.infer(N.CROP, _crop_inputs(square, many[:2]), timeout=60)
        assert ok.as_numpy(N.PIXELS_ALL).shape == (3, 3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE)
    finally:
        c.close()


def test_undecodable_image_message_has_no_object_address(gateway: search_pb2_grpc.VisualSearchStub) -> None:
    q = search_pb2.QueryRequest(k=3, image=search_pb2.ImageQuery(image=b"definitely not an image"))
    with pytest.raises(grpc.RpcError) as e:
        gateway.Search(q, metadata=auth(), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot decode image" in e.value.details()
    assert "0x" not in e.value.details() and " object at " not in e.value.details()
    still_serving(gateway)
