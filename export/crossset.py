"""Leave-one-set-out retrieval quality: in-set vs cross-set vs catalog adaptation vs the baseline.

    python -m export.crossset [--out benchmarks/eval.json]      (run by `vsearch eval --protocol crossset`)

For each labeled set S of ../shared/data (three domains), the shipped recipe (export/build.py:
each backbone's GeM L2-normalised, uncentred PCA to EMBEDDING_DIM; the only thing fitted) is fitted
on catalog photos and their detected objects of:
- "in-set":    all sets, S included (what artifacts/models ships; optimistic for S);
- "cross-set": the other two sets only (what a customer's unseen catalog gets);
- "adapt":     the cross-set model, then `vsearch adapt`'s recipe on S's catalog photos (no labels,
               no queries): the projection trained self-supervised (export/head.py);
and scored on S's queries against S's catalog (catalog = whole photo + detected objects, item score
= best entry, exact cosine, as the shards answer). "shipped" is the artifacts/models encoder as it
is (its fit sets are listed on the row). Baseline in the same run: ImageNet MobileNetV2, global
average pool, whole images, exact cosine. FP32 in-process: the float16 ONNX output and INT8 / IVF-PQ
losses are measured by `vsearch eval` (served rows), not here.
Comparison rows, same run: "previous-recipe-*" = the encoder shipped before (median-norm backbone
scales, centred PCA, self-supervised head; fitted on the other two sets; then adapted); per-block
L2 GeM with nothing fitted (2560-d) and uncentred PCA to 256 / 512 (smaller embeddings).
Query strategies: the default box (most salient query-side detection, as served), the whole
image, and both (item score = max, or mean, of the two query vectors' scores). "chosen" picks, per
scored set, the strategy with the best mean cross-set mAP over the *other* sets' folds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export import head
from export.encoder import BLOCK, PER_BLOCK_TAG, Projection, fit_pca, fit_uncentered_pca, per_block_l2
from export.env import ARTIFACTS, DATASETS, REPO, SHARED
from export.features import SetFeatures, cached
from visual_search import contract as C
from visual_search.eval import metrics as M

SETS = ("oxford_pets_dogs", "grocery_packages_dev", "clothing10_cc0")
CACHE_ROOT = REPO / ".cache" / "crossset"
STRATEGIES = ("box", "whole", "max", "mean")
CANDIDATE_DIMS = (256, 512)  # smaller uncentered-PCA sizes than the shipped EMBEDDING_DIM
SHOWN = ("map", "hit@1", "ndcg@10", "mrr")


@dataclass
class Model:
    """Everything after the backbones: per-backbone scales (or per-block L2) and the 2560 -> D
    projection."""

    scales: tuple[float, float]
    proj: Projection
    fitted_on: list[str]
    recipe: str
    per_block: bool = False  # each backbone's GeM L2-normalised (scales are then 1)

    def vectors(self, f: SetFeatures, rows: np.ndarray) -> np.ndarray:
        g = per_block_l2(f.gem[rows]) if self.per_block else f.gem[rows] / self.channel_scale_inv()
        return self.proj.apply(g).astype(np.float32)

    def channel_scale_inv(self) -> np.ndarray:
        return np.repeat(np.asarray(self.scales, np.float32), 1280)

    def channel_scale(self) -> np.ndarray:
        return 1.0 / self.channel_scale_inv()


@dataclass
class FitFreeModel:
    """Per-block L2 GeM with nothing fitted (2560-d): the shipped recipe without its projection."""

    fitted_on: list[str]
    recipe: str

    def vectors(self, f: SetFeatures, rows: np.ndarray) -> np.ndarray:
        return per_block_l2(f.gem[rows])


def catalog_units(sets: dict[str, SetFeatures], names: list[str]) -> np.ndarray:
    """Per-block L2 descriptors of every catalog entry (photos and detected objects) of `names`."""
    return np.concatenate([per_block_l2(sets[n].gem[np.flatnonzero(sets[n].map_row >= 0)]) for n in names])


def fit_shipped(sets: dict[str, SetFeatures], names: list[str], dim: int = C.EMBEDDING_DIM) -> Model:
    """The shipped recipe (export/build.py) fitted on the catalog entries of `names` only (an
    uncentred PCA to `dim`: other sizes are the comparison rows)."""
    proj = fit_uncentered_pca(catalog_units(sets, names), dim)
    return Model((1.0, 1.0), proj, list(names), f"per-block L2 GeM + uncentered PCA {dim}", per_block=True)


def load_sets() -> dict[str, SetFeatures]:
    import csv

    out = {}
    det, qdet = ARTIFACTS / "detector_fp32.onnx", ARTIFACTS / "detector_query_fp32.onnx"
    for name in SETS:
        root = SHARED / "data" / name
        with open(root / "manifest.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        out[name] = cached(name, [root / r["image"] for r in rows], [r["label"] for r in rows],
                           [r["split"] for r in rows], det, qdet if qdet.exists() else None, CACHE_ROOT)
    return out


_WINDOWS: dict[int, head.WindowGeM] = {}


def windows(f: SetFeatures) -> head.WindowGeM:
    """The set's catalog maps as window-GeM integral images (built once per set)."""
    if id(f) not in _WINDOWS:
        _WINDOWS[id(f)] = head.WindowGeM([f.maps])
    return _WINDOWS[id(f)]


