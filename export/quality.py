"""Retrieval-quality experiments on the encoder head (pooling / projection), in-process FP32.

    python -m export.quality cache      # detect + backbone feature maps of every entry (once)
    python -m export.quality eval       # every head variant, four whole/object configs, both sets

Backbone feature maps are computed once for every entry the in-process evaluation uses (each
image's whole-image input + one squash-resized crop per FP32 detection, exactly as
visual_search.eval.inprocess), so head variants are cheap numpy re-combinations. Anything fitted
(PCA) is fitted on catalog-split images only; queries are only ever embedded and ranked.
AP is truncated at k=100 here (screening: compare variants with each other, not with the
full-length `vsearch eval`). Measured numbers: benchmarks/quality_experiments.json.
The cache also feeds the trained projection head (export/head.py via catalog_entries()).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from export.data import decode, load_set
from export.encoder import gem_np
from export.env import ARTIFACTS, DATASETS, REPO
from visual_search import preprocess as P

CACHE = REPO / ".cache" / "quality_fmaps.npz"
LAYERS = {"b13": 13, "b16": 16, "b17": 17, "last": 18}  # mobilenet_v2.features indices
LITE0 = "lite0"  # EfficientNet-Lite0's last feature map (the encoder's second backbone)


def build_cache() -> None:
    import torch

    from export import encoder
    from visual_search.reference import ReferencePipeline

    torch.set_num_threads(2)
    pipe = ReferencePipeline(ARTIFACTS / "detector_fp32.onnx", ARTIFACTS / "encoder_fp32.onnx", threads=2)
    net = encoder.backbone()
    feats: dict[str, list[np.ndarray]] = {k: [] for k in (*LAYERS, LITE0)}
    rows: list[tuple[str, int, str, str, int, int]] = []  # set, image idx, label, split, is_whole, salient
    t0 = time.time()
    for name in DATASETS:
        for i, it in enumerate(load_set(name)):
            img = decode(it.path)
            d = pipe.detect(img)
            sal = P.salience(d.boxes, d.scores, img.shape[1], img.shape[0])
            best = int(np.argmax(sal)) if len(d) else -1
            x = torch.from_numpy(P.encoder_batch(img, d.boxes))
            with torch.no_grad():
                feats[LITE0].append(net.lite0_maps(x).numpy().astype(np.float16))
                h = x
                for j, layer in enumerate(net.mnv2):
                    h = layer(h)
                    for k, idx in LAYERS.items():
                        if idx == j:
                            feats[k].append(h.numpy().astype(np.float16))
            for j in range(len(x)):
                whole = int(j == len(x) - 1)
                rows.append((name, i, it.label, it.split, whole, int(j == best)))
        print(f"{name}: {time.time() - t0:.0f}s, {len(rows)} entries", flush=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, rows=np.array(rows, dtype=object),
             **{k: np.concatenate(v) for k, v in feats.items()})


# ---------------------------------------------------------------- head variants (numpy, float32)

def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def rmac_regions(h: int, w: int, levels: int) -> list[tuple[int, int, int, int]]:
    """R-MAC square regions (Tolias et al.): level l has l (+1 along the long side) regions of
    side 2*min(h,w)/(l+1), uniformly spaced; level 1 = the largest square."""
    out = []
    m = min(h, w)
    for lev in range(1, levels + 1):
        side = max(1, int(round(2 * m / (lev + 1)))) if lev > 1 else m
        ny = lev + (1 if h > w and lev > 1 else 0)
        nx = lev + (1 if w > h and lev > 1 else 0)
        ys = np.linspace(0, h - side, ny).round().astype(int) if ny > 1 else [(h - side) // 2]
        xs = np.linspace(0, w - side, nx).round().astype(int) if nx > 1 else [(w - side) // 2]
        out += [(int(y), int(x), side, side) for y in ys for x in xs]
    return out


def regional(f: np.ndarray, levels: int, p: float, whole: bool = True) -> np.ndarray:
    """Sum of L2-normalised GeM over R-MAC regions (+ the whole map), then L2."""
    regs = rmac_regions(f.shape[2], f.shape[3], levels)
    acc: np.ndarray = l2n(gem_np(f, p)) if whole else np.zeros((f.shape[0], f.shape[1]), np.float64)
    for y, x, sh, sw in regs:
        acc = acc + l2n(gem_np(f[:, :, y : y + sh, x : x + sw], p))
    return l2n(acc)


def fit_pca(x: np.ndarray, dim: int = 256) -> tuple[np.ndarray, np.ndarray]:
    f = l2n(x.astype(np.float64))
    mean = f.mean(0)
    _, _, vt = np.linalg.svd(f - mean, full_matrices=False)
    return mean, vt[:dim]


def pca_apply(x: np.ndarray, mean: np.ndarray, comps: np.ndarray) -> np.ndarray:
    return l2n((l2n(x.astype(np.float64)) - mean) @ comps.T).astype(np.float32)


def evaluate_sets(vec: np.ndarray, rows: np.ndarray, k: int = 100) -> dict[str, Any]:
    """The four inprocess configurations per set, exactly as visual_search.eval.cli."""
    from visual_search.eval import inprocess as I
    from visual_search.eval import metrics as M

    out: dict[str, Any] = {}
    for name in DATASETS:
        sel = np.flatnonzero(rows[:, 0] == name)
        per_img: dict[int, dict[str, Any]] = {}
        for e in sel:
            _, idx, label, split, whole, sal = rows[e]
            d = per_img.setdefault(int(idx), {"label": label, "split": split, "obj": [], "whole": None,
                                              "sal": -1})
            if int(whole):
                d["whole"] = vec[e]
            else:
                if int(sal):
                    d["sal"] = len(d["obj"])
                d["obj"].append(vec[e])
        dim = vec.shape[1]
        embs: dict[str, list[Any]] = {s: [] for s in ("catalog", "query")}
        labels: dict[str, list[Any]] = {s: [] for s in ("catalog", "query")}
        for i in sorted(per_img):
            d = per_img[i]
            objs = np.stack(d["obj"]) if d["obj"] else np.zeros((0, dim), np.float32)
            embs[d["split"]].append(I.ImageEmbeddings(d["whole"], objs, d["sal"]))
            labels[d["split"]].append(d["label"])
        res = {}
        for cat_obj, q_obj in ((False, False), (True, False), (True, True), (False, True)):
            cset = I.catalog_entries(embs["catalog"], cat_obj)
            ranked = I.rank_items(I.query_vectors(embs["query"], q_obj), cset, len(embs["catalog"]), k)
            rep = M.evaluate([[labels["catalog"][j] for j in r] for r in ranked], labels["query"],
                             labels["catalog"])
            key = (f"catalog={'objects+whole' if cat_obj else 'whole'} "
                   f"query={'salient-object' if q_obj else 'whole'}")
            res[key] = {m: round(rep.metrics[m], 4) for m in ("map", "hit@1", "ndcg@10")}
        out[name] = res
    return out


def load_cache() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    z = np.load(CACHE, allow_pickle=True)
    return z["rows"], {k: z[k] for k in (*LAYERS, LITE0)}


def variants(fm: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pre-projection descriptors of every head variant."""
    last = fm["last"].astype(np.float32)
    v: dict[str, np.ndarray] = {}
    v["gem3"] = gem_np(last, 3.0)
    v["avg"] = last.mean((2, 3))
    v["gem4"] = gem_np(last, 4.0)
    v["mac"] = gem_np(last, np.inf)
    for lev in (2, 3):
        v[f"rgem3_L{lev}"] = regional(last, lev, 3.0)
        v[f"rmac_L{lev}"] = regional(last, lev, np.inf)
    g = {k: l2n(gem_np(fm[k].astype(np.float32), 3.0)) for k in ("b13", "b16", "b17")}
    base = l2n(v["gem3"])
    for w in (0.5, 1.0):
        v[f"gem3+b17x{w}"] = np.concatenate([base, w * g["b17"]], 1)
        v[f"gem3+b16x{w}"] = np.concatenate([base, w * g["b16"]], 1)
        v[f"gem3+b13x{w}"] = np.concatenate([base, w * g["b13"]], 1)
        v[f"gem3+b13+b16+b17x{w}"] = np.concatenate([base, w * g["b13"], w * g["b16"], w * g["b17"]], 1)
    return v


