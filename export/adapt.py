"""`vsearch adapt`: fit the encoder's projection head to one catalog (no labels), export a new model.

    python -m export.adapt --manifest M | --folder D  --out DIR [--steps N] [--max-photos N]

1. catalog photos: a manifest in the shared format (image paths relative to it; only `split=catalog`
   rows when it has a split column; labels are never read) or every image under a folder; at most
   --max-photos, evenly spaced (the head trains a fixed number of steps, so more photos only cost
   feature time);
2. detect (FP32 catalog-side detector, as indexing does) and run both backbones on each photo and
   its objects (export/features.py);
3. continue training the shipped self-supervised head (export/head.py) on those photos;
4. export FP32 ONNX (same graph as the shipped encoder, new projection, new model version), check
   torch-vs-ONNX parity, quantise to INT8 with the shipped recipe and gate it (mean cosine to FP32
   >= 0.98 on the catalog's photos; there are no labels for an mAP gate), write manifest.json with
   the detectors copied from the base artifacts;
5. print the commands that serve it and cut the live catalog over to it (`vsearch cutover run`).
Timings per stage and an extrapolation to 10k photos go to DIR/adapt.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from export import crossset, encoder, head, manifest, metadata
from export.data import set_hash
from export.env import ARTIFACTS
from export.features import extract, load
from visual_search import contract as C

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MAX_PHOTOS = 1000  # the head's integral images take ~2 MB per photo in RAM
N_CALIB = 128
N_GATE = 200


def catalog_photos(manifest_path: Path | None, folder: Path | None) -> list[Path]:
    """Catalog photo paths (sorted / manifest order); raises SystemExit with a readable message."""
    if manifest_path is not None:
        if not manifest_path.is_file():
            raise SystemExit(f"manifest not found: {manifest_path}")
        with manifest_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if "image" not in (reader.fieldnames or []):
                raise SystemExit(f"{manifest_path}: needs an 'image' column (shared manifest format)")
            has_split = "split" in (reader.fieldnames or [])
            paths = [manifest_path.parent / r["image"] for r in reader
                     if not has_split or r["split"].strip() == "catalog"]
    elif folder is not None:
        if not folder.is_dir():
            raise SystemExit(f"folder not found: {folder}")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXT)
    else:
        raise SystemExit("give --manifest or --folder")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} catalog photos missing, e.g. {missing[0]}")
    if len(paths) < 2:
        raise SystemExit(f"need at least 2 catalog photos, got {len(paths)}")
    return paths


def evenly(paths: list[Path], n: int) -> list[Path]:
    if len(paths) <= n:
        return paths
    idx = np.linspace(0, len(paths) - 1, num=n).round().astype(int)
    return [paths[i] for i in sorted(set(idx.tolist()))]


class Progress:
    """One line per stage with elapsed time and an estimate of what is left."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, stage: str, done: int, total: int, elapsed: float) -> None:
        left = elapsed / max(done, 1) * (total - done)
        print(f"[{time.monotonic() - self.t0:6.0f}s] {stage}: {done}/{total}, ~{left:.0f}s left", flush=True)


def _export(model: crossset.Model, out: Path, base_meta: dict[str, str], photos: list[Path],
            source: str) -> tuple[dict[str, str], Any]:
    import torch

    from export.build import HEAD, _check_encoder_parity

    torch.set_num_threads(2)
    version = encoder.model_version(HEAD, encoder.weights_sha256(), model.proj, model.scales, trained=True,
                                    per_block=model.per_block)
    net = encoder.Encoder(encoder.backbone(model.scales), HEAD, model.proj,
                          block=encoder.BLOCK if model.per_block else None)
    dst = out / "encoder_fp32.onnx"
    encoder.export_onnx(net, dst)
    meta = dict(base_meta)
    meta.update({
        "model_version": version, "embedding_model_version": version, "precision": "fp32",
        "export_date": metadata.export_date(), "adapted_from": base_meta.get("model_version", ""),
        "projection": f"linear {C.EMBEDDING_DIM}: the base model's head trained further on this catalog "
                      f"({head.RECIPE}; {model.recipe}), then L2",
        "projection_sha256": model.proj.digest(),
        "projection_fit_set": f"{len(photos)} catalog photos of {source} and their FP32 detections "
                              "(no labels)",
        "projection_fit_set_sha256": set_hash_any(photos),
    })
    metadata.stamp(dst, meta)
    _check_encoder_parity(net, dst, photos[:8])
    return meta, net