def _catalog_whole(f: SetFeatures) -> np.ndarray:
    return np.flatnonzero((f.kind == "whole") & (f.map_row >= 0))


PREVIOUS_DIM = 256  # the previous recipe's embedding size, as it shipped


def fit(sets: dict[str, SetFeatures], names: list[str], trained: bool = True,
        dim: int = PREVIOUS_DIM) -> Model:
    """The previous export recipe (scales + centred PCA + trained head) fitted on the catalog photos of
    `names` only."""
    whole = [sets[n].gem[_catalog_whole(sets[n])] for n in names]
    g = np.concatenate(whole)
    scales = (float(np.median(np.linalg.norm(g[:, :1280], axis=1))),
              float(np.median(np.linalg.norm(g[:, 1280:], axis=1))))
    inv = np.repeat(np.asarray(scales, np.float32), 1280)
    proj = fit_pca(g / inv, dim)
    if trained:
        groups: list[list[int]] = []
        off = 0
        for n in names:
            groups += [[off + j for j in grp] for grp in sets[n].catalog_groups()]
            off += len(sets[n].maps)
        proj = head.train(head.WindowGeM.concat([windows(sets[n]) for n in names]), groups, proj,
                          channel_scale=1.0 / inv)
    return Model(scales, proj, list(names), f"scales + PCA{' + head' if trained else ''}")


ADAPT_STEPS = head.STEPS


def adapt(base: Model, f: SetFeatures, steps: int = ADAPT_STEPS,
          progress: Callable[[int, int], None] | None = None) -> Model:
    """`vsearch adapt`'s recipe: the base model's head trained further on one catalog's photos and
    their detected objects (self-supervised; scales kept, so the backbone graph is unchanged)."""
    proj = head.train(windows(f), f.catalog_groups(), base.proj, steps=steps,
                      channel_scale=None if base.per_block else base.channel_scale(), progress=progress,
                      block=BLOCK if base.per_block else None)
    return Model(base.scales, proj, base.fitted_on + ["(adapted, unlabeled)"],
                 base.recipe + f" + adapt {steps}", base.per_block)


def shipped_model(path: Path | None = None) -> Model:
    """An exported FP32 encoder's scales and projection, read back from its ONNX (default: the
    shipped artifacts/models one)."""
    import onnx
    from onnx import numpy_helper

    from export.encoder import parse_scales

    m = onnx.load(str(path or ARTIFACTS / "encoder_fp32.onnx"))
    meta = {p.key: p.value for p in m.metadata_props}
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    dim = int(meta.get("embedding_dim", 256))
    mean = next((v for v in inits.values() if v.shape == (2560,) and v.dtype == np.float32),
                np.zeros(2560, np.float32))  # an all-zero mean (uncentred PCA) may be folded away
    comps = next(v for v in inits.values() if v.shape == (2560, dim))
    fitted = meta.get("projection_fit_sets", ",".join(DATASETS)).split(",")
    return Model(parse_scales(meta["backbone_scales"]),
                 Projection(mean.astype(np.float32), np.ascontiguousarray(comps.T).astype(np.float32)),
                 fitted, f"shipped {meta['model_version']}",
                 per_block=meta.get("normalisation", "") == PER_BLOCK_TAG)


