"""Hostile and odd images through the real server: each gets its own clear error or a defined
result, and a bad request inside a dynamic batch never fails the good ones beside it."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from visual_search import contract as C
from visual_search.triton import names as N
from visual_search.triton.client import AsyncTritonClient, InferenceError, TritonClient
from visual_search.triton.server import TritonServer


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A few hundred bytes whose header claims w x h pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bus_image(bus: bytes) -> Image.Image:
    return Image.open(io.BytesIO(bus)).convert("RGB")


def _error(client: TritonClient, model: str, data: bytes, box: list[float] | None = None) -> InferenceError:
    with pytest.raises(InferenceError) as e:
        if model == N.DETECT:
            client.detect(data)
        elif model == N.EMBED:
            client.embed(data, box=box)
        else:
            client.detect_and_embed(data)
    return e.value


BAD = {
    "corrupt": (b"this is not an image at all" * 10, "cannot decode image"),
    "zero_size": (b"", "empty"),
    "one_pixel": (_encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "at least"),
    "bomb": (bomb_png(), "limit"),
}


@pytest.mark.parametrize("model", [N.DETECT, N.EMBED, N.DETECT_AND_EMBED])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_image_clear_error(client: TritonClient, model: str, case: str) -> None:
    data, reason = BAD[case]
    err = _error(client, model, data)
    assert reason in err.message, err.message
    assert err.status == "StatusCode.INVALID_ARGUMENT"


def test_truncated_jpeg(client: TritonClient, bus: bytes) -> None:
    err = _error(client, N.DETECT_AND_EMBED, bus[: len(bus) // 3])
    assert "truncated" in err.message


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_odd_modes_give_results(client: TritonClient, bus: bytes, mode: str) -> None:
    rgb = _bus_image(bus)
    if mode == "I;16":
        a = (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16)
        data = _encode(Image.fromarray(a), "PNG")
        assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit PNG
    else:
        data = _encode(rgb.convert(mode), "JPEG" if mode == "CMYK" else "PNG")
    r = client.detect_and_embed(data)
    assert 5 in r.classes.tolist(), "the bus is still found"
    assert np.all(np.abs(np.linalg.norm(r.embeddings.astype(np.float32), axis=1) - 1) < 0.01)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_boxes_in_upright_frame(client: TritonClient, bus: bytes, orientation: int) -> None:
    upright = _bus_image(bus)
    stored = upright.transpose(
        {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[
            orientation
        ]
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    rotated = client.detect(_encode(stored, "JPEG", quality=95, exif=exif))
    ref = client.detect(_encode(upright, "JPEG", quality=95))
    assert rotated.classes.tolist()[:3] == ref.classes.tolist()[:3]
    np.testing.assert_allclose(rotated.boxes[:3], ref.boxes[:3], atol=6.0)


def test_caller_boxes(client: TritonClient, bus: bytes) -> None:
    assert "outside" in _error(client, N.EMBED, bus, [2000.0, 2000.0, 3000.0, 3000.0]).message
    assert "empty" in _error(client, N.EMBED, bus, [300.0, 300.0, 100.0, 400.0]).message
    # overhanging the edge is clipped, not refused
    e = client.embed(bus, box=[-50.0, -50.0, 400.0, 400.0])
    assert e.shape == (C.EMBEDDING_DIM,)
    clipped = client.embed(bus, box=[0.0, 0.0, 400.0, 400.0])
    assert float(e.astype(np.float32) @ clipped.astype(np.float32)) > 0.999
    with pytest.raises(ValueError):
        client.embed(bus, box=[1.0, 2.0, 3.0])


def test_zero_detections_is_a_result(client: TritonClient) -> None:
    blank = _encode(Image.new("RGB", (320, 240), (128, 128, 128)), "PNG")
    d = client.detect(blank)
    assert d.boxes.shape == (0, 4) and d.scores.shape == (0,) and d.classes.shape == (0,)
    r = client.detect_and_embed(blank)
    assert r.embeddings.shape == (0, C.EMBEDDING_DIM) and r.image_embedding.shape == (C.EMBEDDING_DIM,)
    one = client.detect_and_embed_default(blank)  # nothing detected: the whole image is embedded
    assert one.boxes.shape == (0, 4)
    whole = client.embed(blank).astype(np.float32)
    assert float(one.embedding.astype(np.float32) @ whole) > 0.999
    both = client.detect_and_embed_default_whole(blank)  # the "max" query: one row, the whole image
    assert both.boxes.shape == (0, 4) and both.embeddings.shape == (1, C.EMBEDDING_DIM)
    assert float(both.embeddings[0].astype(np.float32) @ whole) > 0.999


def test_bad_requests_inside_a_batch_fail_alone(
    triton_server: TritonServer, client: TritonClient, bus: bytes
) -> None:
    expected_det = client.detect_and_embed(bus)
    expected_emb = client.embed(bus)
    bad = [BAD["corrupt"][0], bus[: len(bus) // 3], bomb_png(), b""]

    async def mixed() -> list[object]:
        async with AsyncTritonClient(triton_server.grpc_url) as a:
            calls: list[Any] = []
            for i in range(16):
                if i % 4 == 3:
                    calls.append(a.detect_and_embed(bad[(i // 4) % len(bad)]))
                else:
                    calls.append(a.detect_and_embed(bus) if i % 2 else a.embed(bus))
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(mixed())
    for i, r in enumerate(results):
        if i % 4 == 3:
            assert isinstance(r, InferenceError), r
        elif i % 2:
            assert not isinstance(r, BaseException), r
            np.testing.assert_allclose(r.boxes, expected_det.boxes, atol=0.5)  # type: ignore[attr-defined]
            assert r.embeddings.shape == expected_det.embeddings.shape  # type: ignore[attr-defined]
        else:
            assert not isinstance(r, BaseException), r
            assert float(np.asarray(r, np.float32) @ expected_emb.astype(np.float32)) > 0.999  # type: ignore[arg-type]
