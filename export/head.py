"""Projection head trained self-supervised on catalog images (replaces plain PCA).

Backbones frozen; the D -> 256 linear projection (D = 2560, both backbones' GeM; initialised from
the catalog PCA) is trained with a symmetric InfoNCE loss on pairs of views of the same catalog
photo. A view is GeM over a random sub-window (>= 4x4 of 7x7, ~ a random resized crop) of the
feature map of either the whole photo or one of its detected objects, so a photo and its own object
crops are pulled together (what the served path matches: salient-object query vs whole + object
catalog entries); the other photos in the batch are the negatives. No labels, no query images.
Measured on the dev sets (benchmarks/quality_experiments.json): on MobileNetV2 alone grocery mAP
0.283 -> 0.41 whole/whole, 0.238 -> 0.38 served config, dogs unchanged or slightly better; the same
recipe on both backbones is what ships ("backbones" there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from export.encoder import GEM_P, Projection

STEPS, BATCH, TAU, LR, MIN_WINDOW, SEED = 150, 128, 0.5, 3e-4, 4, 0
RECIPE = (f"InfoNCE tau={TAU}, {STEPS} steps x {BATCH} catalog photos, Adam lr={LR}, views = GeM over "
          f"random >= {MIN_WINDOW}x{MIN_WINDOW} windows of the 7x7 map of the photo or its detected "
          f"objects, init = PCA, seed {SEED}")


def _gem(f: torch.Tensor) -> torch.Tensor:
    return f.clamp(min=1e-6).pow(GEM_P).mean((-2, -1)).pow(1.0 / GEM_P)


class WindowGeM:
    """GeM of any window of each entry's map in O(1): integral images of clamp(maps)^p.

    The head's views are GeM over random sub-windows; summing x^p once per entry (float32) makes a
    batch of views a few vectorised lookups instead of one small tensor job per view (~50x less
    CPU on this 2-core box). Same values as _gem up to float32 rounding (maps are >= 0, post-ReLU6).
    """

    def __init__(self, parts: Sequence[Any]) -> None:
        ints = []
        for p in parts:
            for i in range(0, len(p), 256):
                c = np.clip(np.asarray(p[i : i + 256], np.float32), 1e-6, None) ** GEM_P
                z = np.zeros((*c.shape[:2], c.shape[2] + 1, c.shape[3] + 1), np.float32)
                z[:, :, 1:, 1:] = c.cumsum(2).cumsum(3)
                ints.append(z)
        self.integral = np.concatenate(ints) if ints else np.zeros((0, 0, 1, 1), np.float32)  # [N,D,H+1,W+1]
        n, d, h1, w1 = self.integral.shape
        self.shape = (n, d, h1 - 1, w1 - 1)

    @classmethod
    def concat(cls, parts: Sequence[WindowGeM]) -> WindowGeM:
        out = cls([])
        out.integral = np.concatenate([p.integral for p in parts]) if len(parts) > 1 else parts[0].integral
        out.shape = parts[0].shape
        return out

    def __len__(self) -> int:
        return int(self.integral.shape[0])

    def __getitem__(self, e: int) -> np.ndarray:
        return np.zeros(self.shape[1:], np.float32)  # only its shape is read (side of the map)

    def gem(self, wins: np.ndarray) -> np.ndarray:
        """wins [B,5] = (entry, y, x, h, w) -> GeM [B, D] float32."""
        e, y, x, h, w = wins.T
        t = self.integral
        s = t[e, :, y + h, x + w] - t[e, :, y, x + w] - t[e, :, y + h, x] + t[e, :, y, x]
        mean = np.clip(s, 0, None) / (h * w)[:, None]
        return (mean ** (1.0 / GEM_P)).astype(np.float32)  # type: ignore[no-any-return]


def train(fmaps: Any, groups: Sequence[Sequence[int]], init: Projection, steps: int = STEPS,
          channel_scale: np.ndarray | None = None,
          progress: Callable[[int, int], None] | None = None, block: int | None = None) -> Projection:
    """fmaps [N,D,7,7] of catalog entries (any array-like indexable by entry: float16 memmaps are
    read window by window, so memory stays bounded); groups = entry indices per catalog photo;
    channel_scale [D] multiplies the maps (backbone scales); init = the starting projection (PCA,
    or an already trained head when adapting to a new catalog); block: each run of `block` channels
    (one backbone's GeM) is L2-normalised on its own before the projection, as the per-block encoder
    does (export/encoder.py)."""
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    side = int(fmaps[0].shape[-1])
    cs = None if channel_scale is None else np.asarray(channel_scale, np.float32)[:, None, None]
    mean = torch.from_numpy(init.mean)
    w = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(init.components.T)))
    opt = torch.optim.Adam([w], lr=LR)

    fast = isinstance(fmaps, WindowGeM)

    def window(e: int) -> tuple[int, int, int, int, int]:
        h, wd = (int(rng.integers(MIN_WINDOW, side + 1)) for _ in range(2))
        y, x = int(rng.integers(0, side + 1 - h)), int(rng.integers(0, side + 1 - wd))
        return e, y, x, h, wd

    def views(wins: list[tuple[int, int, int, int, int]]) -> torch.Tensor:
        if fast:
            g = fmaps.gem(np.asarray(wins, np.int64))
            return torch.from_numpy(g if cs is None else g * cs[:, 0, 0])
        out = []
        for e, y, x, h, wd in wins:
            win = np.asarray(fmaps[e][:, y : y + h, x : x + wd], np.float32)
            out.append(_gem(torch.from_numpy(win if cs is None else win * cs)))
        return torch.stack(out)

    def head(x: torch.Tensor) -> torch.Tensor:
        if block is not None:
            x = torch.cat([torch.nn.functional.normalize(p, dim=1) for p in x.split(block, dim=1)], 1)
        x = torch.nn.functional.normalize(x, dim=1)
        return torch.nn.functional.normalize((x - mean) @ w, dim=1)

    labels = torch.arange(min(BATCH, len(groups)))
    for step in range(steps):
        pick = rng.choice(len(groups), len(labels), replace=False)
        a, b = [], []
        for k in pick:
            a.append(window(int(rng.choice(groups[k]))))
            b.append(window(int(rng.choice(groups[k]))))
        logits = head(views(a)) @ head(views(b)).T / TAU
        loss = (torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, steps)
    return Projection(init.mean, np.ascontiguousarray(w.detach().numpy().T).astype(np.float32))
