"""`vsearch eval`: retrieval quality of the served pipeline and of the in-process reference.

One run compares, per labeled set: in-process exact search (FP32 and INT8; whole image vs object
entries/queries; the served default query computed in-process) and the served path (gateway ->
Triton -> shards; exact vs IVF-PQ + re-score; the gateway's default photo query, max(default box,
whole image), vs whole-image queries; an nprobe x rescore_k sweep for the recall-vs-latency plot).
Results go to a JSON file (and a PNG plot); a short table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from visual_search.eval import metrics as M
from visual_search.eval.dataset import DEV_SETS, SHARED_DATA

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MANIFESTS = [SHARED_DATA / name / "manifest.csv" for name in DEV_SETS]
SHOWN = ("map", "hit@1", "ndcg@10", "recall@10", "max_recall@10", "mrr")
SWEEP_NPROBE = (1, 8)
SWEEP_RESCORE = (10, 100, 1000)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="retrieval quality (recall@K, mAP, nDCG, MRR) on labeled sets")
    p.add_argument(
        "--protocol",
        choices=("served", "crossset"),
        default="served",
        help="served: the pipeline as deployed (below); crossset: leave-one-set-out over the three "
        "../shared/data sets - in-set, cross-set and `vsearch adapt` rows next to the baseline, "
        "written under the output's 'crossset' key (needs .venv-export: refits the head)",
    )
    p.add_argument("--manifest", action="append", help="manifest.csv (repeatable); default: ../shared/data/*")
    p.add_argument(
        "--precision", action="append", choices=("fp32", "int8"), help="default: both (if exported)"
    )
    p.add_argument("--k", type=int, default=1000, help="ranked list length (1000: whole dev catalogs)")
    p.add_argument("--gateway", help="evaluate a running gateway instead of starting a local stack")
    p.add_argument("--no-served", action="store_true", help="in-process reference only")
    p.add_argument("--no-inprocess", action="store_true", help="served path only")
    p.add_argument("--no-sweep", action="store_true", help="skip the nprobe x rescore_k sweep")
    p.add_argument("--train-threshold", type=int, default=256, help="shard entries before IVF-PQ trains")
    p.add_argument("--out", default="benchmarks/eval.json")
    p.add_argument("--plot", default="benchmarks/eval_sweep.png", help="recall@10 vs latency PNG ('' = none)")
    p.set_defaults(func=run)


def _row(name: str, rep: M.Report, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "config": name,
        "n_queries": rep.n_queries,
        "metrics": rep.metrics,
        "per_label": rep.per_label,
        **(extra or {}),
    }


def inprocess_runs(manifest: Path, precision: str, k: int) -> list[dict[str, Any]]:
    import numpy as np

    from visual_search import models
    from visual_search import preprocess as P
    from visual_search.eval import inprocess as I
    from visual_search.eval.dataset import load_manifest, split
    from visual_search.reference import ReferencePipeline

    catalog, queries = split(load_manifest(manifest))
    # the detector at its gate-decided precision (as served); the encoder at the one under test
    prec: models.Precision = "int8" if precision == "int8" else "fp32"
    pipe = ReferencePipeline(models.artifact_path("detector"), models.artifact_path("encoder", prec),
                             query_detector_path=models.artifact_path("detector_query_fp32"))
    cat_e, q_e = I.embed_images(pipe, catalog), I.embed_images(pipe, queries)
    rows = []

    def add(name: str, ranked: Any) -> None:
        rep = M.evaluate(
            [[catalog[j].label for j in r] for r in ranked],
            [q.label for q in queries],
            [c.label for c in catalog],
        )
        extra = {"precision": precision, "path": "inprocess"}
        rows.append(_row(f"inprocess-exact-{precision} {name}", rep, extra))

    for cat_obj, q_obj in ((False, False), (True, False), (True, True), (False, True)):
        cset = I.catalog_entries(cat_e, cat_obj)
        ranked = I.rank_items(I.query_vectors(q_e, q_obj), cset, len(catalog), k)
        cat_side, q_side = "objects+whole" if cat_obj else "whole", "salient-object" if q_obj else "whole"
        add(f"catalog={cat_side} query={q_side}", ranked)
    # query strategies (issue 14 ask 4): combine the salient object's and the whole image's item scores
    cset = I.catalog_entries(cat_e, True)
    box_s = I.item_scores(I.query_vectors(q_e, True), cset, len(catalog))
    whole_s = I.item_scores(I.query_vectors(q_e, False), cset, len(catalog))
    for how, combined in (("max", np.maximum(box_s, whole_s)), ("mean", (box_s + whole_s) / 2)):
        add(f"catalog=objects+whole query={how}(salient-object, whole)", I.top_items(combined, k))
    # the served default photo query exactly: query-side detector (416), max(default box, whole)
    served_q = np.stack([I.default_query_vectors(pipe, P.decode_image(q.path.read_bytes())) for q in queries])
    served_s = I.fused_item_scores(served_q, cset, len(catalog))
    add("catalog=objects+whole query=served-default", I.top_items(served_s, k))
    return rows


def served_runs(
    address: str,
    manifest: Path,
    precision: str,
    k: int,
    sweep: bool,
    stack: Any = None,
) -> list[dict[str, Any]]:
    """Index the set through `address`, then run every query configuration. With a local `stack`
    its shards are rebuilt first, so IVF-PQ (when past the threshold) is what answers."""
    from visual_search.client import Client
    from visual_search.eval import served as S
    from visual_search.eval.dataset import load_manifest, split
    from visual_search.v1 import search_pb2

    catalog, queries = split(load_manifest(manifest))
    rows = []
    with Client(address, timeout=120) as c:
        t = time.monotonic()
        labels = S.index_catalog(c, catalog, manifest.parent.name)
        index_s = time.monotonic() - t
        index_types = stack.rebuild_shards() if stack is not None else ["unknown (remote gateway)"]
        cat_labels = [x.label for x in catalog]
        configs: list[tuple[str, bool, search_pb2.SearchOptions]] = [
            ("served-exact query=default", False, search_pb2.SearchOptions(exact=True)),
            ("served-ivfpq+rescore query=default", False, search_pb2.SearchOptions()),
            ("served-ivfpq+rescore query=whole", True, search_pb2.SearchOptions()),
            ("served-ivfpq rescore_k=k query=default", False, search_pb2.SearchOptions(rescore_k=k)),
        ]
        if sweep:
            configs += [
                (f"sweep nprobe={n} rescore_k={r}", False, search_pb2.SearchOptions(nprobe=n, rescore_k=r))
                for n in SWEEP_NPROBE
                for r in SWEEP_RESCORE
                if r >= min(k, 10)
            ]
        for name, whole, opts in configs:
            kk = min(k, opts.rescore_k) if opts.rescore_k else k
            run = S.run_queries(c, name, queries, labels, cat_labels, kk, whole_image=whole, options=opts)
            rows.append(
                _row(
                    f"{name} ({precision})",
                    run.report,
                    {
                        "precision": precision,
                        "path": "served",
                        "latency_ms": run.latency_ms,
                        "partial_queries": run.partial_queries,
                        "query_strategies": run.query_strategies,
                        "nprobe": opts.nprobe,
                        "rescore_k": opts.rescore_k,
                        "exact": opts.exact,
                        "k": kk,
                        "index_seconds": index_s,
                        "catalog_items": len(catalog),
                        "shard_index_types": index_types,
                    },
                )
            )
    return rows


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["config"].startswith("sweep"):
            groups.setdefault(f"{r['dataset']} {r['precision']} nprobe={r['nprobe']}", []).append(r)
    for name, rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["rescore_k"])
        ax.plot(
            [r["latency_ms"]["p50"] for r in rs], [r["metrics"]["recall@10"] for r in rs], "o-", label=name
        )
        for r in rs:
            ax.annotate(str(r["rescore_k"]), (r["latency_ms"]["p50"], r["metrics"]["recall@10"]), fontsize=7)
    ax.set_xlabel("query latency p50 (ms), served path")
    ax.set_ylabel("recall@10")
    ax.set_title("recall@10 vs latency (labels: rescore_k)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(args: argparse.Namespace) -> int:
    from visual_search import models

    if args.protocol == "crossset":
        from visual_search.adapt_cli import run_export_module

        return run_export_module("export.crossset", ["--out", str(Path(args.out).resolve())])

    manifests = [Path(m) for m in (args.manifest or DEFAULT_MANIFESTS)]
    for m in manifests:
        if not m.exists():
            raise SystemExit(f"manifest not found: {m}")
    have = set(models.load_manifest()["artifacts"])
    precisions = args.precision or [p for p in ("fp32", "int8") if f"encoder_{p}" in have]
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for precision in precisions:
        # the nprobe x rescore_k sweep runs once, on the precision that is served by default
        sweep = not args.no_sweep and precision == models.default_precision("encoder")
        if not args.no_inprocess:
            for m in manifests:
                for r in inprocess_runs(m, precision, args.k):
                    rows.append({"dataset": m.parent.name, **r})
        if args.no_served:
            continue
        if args.gateway:
            for m in manifests:
                rows += [
                    {"dataset": m.parent.name, **r}
                    for r in served_runs(args.gateway, m, precision, args.k, sweep)
                ]
            continue
        from visual_search.launcher import Stack, StackOptions

        for m in manifests:  # a fresh 1-shard stack per set, so IVF-PQ trains on that set only
            with tempfile.TemporaryDirectory(prefix="vsearch-eval-") as tmp:
                # "auto" serves the manifest's per-model precisions (FP32 detector + INT8 encoder)
                stack_precision = "auto" if precision == models.default_precision("encoder") else "fp32"
                opts = StackOptions(
                    Path(tmp),
                    shards=1,
                    precision=stack_precision,
                    shard_args=["--train-threshold", str(args.train_threshold)],
                )
                with Stack(opts) as stack:
                    rows += [
                        {"dataset": m.parent.name, "model_version": stack.model_version, **r}
                        for r in served_runs(
                            stack.gateway.address,
                            m,
                            precision,
                            args.k,
                            sweep,
                            stack,
                        )
                    ]
    out = {
        "command": "vsearch eval",
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "hardware": {"machine": platform.machine(), "processor": platform.processor(), "cpus": _cpus(),
                     "loadavg": [round(x, 2) for x in os.getloadavg()]},
        "manifests": [str(m) for m in manifests],
        "relevance": "same label; recall@K is reported beside max_recall@K (its ceiling)",
        "seconds": time.monotonic() - t0,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # the cross-set protocol's rows live under "crossset" in the same file: keep them
    prev = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    if "crossset" in prev:
        out["crossset"] = prev["crossset"]
    Path(args.out).write_text(json.dumps(out, indent=1))
    if args.plot and any(r["config"].startswith("sweep") for r in rows):
        plot_sweep(rows, Path(args.plot))
    print(f"{'dataset':<22} {'config':<62} " + " ".join(f"{s:>13}" for s in SHOWN))
    for r in rows:
        if r["config"].startswith("sweep"):
            continue
        print(
            f"{r['dataset']:<22} {r['config'][:62]:<62} "
            + " ".join(f"{r['metrics'][s]:>13.3f}" for s in SHOWN)
        )
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0
