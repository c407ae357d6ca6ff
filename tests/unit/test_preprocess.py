"""The shared preprocessing path: decoding odd images, limits, letterbox geometry, crops."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from visual_search import contract as C
from visual_search import preprocess as P


def _encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb_image(w: int = 64, h: int = 48) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)  # left half red, right half blue
    a[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


def test_decode_rgb_jpeg_roundtrip() -> None:
    out = P.decode_image(_encode(_rgb_image(), "JPEG", quality=95))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert out[10, 5, 0] > 200 and out[10, 60, 2] > 200


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_decode_odd_modes_become_rgb(mode: str) -> None:
    if mode == "I;16":
        img = Image.fromarray(np.full((20, 30), 40000, np.uint16))
    else:
        img = _rgb_image(30, 20).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    out = P.decode_image(_encode(img, fmt))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    if mode == "I;16":
        assert abs(int(out[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1


def test_transparent_pixels_composite_over_white() -> None:
    a = np.zeros((16, 16, 4), np.uint8)  # fully transparent black
    out = P.decode_image(_encode(Image.fromarray(a, "RGBA")))
    assert (out == 255).all()


def test_exif_orientation_is_applied() -> None:
    img = _rgb_image(64, 32)  # landscape: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = P.decode_image(_encode(img, "JPEG", exif=exif, quality=95))
    assert out.shape == (64, 32, 3)  # now portrait
    assert out[5, 16, 0] > 200 and out[60, 16, 2] > 200  # red on top after rotation


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"not an image at all", "cannot decode"),
        (b"\xff" * 10, "cannot decode"),
    ],
)
def test_bad_bytes_get_clear_errors(data: bytes, needle: str) -> None:
    with pytest.raises(P.ImageError, match=needle):
        P.decode_image(data)


def test_truncated_jpeg_is_refused() -> None:
    data = _encode(_rgb_image(200, 200), "JPEG")
    with pytest.raises(P.ImageError, match="cannot decode"):
        P.decode_image(data[: len(data) // 2])


def test_tiny_image_is_refused() -> None:
    with pytest.raises(P.ImageError, match="at least"):
        P.decode_image(_encode(Image.new("RGB", (1, 1))))


def test_oversize_bytes_are_refused_before_decoding() -> None:
    with pytest.raises(P.ImageError, match="limit"):
        P.decode_image(b"\x00" * (C.MAX_IMAGE_BYTES + 1))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a tiny stub."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(
        b"IEND", b""
    )


def test_decompression_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(P.ImageError, match="pixels"):
        P.decode_image(_png_header_only(50_000, 50_000))


def test_letterbox_geometry_and_box_mapping() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    x, lb = P.letterbox(img)
    assert x.shape == (3, C.DETECTOR_INPUT_SIZE, C.DETECTOR_INPUT_SIZE) and x.dtype == np.float32
    assert lb.scale == pytest.approx(3.2) and lb.pad_x == 0 and lb.pad_y == 160
    # padding is grey, content is black
    assert x[0, 0, 0] == pytest.approx(C.LETTERBOX_PAD_VALUE / 255)
    assert x[0, 320, 320] == 0
    # a box in detector pixels maps back to the original image
    back = P.boxes_to_image(np.array([[32.0, 192.0, 352.0, 320.0]]), lb)
    np.testing.assert_allclose(back, [[10, 10, 110, 50]], atol=1e-4)
    rt = P.Letterbox.from_array(lb.as_array())  # float32 on the wire
    assert rt.scale == pytest.approx(lb.scale)
    assert (rt.pad_x, rt.pad_y, rt.width, rt.height) == (0, 160, 200, 100)


def test_validate_box() -> None:
    np.testing.assert_allclose(P.validate_box([-5, -5, 50, 40], 100, 80), [0, 0, 50, 40])
    for bad, needle in [([0, 0, 0, 10], "empty"), ([200, 0, 300, 10], "outside"), ([1, 2, 3], "4 finite")]:
        with pytest.raises(P.ImageError, match=needle):
            P.validate_box(bad, 100, 80)
    with pytest.raises(P.ImageError, match="finite"):
        P.validate_box([0, 0, float("nan"), 10], 100, 80)


def test_crop_and_encoder_input() -> None:
    img = np.zeros((100, 100, 3), np.uint8)
    img[40:60, 40:60] = 255
    c = P.crop(img, np.array([40, 40, 60, 60]), margin=0.0)
    assert c.shape == (20, 20, 3) and (c == 255).all()
    c2 = P.crop(img, np.array([40, 40, 60, 60]), margin=0.5)
    assert c2.shape == (40, 40, 3)
    x = P.encoder_input(c)
    assert x.shape == (3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE) and x.dtype == np.float32
    white = (1.0 - np.array(C.IMAGENET_MEAN)) / np.array(C.IMAGENET_STD)
    np.testing.assert_allclose(x[:, 100, 100], white, rtol=1e-5)


def test_salience_prefers_confident_large_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 50, 50], [0, 0, 50, 50]], np.float32)
    s = P.salience(boxes, np.array([0.9, 0.5, 0.2]), 100, 100)
    assert int(np.argmax(s)) == 1
    np.testing.assert_allclose(s, [0.009, 0.125, 0.05], rtol=1e-5)


def test_object_input_keeps_the_whole_object_and_batch_order() -> None:
    img = np.zeros((200, 100, 3), np.uint8)
    img[10:190, 40:60] = 255  # a tall white bar: a centre crop would cut its ends
    x = P.object_input(img, np.array([40, 10, 60, 190]))
    assert x.shape == (3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE)
    white = (1.0 - C.IMAGENET_MEAN[0]) / C.IMAGENET_STD[0]
    col = x[0, :, C.ENCODER_INPUT_SIZE // 2]
    # the bar covers 180 of the crop's 200 rows; a centre crop of this tall box would keep far less
    assert np.isclose(col, white, rtol=1e-3).mean() > 0.85
    batch = P.encoder_batch(img, np.array([[40, 10, 60, 190], [0, 0, 50, 50]], np.float32))
    assert batch.shape == (3, 3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE)
    np.testing.assert_array_equal(batch[0], x)
    np.testing.assert_array_equal(batch[-1], P.encoder_input(img))
    assert P.encoder_batch(img).shape[0] == 1  # zero detections: the whole image only


def test_default_whole_input_is_default_box_then_whole_image() -> None:
    """The "max" query's encoder batch: row 0 = default_input's crop, row 1 = the whole image;
    the whole image alone when nothing was detected."""
    img = np.zeros((200, 100, 3), np.uint8)
    img[10:190, 40:60] = 255
    boxes = np.array([[0, 0, 20, 20], [40, 10, 60, 190]], np.float32)  # the second is more salient
    scores = np.array([0.9, 0.8], np.float32)
    x = P.default_whole_input(img, boxes, scores)
    assert x.shape == (2, 3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE)
    np.testing.assert_array_equal(x[0], P.default_input(img, boxes, scores)[0])
    np.testing.assert_array_equal(x[0], P.object_input(img, boxes[1]))
    np.testing.assert_array_equal(x[1], P.encoder_input(img))
    none = P.default_whole_input(img, np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    assert none.shape == (1, 3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE)
    np.testing.assert_array_equal(none[0], P.encoder_input(img))