def set_hash_any(paths: list[Path]) -> str:
    """set_hash for photos anywhere (shared data or not): relative paths where possible."""
    try:
        return set_hash(paths)
    except ValueError:
        import hashlib

        from export.env import sha256_file

        h = hashlib.sha256()
        for p in sorted(paths, key=str):
            h.update(f"{p.name}\0{sha256_file(p)}\n".encode())
        return h.hexdigest()


def _int8(out: Path, meta: dict[str, str], calib: list[Path], gate_photos: list[Path]) -> dict[str, Any]:
    from export import gates, quantize

    src, dst = out / "encoder_fp32.onnx", out / "encoder_int8.onnx"
    from export.data import encoder_batches

    b = min(16, len(calib))  # equal batches: percentile calibration stacks them
    calib = calib[: len(calib) // b * b]
    quantize.quantize(src, dst, C.ENCODER_INPUT_NAME, list(encoder_batches(calib, batch=b)),
                      quantize.ENCODER_RECIPE)
    m8 = dict(meta)
    m8.update(precision="int8", quantization=quantize.ENCODER_RECIPE.describe(),
              model_version=meta["model_version"] + "-int8",
              embedding_model_version=meta["model_version"] + "-int8",
              calibration_set=f"{len(calib)} evenly spaced photos of the adapted catalog",
              calibration_set_sha256=set_hash_any(calib))
    metadata.stamp(dst, m8)
    s32, s8 = gates.session(src), gates.session(dst)
    e32, e8 = gates.embed(s32, gate_photos), gates.embed(s8, gate_photos)
    cos = (e32 * e8).sum(1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e8, axis=1)
    return {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
            "images": len(gate_photos), "gate_mean_ge": gates.COS_GATE,
            "pass": bool(cos.mean() >= gates.COS_GATE),
            "note": "no labels: the mAP gate of export/gates.py cannot run on a user's catalog"}


def adapt_catalog(photos: list[Path], out: Path, base_dir: Path, steps: int, source: str,
                  int8: bool = True) -> dict[str, Any]:
    """The whole adapt pipeline; returns the report also written to out/adapt.json."""
    prog = Progress()
    timing: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    base_man = json.loads((base_dir / "manifest.json").read_text())
    base = crossset.shipped_model(base_dir / "encoder_fp32.onnx")
    base_meta = metadata.read(base_dir / "encoder_fp32.onnx")
    t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vsearch-adapt-") as tmp:
        extract(photos, [True] * len(photos), base_dir / "detector_fp32.onnx", None, Path(tmp),
                lambda i, n, s: prog("detect + backbone features", i, n, s)
                if i % 25 == 0 or i == n else None)
        (Path(tmp) / "images.json").write_text(json.dumps(
            {"images": [str(p) for p in photos], "labels": [""] * len(photos),
             "splits": ["catalog"] * len(photos)}))
        feats = load(Path(tmp))
        timing["features_s"] = round(time.monotonic() - t, 1)
        entries = int((feats.map_row >= 0).sum())
        t = time.monotonic()
        t_train = time.monotonic()
        adapted = crossset.adapt(base, feats, steps, progress=lambda i, n: prog(
            "train head", i, n, time.monotonic() - t_train) if i % 25 == 0 or i == n else None)
        timing["train_s"] = round(time.monotonic() - t, 1)
        del feats
    t = time.monotonic()
    meta, _ = _export(adapted, out, base_meta, photos, source)
    timing["export_fp32_s"] = round(time.monotonic() - t, 1)
    files = {k: v["file"] for k, v in base_man["artifacts"].items() if v["role"] == "detector"}
    for f in files.values():
        if not (out / f).exists():
            shutil.copy2(base_dir / f, out / f)
    files["encoder_fp32"] = "encoder_fp32.onnx"
    precision = dict(base_man.get("default_precision", {}))
    precision["encoder"] = "fp32"
    gate: dict[str, Any] = {"skipped": True}
    if int8:
        print(f"[{time.monotonic() - prog.t0:6.0f}s] INT8: calibrating + gating ...", flush=True)
        t = time.monotonic()
        gate = _int8(out, meta, evenly(photos, N_CALIB), evenly(photos, N_GATE))
        timing["int8_and_gate_s"] = round(time.monotonic() - t, 1)
        files["encoder_int8"] = "encoder_int8.onnx"
        precision["encoder"] = "int8" if gate["pass"] else "fp32"
    man = manifest.write(out, files, precision)
    served = man["encoder_model_version"][precision["encoder"]]
    per_photo = timing["features_s"] / len(photos)
    fixed = timing["train_s"] + timing["export_fp32_s"] + timing.get("int8_and_gate_s", 0.0)
    n10k = min(10_000, MAX_PHOTOS)
    rep = {
        "command": "vsearch adapt", "source": source, "photos": len(photos), "catalog_entries": entries,
        "steps": steps, "base_model_version": base_meta.get("model_version", ""),
        "model_version": meta["model_version"], "served_model_version": served,
        "default_precision": precision, "int8_gate": gate, "timing": timing,
        "seconds": round(time.monotonic() - prog.t0, 1),
        "extrapolation_10k_photos": {
            "method": "features scale with photos (per-photo time measured here); training, export and "
                      "INT8 are fixed-size (steps, calibration set); adapt uses at most "
                      f"{MAX_PHOTOS} photos by default",
            "seconds_per_photo_features": round(per_photo, 3),
            "fixed_seconds": round(fixed, 1),
            "estimate_s_default_cap": round(per_photo * n10k + fixed, 0),
            "estimate_s_all_10k_photos": round(per_photo * 10_000 + fixed, 0),
        },
        "hardware": {"machine": platform.machine(), "cpus": crossset._cpus(), "loadavg": crossset._loadavg()},
    }
    (out / "adapt.json").write_text(json.dumps(rep, indent=1) + "\n")
    return rep


def next_steps(out: Path, rep: dict[str, Any]) -> str:
    p = rep["default_precision"]["encoder"]
    v = rep["served_model_version"]
    return "\n".join([
        f"adapted model {v} ({p}) in {out}; serve it and cut over:",
        f"  vsearch triton serve --precision {p} --detector {out}/detector_fp32.onnx "
        f"--encoder {out}/encoder_{p}.onnx --run-dir run/triton-adapted --grpc-port 8101 "
        "--http-port 8100 --metrics-port 8102     # a second tritonserver",
        f"  vsearch shard --model-version {v} ...                 # empty new shards, same count",
        "  vsearch cutover run --admin A --catalog <catalog manifest/folder> --new-shards 'h:p;h:p' "
        "--new-triton T --probes probes.json --gateway G",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vsearch adapt", description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="catalog manifest.csv (shared format; labels ignored)")
    src.add_argument("--folder", type=Path, help="folder of catalog photos (searched recursively)")
    ap.add_argument("--out", type=Path, default=Path("run/adapted-model"))
    ap.add_argument("--steps", type=int, default=head.STEPS, help="head training steps")
    ap.add_argument("--max-photos", type=int, default=MAX_PHOTOS, help="photos used (evenly spaced)")
    ap.add_argument("--base", type=Path, default=ARTIFACTS, help="model directory adapted from")
    ap.add_argument("--skip-int8", action="store_true", help="FP32 only (faster)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.max_photos < 2:
        raise SystemExit("--steps must be >= 1 and --max-photos >= 2")
    photos = catalog_photos(args.manifest, args.folder)
    use = evenly(photos, args.max_photos)
    src_name = str(args.manifest or args.folder)
    est = len(use) * 1.0 + 60
    print(f"adapting to {len(use)} of {len(photos)} catalog photos from {src_name} "
          f"(first estimate ~{est:.0f}s; refined as it runs)", flush=True)
    rep = adapt_catalog(use, args.out, args.base, args.steps, src_name, not args.skip_int8)
    print(json.dumps({k: rep[k] for k in ("model_version", "default_precision", "int8_gate", "timing")}))
    print(next_steps(args.out, rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
