"""Backbone features of every entry the evaluation and adaptation use, computed once and cached.

Per image, exactly the encoder inputs serving builds (visual_search.preprocess):
- catalog photos: one squash-resized crop per catalog-side (FP32, 640) detection + the whole image,
  as the gateway indexes them;
- query photos: the whole image + the default box of the query-side detector (as
  detect_and_embed_default), with that box's confidence, class and area fraction.
Each entry keeps the unscaled GeM descriptor of both backbones (and MobileNetV2's average pool, the
plain baseline); catalog entries also keep their 7x7 feature maps (float16, memory-mapped) for the
self-supervised head. Everything after the backbones (scales, PCA, head) is then cheap to refit.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.env import REPO
from visual_search import contract as C
from visual_search import preprocess as P

CACHE_VERSION = 1
BACKBONE_CACHE = REPO / ".cache" / "crossset"


@dataclass
class SetFeatures:
    """Entries of one image set; `img` indexes `images` (manifest order)."""

    images: list[str]
    labels: list[str]
    splits: list[str]
    img: np.ndarray  # int64 [E]
    kind: np.ndarray  # str [E]: "whole" | "obj" (catalog) | "box" (query default box)
    gem: np.ndarray  # float32 [E, 2560]: GeM of MobileNetV2 | Lite0 maps, unscaled
    avg_mnv2: np.ndarray  # float32 [E, 1280]: MobileNetV2 global average pool (baseline)
    box_info: np.ndarray  # float32 [E, 3]: (confidence, area fraction, COCO class) of "box" rows, else -1
    maps: np.ndarray  # float16 [C, 2560, 7, 7] maps of catalog entries (memmap)
    map_row: np.ndarray  # int64 [E]: row in `maps` (-1 for query entries)

    def catalog_groups(self, entries: np.ndarray | None = None) -> list[list[int]]:
        """Map rows per catalog photo (the head's positive pairs)."""
        groups: dict[int, list[int]] = {}
        for e in np.flatnonzero(self.map_row >= 0) if entries is None else entries:
            groups.setdefault(int(self.img[e]), []).append(int(self.map_row[e]))
        return list(groups.values())


def backbone_session(cache_dir: Path) -> Any:
    """Both backbones (unscaled maps, [B,2560,7,7]) as an onnxruntime session: ~18x less CPU than
    torch eager here (0.05 vs 0.87 CPU-s per entry, 2 threads). Exported once per weights digest."""
    import torch

    from export import encoder
    from export.metadata import OPSET
    from visual_search.reference import make_session

    path = cache_dir / f"backbone_maps_{encoder.weights_sha256()[:12]}.onnx"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        x = torch.zeros(2, 3, C.ENCODER_INPUT_SIZE, C.ENCODER_INPUT_SIZE)
        torch.onnx.export(encoder.backbone().eval(), (x,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["pixels"], output_names=["maps"],
                          dynamic_axes={"pixels": {0: "batch"}, "maps": {0: "batch"}})
        os.replace(tmp, path)
    return make_session(path, 2)


def extract(
    images: Sequence[Path],
    catalog: Sequence[bool],
    detector: Path,
    query_detector: Path | None,
    out_dir: Path,
    progress: Callable[[int, int, float], None] | None = None,
) -> None:
    """Detect + run both backbones on every image; writes out_dir/{meta.npz,maps.npy}."""
    from export import encoder
    from visual_search.reference import make_session

    det = make_session(detector, 2)
    qdet = make_session(query_detector, 2) if query_detector is not None else det
    net = backbone_session(BACKBONE_CACHE)
    rows_img: list[int] = []
    rows_kind: list[str] = []
    gems: list[np.ndarray] = []
    avgs: list[np.ndarray] = []
    infos: list[tuple[float, float, float]] = []
    maps: list[np.ndarray] = []
    t0 = time.monotonic()
    from visual_search import detection

    def run_det(sess: object, img: np.ndarray, size: int) -> detection.Detections:
        x, lb = P.letterbox(img, size)
        (o,) = sess.run([C.DETECTOR_OUTPUT_NAME], {C.DETECTOR_INPUT_NAME: x[None]})  # type: ignore[attr-defined]
        return detection.decode(o[0], lb)

    qsize = C.QUERY_DETECTOR_INPUT_SIZE if query_detector is not None else C.DETECTOR_INPUT_SIZE
    for i, (path, is_cat) in enumerate(zip(images, catalog, strict=True)):
        img = P.decode_image(path.read_bytes())
        h, w = img.shape[:2]
        if is_cat:
            d = run_det(det, img, C.DETECTOR_INPUT_SIZE)
            x = P.encoder_batch(img, d.boxes)
            kinds = ["obj"] * len(d) + ["whole"]
            info = [(-1.0, -1.0, -1.0)] * len(x)
        else:
            d = run_det(qdet, img, qsize)
            j = P.default_box_index(d.boxes, d.scores, w, h)
            x = np.concatenate([P.encoder_input(img)[None], P.default_input(img, d.boxes, d.scores)])
            kinds = ["whole", "box"]
            if j >= 0:
                b = d.boxes[j]
                frac = float((b[2] - b[0]) * (b[3] - b[1]) / max(1, w * h))
                info = [(-1.0, -1.0, -1.0), (float(d.scores[j]), frac, float(d.classes[j]))]
            else:
                info = [(-1.0, -1.0, -1.0), (0.0, 1.0, -1.0)]  # no detection: the whole image
        (m,) = net.run(None, {"pixels": np.ascontiguousarray(x, np.float32)})
        a_np, b_np = m[:, :1280], m[:, 1280:]
        gems.append(np.concatenate([encoder.gem_np(a_np), encoder.gem_np(b_np)], 1).astype(np.float32))
        avgs.append(a_np.mean((2, 3)).astype(np.float32))
        if is_cat:
            maps.append(np.concatenate([a_np, b_np], 1).astype(np.float16))
        rows_img += [i] * len(x)
        rows_kind += kinds
        infos += info
        if progress is not None:
            progress(i + 1, len(images), time.monotonic() - t0)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_maps = np.concatenate(maps) if maps else np.zeros((0, 2560, 7, 7), np.float16)
    np.save(out_dir / "maps.npy", all_maps)
    kind = np.array(rows_kind)
    map_row = np.full(len(kind), -1, np.int64)
    is_cat_row = np.array([catalog[i] for i in rows_img], bool)
    map_row[is_cat_row] = np.arange(int(is_cat_row.sum()))
    np.savez(out_dir / "meta.npz", img=np.array(rows_img, np.int64), kind=kind,
             gem=np.concatenate(gems), avg_mnv2=np.concatenate(avgs),
             box_info=np.array(infos, np.float32), map_row=map_row)


def load(out_dir: Path) -> SetFeatures:
    z = np.load(out_dir / "meta.npz")
    idx = json.loads((out_dir / "images.json").read_text())
    return SetFeatures(idx["images"], idx["labels"], idx["splits"], z["img"], z["kind"], z["gem"],
                       z["avg_mnv2"], z["box_info"], np.load(out_dir / "maps.npy", mmap_mode="r"),
                       z["map_row"])


def cached(name: str, images: Sequence[Path], labels: Sequence[str], splits: Sequence[str],
           detector: Path, query_detector: Path | None, cache_root: Path) -> SetFeatures:
    """Features of a labeled set, extracted once into cache_root/name (keyed by images + detectors)."""
    import hashlib

    spec = [CACHE_VERSION, [str(p) for p in images], list(splits),
            _file_key(detector), _file_key(query_detector)]
    key = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]
    d = cache_root / f"{name}-{key}"
    if not (d / "images.json").exists():
        t = time.monotonic()

        def say(i: int, n: int, s: float) -> None:
            if i % 50 == 0 or i == n:
                print(f"  {name}: {i}/{n} images, {s:.0f}s, ~{s / i * (n - i):.0f}s left", flush=True)

        extract(images, [s == "catalog" for s in splits], detector, query_detector, d, say)
        (d / "images.json").write_text(json.dumps({"images": [str(p) for p in images], "labels": list(labels),
                                                   "splits": list(splits),
                                                   "seconds": time.monotonic() - t}))
    return load(d)


def _file_key(p: Path | None) -> str:
    if p is None:
        return ""
    st = p.stat()
    return f"{p.name}:{st.st_size}:{int(st.st_mtime)}"
