"""64-bit perceptual hash (pHash) of a photo, for recognising exact / near-exact copies (R5).

Grey image -> 32x32 (area resampling) -> 2-D DCT-II -> the 8x8 lowest frequencies -> one bit per
coefficient: above the median of the 63 non-DC coefficients. Re-encoding, resizing and mild
colour changes flip few bits; different photos differ in ~32. Own implementation (numpy DCT
matrix) so the hash is stable across library versions: it is stored in the index.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

HASH_SIZE = 8
_SAMPLE = 32


@functools.cache
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: y = D @ x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def phash(rgb: np.ndarray) -> int:
    """pHash of an HxWx3 uint8 RGB image as an unsigned 64-bit int (never 0: 0 means "none")."""
    grey = Image.fromarray(np.asarray(rgb, np.uint8)).convert("L")
    small = np.asarray(grey.resize((_SAMPLE, _SAMPLE), Image.Resampling.BOX), np.float64)
    d = _dct_matrix(_SAMPLE)
    coeffs = (d @ small @ d.T)[:HASH_SIZE, :HASH_SIZE].reshape(-1)
    median = np.median(coeffs[1:])
    bits = coeffs > median
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value or 1


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two 64-bit hashes."""
    return (int(a) ^ int(b)).bit_count()