def _item_scores(q: np.ndarray, cat: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    s = q @ cat.T
    out = np.full((len(q), n), -np.inf, np.float32)
    np.maximum.at(out.T, owner, s.T)
    return out


def _report(scores: np.ndarray, q_labels: list[str], c_labels: list[str]) -> M.Report:
    ranked = np.argsort(-scores, axis=1, kind="stable")
    return M.evaluate([[c_labels[j] for j in r] for r in ranked], q_labels, c_labels)


def query_scores(model: Model | FitFreeModel, f: SetFeatures,
                 catalog_objects: bool = True) -> dict[str, Any]:
    """Item scores [Q, N] per query strategy + labels, for one model on one set."""
    cat_imgs = [i for i, s in enumerate(f.splits) if s == "catalog"]
    q_imgs = [i for i, s in enumerate(f.splits) if s == "query"]
    pos = {img: k for k, img in enumerate(cat_imgs)}
    crow = np.flatnonzero((f.map_row >= 0) & ((f.kind == "whole") | catalog_objects))
    cvec = model.vectors(f, crow)
    owner = np.array([pos[int(f.img[r])] for r in crow])
    qpos = {img: k for k, img in enumerate(q_imgs)}
    out = {}
    for kind in ("whole", "box"):
        rows = np.flatnonzero((f.map_row < 0) & (f.kind == kind))
        rows = rows[np.argsort([qpos[int(f.img[r])] for r in rows])]
        out[kind] = _item_scores(model.vectors(f, rows), cvec, owner, len(cat_imgs))
    out["max"] = np.maximum(out["whole"], out["box"])
    out["mean"] = (out["whole"] + out["box"]) / 2
    return {"scores": out, "q_labels": [f.labels[i] for i in q_imgs],
            "c_labels": [f.labels[i] for i in cat_imgs]}


def baseline_report(f: SetFeatures) -> M.Report:
    """ImageNet MobileNetV2 avg-pooled 1280-d, whole images, exact cosine (environment.md's baseline)."""
    cat_imgs = [i for i, s in enumerate(f.splits) if s == "catalog"]
    q_imgs = [i for i, s in enumerate(f.splits) if s == "query"]
    whole = {int(f.img[r]): r for r in np.flatnonzero(f.kind == "whole")}

    def vec(imgs: list[int]) -> np.ndarray:
        v = f.avg_mnv2[[whole[i] for i in imgs]]
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return _report(vec(q_imgs) @ vec(cat_imgs).T, [f.labels[i] for i in q_imgs],
                   [f.labels[i] for i in cat_imgs])


def _row(dataset: str, protocol: str, model: Model | FitFreeModel | None, strategy: str, rep: M.Report,
         **extra: Any) -> dict[str, Any]:
    return {"dataset": dataset, "protocol": protocol, "config": f"{protocol} query={strategy}",
            "query_strategy": strategy, "catalog": "objects+whole", "path": "inprocess-exact-fp32-crossset",
            "fitted_on": model.fitted_on if model else [], "recipe": model.recipe if model else
            "ImageNet MobileNetV2 avg-pool 1280-d, whole image, exact cosine",
            "n_queries": rep.n_queries, "metrics": {k: round(v, 4) for k, v in rep.metrics.items()},
            **extra}


def run(out_path: Path | None, adapt_steps: int = ADAPT_STEPS) -> dict[str, Any]:
    t0 = time.monotonic()
    sets = load_sets()
    t_feat = time.monotonic() - t0
    rows: list[dict[str, Any]] = []
    timing: dict[str, float] = {"features_s": round(t_feat, 1)}
    shipped = shipped_model()
    t = time.monotonic()
    in_set = fit_shipped(sets, list(SETS))
    timing["fit_in_set_s"] = round(time.monotonic() - t, 1)
    cross_map: dict[str, dict[str, float]] = {}
    for name in SETS:
        f = sets[name]
        base = baseline_report(f)
        rows.append(_row(name, "baseline", None, "whole", base, catalog="whole"))
        others = [n for n in SETS if n != name]
        t = time.monotonic()
        cross = fit_shipped(sets, others)
        timing[f"fit_cross_{name}_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        adapted = adapt(cross, f, adapt_steps)
        timing[f"adapt_{name}_s"] = round(time.monotonic() - t, 1)
        prev = fit(sets, others)  # the previous recipe (scales + centred PCA + trained head)
        seen = name in shipped.fitted_on
        models: tuple[tuple[str, Model | FitFreeModel], ...] = (
            ("in-set", in_set), ("cross-set", cross), ("adapt", adapted),
            ("shipped-" + ("in-set" if seen else "cross-set"), shipped),
            ("previous-recipe-cross-set", prev), ("previous-recipe-adapt", adapt(prev, f, adapt_steps)),
            ("cross-set-fit-free-2560", FitFreeModel([], "per-block L2 GeM, 2560-d, nothing fitted")),
            *((f"cross-set-uncentered-pca-{d}", fit_shipped(sets, others, d)) for d in CANDIDATE_DIMS),
        )
        for proto, model in models:
            qs = query_scores(model, f)
            for strat in STRATEGIES:
                rep = _report(qs["scores"][strat], qs["q_labels"], qs["c_labels"])
                rows.append(_row(name, proto, model, strat, rep,
                                 delta_map_vs_baseline=round(rep.metrics["map"] - base.metrics["map"], 4)))
                if proto == "cross-set":
                    cross_map.setdefault(name, {})[strat] = rep.metrics["map"]
        print(f"{name}: done ({time.monotonic() - t0:.0f}s)", flush=True)
    # query strategy chosen without the scored set: best mean cross-set mAP over the other folds
    chosen: dict[str, str] = {}
    for name in SETS:
        others = [n for n in SETS if n != name]
        chosen[name] = max(STRATEGIES, key=lambda s: float(np.mean([cross_map[o][s] for o in others])))
    overall = max(STRATEGIES, key=lambda s: float(np.mean([cross_map[o][s] for o in SETS])))
    for name in SETS:
        for r in list(rows):
            if r["dataset"] == name and r["protocol"] in ("cross-set", "adapt") \
                    and r["query_strategy"] == chosen[name]:
                rows.append({**r, "protocol": r["protocol"] + "-chosen-strategy",
                             "config": f"{r['protocol']} query=chosen({chosen[name]}, "
                                       "picked on the other sets)"})
    res = {"command": "vsearch eval --protocol crossset (python -m export.crossset)",
           "arguments": {"adapt_steps": adapt_steps, "sets": list(SETS)},
           "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                        "cpus": _cpus(), "loadavg": _loadavg()},
           "protocol": __doc__, "query_strategy_chosen_per_set": chosen,
           "query_strategy_best_over_all_folds": overall, "timing": timing,
           "seconds": round(time.monotonic() - t0, 1), "results": rows}
    if out_path is not None:
        doc = json.loads(out_path.read_text()) if out_path.exists() else {}
        doc["crossset"] = res
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(doc, indent=1) + "\n")
    print_table(rows)
    print(f"query strategy chosen per set: {chosen}; best over all folds: {overall}")
    return res


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'dataset':<22} {'config':<58} " + " ".join(f"{s:>8}" for s in SHOWN) + "  d_mAP")
    for r in rows:
        print(f"{r['dataset']:<22} {r['config'][:58]:<58} "
              + " ".join(f"{r['metrics'][s]:>8.3f}" for s in SHOWN)
              + (f"  {r['delta_map_vs_baseline']:+.3f}" if "delta_map_vs_baseline" in r else ""))


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _loadavg() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "eval.json"),
                    help="JSON file; the rows go under its 'crossset' key (other keys kept)")
    ap.add_argument("--adapt-steps", type=int, default=ADAPT_STEPS)
    args = ap.parse_args(argv)
    run(Path(args.out) if args.out else None, args.adapt_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
