"""Unit checks of the issue-12 guards: aspect-ratio/size limits, caller-safe error text, Bearer
parsing, shard token loading. The same behaviour is driven through real processes in tests/hostile."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visual_search import contract as C
from visual_search import preprocess as P
from visual_search.errors import describe, public_message
from visual_search.shard import auth as shard_auth
from visual_search.tokens import bearer_error


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_aspect_ratio_limit_is_checked_from_the_header() -> None:
    side = 50
    limit = int(side * C.MAX_ASPECT_RATIO)
    assert P.decode_image(_png(limit, side)).shape == (side, limit, 3)
    assert P.decode_image(_png(side, limit)).shape == (limit, side, 3)
    for w, h in ((limit + 1, side), (side, limit + 1), (400_000, 100)):
        with pytest.raises(P.ImageError, match="aspect ratio .* exceeds the limit"):
            P.decode_image(_png(w, h))


def test_encoder_input_intermediate_is_bounded_and_raw_pixels_are_checked() -> None:
    img = np.zeros((20, int(20 * C.MAX_ASPECT_RATIO), 3), np.uint8)
    assert P.encoder_input(img).shape == (3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE)
    with pytest.raises(P.ImageError, match="aspect ratio"):
        P.encoder_input(np.zeros((20, int(20 * C.MAX_ASPECT_RATIO) + 1, 3), np.uint8))
    with pytest.raises(P.ImageError, match="HxWx3 uint8"):
        P.check_rgb(np.zeros((20, 20), np.uint8))
    with pytest.raises(P.ImageError, match="at most"):
        P.encoder_batch(np.zeros((64, 64, 3), np.uint8), np.zeros((C.MAX_BOXES_PER_IMAGE + 1, 4), np.float32))


def test_error_text_never_carries_object_addresses() -> None:
    with pytest.raises(P.ImageError) as e:
        P.decode_image(b"not an image at all")
    assert "0x" not in str(e.value) and "cannot decode image" in str(e.value)
    assert public_message("file <_io.BytesIO object at 0x7f3a2b1c9e50> bad") == "file <_io.BytesIO> bad"
    assert describe(ValueError("<function f at 0x7f00aa11bb22>")) == "ValueError: <function>"
    assert public_message("phash 0x1f00ab34cd56ef78 differs") == "phash 0x1f00ab34cd56ef78 differs"


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer tok", True),
        ("bearer tok", True),
        ("BEARER tok", True),
        ("  Bearer   tok ", True),
        ("Basic tok", False),
        ("Bearer tok2", False),
        ("tok", False),
        ("Bearer", False),
    ],
)
def test_bearer_scheme_is_case_insensitive(header: str, ok: bool) -> None:
    why = bearer_error([("authorization", header)], "tok")
    assert (why is None) == ok
    if why:
        assert "tok" not in why.replace("token", "")  # never echoes what was sent
    assert bearer_error([], "tok") is not None


def test_shard_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(shard_auth.TOKEN_ENV, raising=False)
    monkeypatch.delenv(shard_auth.TOKEN_FILE_ENV, raising=False)
    assert shard_auth.load_token() is None
    monkeypatch.setenv(shard_auth.TOKEN_ENV, "from-env")
    assert shard_auth.load_token() == "from-env"
    f = tmp_path / "t"
    f.write_text("from-file\n")
    monkeypatch.setenv(shard_auth.TOKEN_FILE_ENV, str(f))
    assert shard_auth.load_token() == "from-file"
    f.write_text("")
    with pytest.raises(shard_auth.TokenError, match="empty"):
        shard_auth.load_token()
    with pytest.raises(shard_auth.TokenError, match="cannot read"):
        shard_auth.load_token(str(tmp_path / "missing"))
    assert shard_auth.is_loopback("127.0.0.1") and shard_auth.is_loopback("::1")
    assert shard_auth.is_loopback("localhost") and not shard_auth.is_loopback("0.0.0.0")
