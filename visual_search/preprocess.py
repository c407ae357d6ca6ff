"""The one preprocessing path: decode, EXIF-rotate, colour-convert, letterbox, crop, normalise.

Triton's python-backend models, export calibration, the in-process reference path and the
evaluation all call these functions, so indexing, querying and evaluation see the same pixels
(no training/serving skew). Parameters come from visual_search.contract.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from visual_search import contract as C
from visual_search.errors import describe, public_message


class ImageError(ValueError):
    """A request image that cannot be used; the message is meant for the caller."""


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed into the square detector input (to map boxes back)."""

    scale: float
    pad_x: float
    pad_y: float
    width: int  # original (EXIF-rotated) image size
    height: int

    def as_array(self) -> np.ndarray:
        return np.array([self.scale, self.pad_x, self.pad_y, self.width, self.height], np.float32)

    @classmethod
    def from_array(cls, a: np.ndarray) -> Letterbox:
        return cls(float(a[0]), float(a[1]), float(a[2]), int(a[3]), int(a[4]))


def decode_image(data: bytes) -> np.ndarray:
    """Bytes -> HxWx3 uint8 RGB, EXIF orientation applied. Raises ImageError with a clear reason."""
    if not data:
        raise ImageError("image is empty (0 bytes)")
    if len(data) > C.MAX_IMAGE_BYTES:
        raise ImageError(f"image is {len(data)} bytes; the limit is {C.MAX_IMAGE_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            check_size(*img.size)  # header only: check before decoding pixels
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(public_message(f"image refused as a decompression bomb: {e}")) from e
    except Exception as e:  # PIL raises many types for corrupt/truncated/unknown data
        raise ImageError(f"cannot decode image: {describe(e)}") from e
    return to_rgb(img)


def check_size(w: int, h: int) -> None:
    """Pixel count, smallest side and aspect ratio within the contract (bounded memory per image)."""
    if w * h > C.MAX_IMAGE_PIXELS:
        raise ImageError(f"image is {w}x{h} = {w * h} pixels; the limit is {C.MAX_IMAGE_PIXELS}")
    if min(w, h) < C.MIN_IMAGE_SIDE:
        raise ImageError(f"image is {w}x{h}; each side must be at least {C.MIN_IMAGE_SIDE} pixels")
    check_aspect(w, h)


def check_aspect(w: int, h: int) -> None:
    """Long side / short side within MAX_ASPECT_RATIO (bounds every resize of the image)."""
    if max(w, h) > C.MAX_ASPECT_RATIO * max(1, min(w, h)):
        raise ImageError(
            f"image is {w}x{h}: aspect ratio {max(w, h) / max(1, min(w, h)):.1f}:1 exceeds the limit "
            f"{C.MAX_ASPECT_RATIO:g}:1 (long side / short side)"
        )


def check_rgb(img: np.ndarray) -> np.ndarray:
    """An already decoded image from a caller (Triton's IMAGE_RGB input): HxWx3 uint8, same limits."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ImageError(f"decoded image must be HxWx3 uint8; got shape {list(img.shape)} {img.dtype}")
    check_size(int(img.shape[1]), int(img.shape[0]))
    return img


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, F...) -> HxWx3 uint8 RGB; alpha over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a8 = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a8[:, :, None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    if img.shape[1] == width and img.shape[0] == height:
        return img
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def letterbox(img: np.ndarray, size: int = C.DETECTOR_INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Fit the image into size x size (aspect kept, centred, grey pad) -> CHW float32 in [0, 1]."""
    h, w = img.shape[:2]
    scale = min(size / w, size / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    pad_x, pad_y = (size - nw) // 2, (size - nh) // 2
    canvas = np.full((size, size, 3), C.LETTERBOX_PAD_VALUE, np.uint8)
    canvas[pad_y : pad_y + nh, pad_x : pad_x + nw] = _resize(img, nw, nh)
    chw = canvas.transpose(2, 0, 1).astype(np.float32) / 255.0
    return np.ascontiguousarray(chw), Letterbox(scale, float(pad_x), float(pad_y), w, h)


def boxes_to_image(boxes_xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Boxes in letterboxed detector pixels -> original image pixels, clipped to the image."""
    b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = (b[:, [0, 2]] - lb.pad_x) / lb.scale
    b[:, [1, 3]] = (b[:, [1, 3]] - lb.pad_y) / lb.scale
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, lb.width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, lb.height)
    return b


def validate_box(box: np.ndarray | list[float], width: int, height: int) -> np.ndarray:
    """Check a caller-given box (x1, y1, x2, y2 pixels) against the image; clip slight overhang."""
    b = np.asarray(box, np.float64).reshape(-1)
    if b.size != 4 or not np.all(np.isfinite(b)):
        raise ImageError(f"box must be 4 finite numbers x1,y1,x2,y2; got {list(b)}")
    x1, y1, x2, y2 = b
    if x2 <= x1 or y2 <= y1:
        raise ImageError(f"box {list(b)} is empty: need x2 > x1 and y2 > y1")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise ImageError(f"box {list(b)} lies outside the {width}x{height} image")
    c = np.array([max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)], np.float32)
    if c[2] - c[0] < 1 or c[3] - c[1] < 1:
        raise ImageError(f"box {list(b)} covers less than one pixel of the {width}x{height} image")
    return c


def crop(img: np.ndarray, box: np.ndarray, margin: float = C.CROP_MARGIN) -> np.ndarray:
    """Cut a box (widened by `margin` of its size on each side, clipped) out of an HxWx3 image."""
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    ix1, iy1 = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    ix2, iy2 = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    if ix2 <= ix1 or iy2 <= iy1:
        raise ImageError(f"box {[x1, y1, x2, y2]} is empty after clipping to the {w}x{h} image")
    return img[iy1:iy2, ix1:ix2]


def _normalise(rgb: np.ndarray) -> np.ndarray:
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.array(C.IMAGENET_MEAN, np.float32)) / np.array(C.IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def encoder_input(img: np.ndarray) -> np.ndarray:
    """Whole image HxWx3 uint8 -> CHW float32 normalised encoder input.

    Shorter side resized to ENCODER_RESIZE, then a centre crop of ENCODER_INPUT_SIZE (the ImageNet
    evaluation transform; best for whole photos on the dev sets).
    """
    h, w = img.shape[:2]
    check_aspect(w, h)  # bounds the intermediate: at most ENCODER_RESIZE x MAX_ASPECT_RATIO x it
    s = C.ENCODER_RESIZE / min(h, w)
    nw, nh = max(C.ENCODER_INPUT_SIZE, round(w * s)), max(C.ENCODER_INPUT_SIZE, round(h * s))
    r = _resize(img, nw, nh)
    top, left = (nh - C.ENCODER_INPUT_SIZE) // 2, (nw - C.ENCODER_INPUT_SIZE) // 2
    return _normalise(r[top : top + C.ENCODER_INPUT_SIZE, left : left + C.ENCODER_INPUT_SIZE])


def object_input(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """One object (box, widened by CROP_MARGIN) -> CHW float32 encoder input.

    The crop is resized to the square input without cutting: a centre crop would cut the ends of
    tall or wide objects (bottles, people), and measured on the dev sets squashing retrieves
    better (grocery object-query mAP 0.188 -> 0.239, dogs 0.678 -> 0.699, FP32 encoder).
    """
    c = crop(img, box)
    return _normalise(_resize(c, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE))


def encoder_batch(img: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
    """Encoder inputs [N + 1, 3, 224, 224]: one per box (objects, in order), then the whole image."""
    if boxes is not None and len(boxes) > C.MAX_BOXES_PER_IMAGE:
        raise ImageError(f"{len(boxes)} boxes for one image; at most {C.MAX_BOXES_PER_IMAGE}")
    parts = [object_input(img, b) for b in (boxes if boxes is not None else [])]
    parts.append(encoder_input(img))
    return np.stack(parts)


def salience(boxes_xyxy: np.ndarray, scores: np.ndarray, width: int, height: int) -> np.ndarray:
    """Salience of each detection = confidence x box area / image area (R1's default box)."""
    b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    area = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    return np.asarray(scores, np.float32).reshape(-1) * area / float(max(1, width * height))


def default_box_index(boxes_xyxy: np.ndarray, scores: np.ndarray, width: int, height: int) -> int:
    """Index of the default (most salient) box; -1 when there is none (the whole image is used).

    Ties go to the earlier detection, the same order a stable sort by descending salience gives,
    so Triton's one-call query and the gateway's ordering always agree on the box.
    """
    sal = salience(boxes_xyxy, scores, width, height)
    return int(np.argmax(sal)) if sal.size else -1


def _default_crop(img: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
    """Encoder input [3, 224, 224] of the default (most salient) box; None when nothing was found."""
    h, w = img.shape[:2]
    i = default_box_index(boxes, scores, w, h)
    return None if i < 0 else object_input(img, np.asarray(boxes, np.float32).reshape(-1, 4)[i])


def default_input(img: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Encoder input [1, 3, 224, 224] of the default box, or of the whole image when nothing was found."""
    crop = _default_crop(img, boxes, scores)
    return (encoder_input(img) if crop is None else crop)[None]


def default_whole_input(img: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Encoder inputs [M, 3, 224, 224] of the "max" query: the default box, then the whole image
    (M = 2); only the whole image (M = 1) when nothing was found. One encoder batch for both."""
    crop = _default_crop(img, boxes, scores)
    whole = encoder_input(img)
    return whole[None] if crop is None else np.stack([crop, whole])
