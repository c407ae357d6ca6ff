"""`vsearch bench detector-size`: what a smaller detector input costs a photo query, measured.

The detector is the CPU bottleneck of a photo query. Catalog photos are indexed at the contract's
640 letterbox; this benchmark asks what the *query* side loses at a smaller letterbox (FP32
detectors exported at each side by `python -m export.detector --sizes ... --out DIR`). Per dev set,
on its query photos, for each side: detector time per photo (1 onnxruntime thread, as one Triton
instance runs it), box recall against 640 (same class, IoU >= 0.5), agreement of the default
(most salient) box with 640's (IoU >= 0.7, or both none), and the retrieval mAP of default-box
queries against the same catalog embedded at 640 (in-process, exact), next to 640 in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from visual_search.bench.report import write_report
from visual_search.eval.dataset import DEV_SETS as SETS
from visual_search.eval.dataset import SHARED_DATA

REPO_ROOT = Path(__file__).resolve().parents[2]
BOX_IOU, DEFAULT_IOU = 0.5, 0.7


def _box_recall(ref: Any, got: Any) -> tuple[int, int]:
    """(matched, total) of the reference detections found again (same class, IoU >= BOX_IOU)."""
    from visual_search.detection import iou_one_to_many

    matched = 0
    for b, c in zip(ref.boxes, ref.classes, strict=True):
        same = got.boxes[got.classes == c]
        if len(same) and float(iou_one_to_many(b, same).max()) >= BOX_IOU:
            matched += 1
    return matched, len(ref)


def _default_agrees(ref: Any, got: Any, w: int, h: int) -> bool:
    from visual_search import preprocess as P
    from visual_search.detection import iou_one_to_many

    i = P.default_box_index(ref.boxes, ref.scores, w, h)
    j = P.default_box_index(got.boxes, got.scores, w, h)
    if i < 0 or j < 0:
        return i == j
    return float(iou_one_to_many(ref.boxes[i], got.boxes[j : j + 1])[0]) >= DEFAULT_IOU


def _map(queries: np.ndarray, q_labels: list[str], catalog: Any, c_labels: list[str]) -> float:
    from visual_search.eval import inprocess as I
    from visual_search.eval.metrics import average_precision

    ranked = I.rank_items(queries, catalog, len(c_labels), len(c_labels))
    aps = []
    for row, label in zip(ranked, q_labels, strict=True):
        aps.append(average_precision([c_labels[i] for i in row], label, c_labels.count(label)))
    return round(float(np.mean(aps)), 4)


def measure_set(manifest: Path, detectors: dict[int, Path], encoder: Path, limit: int) -> dict[str, Any]:
    from visual_search import preprocess as P
    from visual_search.eval import inprocess as I
    from visual_search.eval.dataset import load_manifest, split
    from visual_search.reference import ReferencePipeline

    cat_rows, q_rows = split(load_manifest(manifest))
    if limit:
        q_rows = q_rows[:limit]
    ref_size = max(detectors)
    pipes = {s: ReferencePipeline(p, encoder, threads=1, detector_size=s) for s, p in detectors.items()}
    catalog = I.catalog_entries(I.embed_images(pipes[ref_size], cat_rows), objects=True)
    c_labels = [r.label for r in cat_rows]
    images = [P.decode_image(r.path.read_bytes()) for r in q_rows]
    ref_dets = [pipes[ref_size].detect(img) for img in images]
    out: dict[str, Any] = {"queries": len(q_rows), "catalog_items": len(cat_rows), "by_size": {}}
    whole = np.vstack([pipes[ref_size].embed(img).astype(np.float32) for img in images])
    out["whole_image_query_map"] = _map(whole, [r.label for r in q_rows], catalog, c_labels)
    for size, pipe in sorted(pipes.items()):
        times, vecs, matched, total, agree = [], [], 0, 0, 0
        for img, ref in zip(images, ref_dets, strict=True):
            t0 = time.perf_counter()
            d = pipe.detect(img)
            times.append((time.perf_counter() - t0) * 1e3)
            m, t = _box_recall(ref, d)
            matched, total = matched + m, total + t
            h, w = img.shape[:2]
            agree += _default_agrees(ref, d, w, h)
            i = P.default_box_index(d.boxes, d.scores, w, h)
            vecs.append(pipe.embed(img, None if i < 0 else d.boxes[i]).astype(np.float32))
        out["by_size"][str(size)] = {
            "detector_ms_median": round(float(np.median(times)), 2),
            "detector_ms_mean": round(float(np.mean(times)), 2),
            "box_recall_vs_ref": round(matched / max(1, total), 4),
            "ref_boxes": total,
            "default_box_agreement": round(agree / len(images), 4),
            "default_box_query_map": _map(np.vstack(vecs), [r.label for r in q_rows], catalog, c_labels),
        }
        print(manifest.parent.name, size, json.dumps(out["by_size"][str(size)]), flush=True)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visual_search import models
    from visual_search.bench.report import hardware

    detectors = {s: args.models_dir / f"detector_{s}.onnx" for s in args.sizes}
    missing = [str(p) for p in detectors.values() if not p.exists()]
    if missing:
        raise SystemExit(f"missing {missing}: run `python -m export.detector --sizes ... --out DIR` first")
    encoder = models.artifact_path("encoder", args.encoder_precision)
    data = Path(args.data)
    results = {
        name: measure_set(data / name / "manifest.csv", detectors, encoder, args.limit) for name in args.sets
    }
    return {
        "benchmark": "detector-size",
        "what": __doc__.strip().splitlines()[0],
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
        "hardware": hardware(),
        "reference_size": max(args.sizes),
        "encoder": encoder.name,
        "sets": results,
    }


def _main(args: argparse.Namespace) -> int:
    return write_report(run(args), args.out)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("detector-size", help="query-side detector input size: speed vs boxes vs mAP")
    p.add_argument("--models-dir", type=Path, default=REPO_ROOT / ".cache" / "detector_sizes")
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 416, 480, 640])
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--data", default=str(SHARED_DATA))
    p.add_argument("--encoder-precision", default="int8", choices=("fp32", "int8"))
    p.add_argument("--limit", type=int, default=0, help="query photos per set (0 = all)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "detector_size.json")
    p.set_defaults(func=_main)
