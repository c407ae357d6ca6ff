"""INT8 gates: INT8 vs FP32 on real images, written to benchmarks/int8_gates.json.

    python -m export.gates          (export venv or the serving venv: needs only onnxruntime)

- encoder: mean cosine(INT8, FP32) >= 0.98 over every dev-set image; retrieval mAP of INT8
  within 1 point of FP32 on each set (exact cosine, whole images, catalog/query splits);
- detector: >= 95% of FP32 detections (conf > 0.25, after NMS) have a same-class INT8 box with
  IoU >= 0.9, on held-out query images + bus/zidane (calibration used catalog images only).
Exit status 1 when a gate fails.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export import nms
from export.data import detector_inputs, encoder_batches, load_set
from export.env import ARTIFACTS, BENCHMARKS, DATASETS, REPO
from export.retrieval import mean_ap
from visual_search import contract as C
from visual_search.reference import make_session

COS_GATE, MAP_GATE, IOU_GATE, MATCH_GATE = 0.98, 0.01, 0.9, 0.95
# 1280-d avg-pool MobileNetV2, whole images: environment.md (dogs, grocery), benchmarks/eval.json (clothing)
BASELINE = {"oxford_pets_dogs": 0.686, "grocery_packages_dev": 0.297, "clothing10_cc0": 0.406}


def session(path: Path) -> ort.InferenceSession:
    return make_session(path, 2, flush_denormals=True)


def embed(sess: ort.InferenceSession, paths: list[Path]) -> np.ndarray:
    return np.concatenate([sess.run(None, {C.ENCODER_INPUT_NAME: b})[0]
                           for b in encoder_batches(paths, batch=16)]).astype(np.float32)


def encoder_gates(fp32: Path, int8: Path) -> dict[str, Any]:
    s32, s8 = session(fp32), session(int8)
    out: dict[str, Any] = {"sets": {}}
    cos_all = []
    for name in DATASETS:
        items = load_set(name)
        paths, labels, splits = [i.path for i in items], [i.label for i in items], [i.split for i in items]
        e32, e8 = embed(s32, paths), embed(s8, paths)
        cos_all.append((e32 * e8).sum(1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e8, axis=1))
        m32, m8 = mean_ap(e32, labels, splits), mean_ap(e8, labels, splits)
        delta = round(m8["mAP"] - m32["mAP"], 4)
        out["sets"][name] = {"fp32": m32, "int8": m8, "mAP_delta": delta,
                             "baseline_mAP_1280d_avg": BASELINE[name],
                             "pass": bool(abs(delta) <= MAP_GATE)}
    cos = np.concatenate(cos_all)
    out["cosine"] = {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5),
                     "images": int(cos.size), "gate_mean_ge": COS_GATE, "pass": bool(cos.mean() >= COS_GATE)}
    out["pass"] = out["cosine"]["pass"] and all(s["pass"] for s in out["sets"].values())
    return out


def detector_photos() -> list[Path]:
    photos = [REPO / "tests" / "data" / n for n in ("bus.jpg", "zidane.jpg")]
    return photos + [i.path for n in DATASETS for i in load_set(n) if i.split == "query"]


def detector_gates(fp32: Path, int8: Path) -> dict[str, Any]:
    s32, s8 = session(fp32), session(int8)
    matched = total = 0
    ious: list[float] = []
    photos = detector_photos()
    for i in range(0, len(photos), 8):
        x, _ = detector_inputs(photos[i : i + 8])
        o32 = s32.run(None, {C.DETECTOR_INPUT_NAME: x})[0]
        o8 = s8.run(None, {C.DETECTOR_INPUT_NAME: x})[0]
        for a, b in zip(o32, o8, strict=True):
            rb, _, rc = nms.postprocess(a)
            gb, _, gc = nms.postprocess(b)
            m, t, v = nms.match_rate(rb, rc, gb, gc, IOU_GATE)
            matched, total = matched + m, total + t
            ious += v
    rate = matched / max(total, 1)
    return {"images": len(photos), "fp32_detections": total, "matched_iou_ge_0.9": matched,
            "match_rate": round(rate, 4), "median_iou": round(float(np.median(ious)), 4) if ious else None,
            "gate_match_rate_ge": MATCH_GATE, "pass": bool(rate >= MATCH_GATE)}


def latency(path: Path, input_name: str, shape: tuple[int, ...], runs: int = 10) -> float:
    """Median batch-1 latency in ms (2 intra-op threads, denormals as zero)."""
    sess, x = session(path), np.random.default_rng(0).random(shape, np.float32)
    sess.run(None, {input_name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {input_name: x})
        times.append(time.perf_counter() - t)
    return round(1000 * float(np.median(times)), 1)


def run(root: Path = ARTIFACTS) -> dict[str, Any]:
    s = C.ENCODER_INPUT_SIZE
    d = C.DETECTOR_INPUT_SIZE
    rep: dict[str, Any] = {
        "encoder": encoder_gates(root / "encoder_fp32.onnx", root / "encoder_int8.onnx"),
        "detector": detector_gates(root / "detector_fp32.onnx", root / "detector_int8.onnx"),
        "latency_ms_batch1": {
            f"{m}_{p}": latency(root / f"{m}_{p}.onnx", n, (1, 3, z, z))
            for m, n, z in (("encoder", C.ENCODER_INPUT_NAME, s), ("detector", C.DETECTOR_INPUT_NAME, d))
            for p in ("fp32", "int8")},
        "host": f"{platform.machine()} {platform.processor() or ''} onnxruntime {ort.__version__}".strip(),
    }
    rep["pass"] = rep["encoder"]["pass"] and rep["detector"]["pass"]
    return rep


def default_precision(rep: dict[str, Any]) -> dict[str, str]:
    """INT8 for a role only where its gate passed."""
    return {role: "int8" if rep[role]["pass"] else "fp32" for role in ("detector", "encoder")}


def write_report() -> dict[str, Any]:
    rep = run()
    try:
        man = json.loads((ARTIFACTS / "manifest.json").read_text())
        rep["artifacts_sha256"] = {k: v["sha256"] for k, v in man["artifacts"].items()}
    except (OSError, KeyError, ValueError):
        pass
    BENCHMARKS.mkdir(exist_ok=True)
    (BENCHMARKS / "int8_gates.json").write_text(json.dumps(rep, indent=2) + "\n")
    print(json.dumps(rep, indent=2))
    return rep


def main() -> int:
    return 0 if write_report()["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