def run_eval(names: list[str] | None = None) -> dict[str, Any]:
    rows, fm = load_cache()
    cat_whole = (rows[:, 3] == "catalog") & (rows[:, 4].astype(int) == 1)
    cat_all = rows[:, 3] == "catalog"
    results: dict[str, Any] = {}
    for name, desc in variants(fm).items():
        if names and name not in names:
            continue
        fits = (("catalog whole images", cat_whole), ("catalog whole images + catalog detections", cat_all))
        for fit_name, fit_mask in fits:
            mean, comps = fit_pca(desc[fit_mask])
            vec = pca_apply(desc, mean, comps)
            key = f"{name} | PCA256 fit on {fit_name}"
            results[key] = evaluate_sets(vec, rows)
            r = results[key]
            print(f"{key:70s} " + "  ".join(
                f"{s[:4]} ww {r[s]['catalog=whole query=whole']['map']:.3f} "
                f"oo {r[s]['catalog=objects+whole query=salient-object']['map']:.3f}/"
                f"{r[s]['catalog=objects+whole query=salient-object']['hit@1']:.2f}"
                for s in DATASETS), flush=True)
    return results


def catalog_entries(scales: tuple[float, float]) -> tuple[np.ndarray, list[list[int]]]:
    """Encoder feature maps (both backbones, scaled and concatenated as in encoder.Backbone) of
    catalog entries (whole photo + detections) and per-photo groups, from the cache (built here if
    missing or older than the two-backbone encoder; query rows are dropped)."""
    if not CACHE.exists() or LITE0 not in np.load(CACHE, allow_pickle=True).files:
        build_cache()
    rows, fm = load_cache()
    cat = np.flatnonzero(rows[:, 3] == "catalog")
    groups: dict[str, list[int]] = {}
    for j, e in enumerate(cat):
        groups.setdefault(f"{rows[e, 0]}/{rows[e, 1]}", []).append(j)
    maps = np.concatenate([fm["last"][cat].astype(np.float32) / scales[0],
                           fm[LITE0][cat].astype(np.float32) / scales[1]], 1)
    return maps, list(groups.values())


def main(argv: list[str] | None = None) -> int:
    cmd = (argv if argv is not None else sys.argv[1:]) or ["eval"]
    if cmd[0] == "cache":
        build_cache()
    else:
        run_eval()
    return 0


if __name__ == "__main__":
    sys.exit(main())
