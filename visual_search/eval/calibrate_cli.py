"""`vsearch calibrate`: fit the "no close match" threshold (visual_search/eval/calibrate.py) and
write it to artifacts/models/calibration.json, with its cross-set scores in benchmarks/."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from visual_search.eval.dataset import DEV_SETS, SHARED_DATA, load_manifest, split


def run(args: argparse.Namespace) -> int:
    from visual_search import calibration as CAL
    from visual_search import models
    from visual_search.bench.report import hardware, write_report
    from visual_search.eval import calibrate as F
    from visual_search.eval import inprocess as I
    from visual_search.preprocess import decode_image
    from visual_search.reference import ReferencePipeline

    names = [s for s in args.sets.split(",") if s]
    if len(names) < 2:
        raise SystemExit("vsearch calibrate: give at least two sets (cross-set fits on the others)")
    precisions: list[models.Precision] = ["int8", "fp32"] if args.precision == "both" else [args.precision]
    t0 = time.monotonic()
    report: dict[str, Any] = {
        "benchmark": "calibration", "what": "`vsearch calibrate`: the 'no close match' threshold, fitted "
        "on the dev sets' correct top-1 vs out-of-catalog top-1 scores (rule below); cross-set rows fit "
        "on the other sets",
        "arguments": {k: v for k, v in vars(args).items() if k != "func"}, "hardware": hardware(),
        "rule": F.RULE, "by_precision": {},
    }
    for prec in precisions:
        pipe = ReferencePipeline(
            models.artifact_path("detector"), models.artifact_path("encoder", prec),
            query_detector_path=models.artifact_path("detector_query_fp32"),
        )
        sets = []
        for name in names:
            catalog, queries = split(load_manifest(Path(args.data) / name / "manifest.csv"))
            print(f"calibrate[{prec}] {name}: {len(catalog)} catalog photos, {len(queries)} queries ...",
                  flush=True)
            sets.append(F.embed_set(pipe, name, catalog, queries))
        res = F.calibrate(sets)
        if args.probe:  # e.g. the README's bus photo against each dev catalog
            img = decode_image(Path(args.probe).read_bytes())
            vec = I.default_query_vectors(pipe, img)
            res["probe"] = {"image": args.probe, "best_score_by_catalog": {
                s.name: round(F.probe(s, vec), 4) for s in sets}, "threshold": round(res["threshold"], 4)}
        version = models.model_version(prec)
        report["by_precision"][prec] = {"model_version": version, **res}
        for row in res["cross_set"] + res["in_set"]:
            print(f"  {row['protocol']:<9} {row['dataset']:<22} t={row['threshold']:.3f}  out-of-catalog "
                  f"told 'no close match' {row['out_of_catalog_no_close_rate']:.2f}, other domains "
                  f"{row['other_domain_no_close_rate']:.2f}; correct top-1 shown close "
                  f"{row['correct_top1_close_rate']:.2f}; close-hit precision {row['close_hit_precision']}",
                  flush=True)
        if not args.no_write:
            keep = ("threshold", "close_hit_precision", "correct_top1_close_rate",
                    "out_of_catalog_no_close_rate", "other_domain_no_close_rate")
            cross = {r["dataset"]: {k: r[k] for k in keep} for r in res["cross_set"]}
            CAL.write_entry(version, CAL.Calibration(
                model_version=version, threshold=round(res["threshold"], 4), rule=F.RULE,
                fit_sets=names, cross_set=cross,
            ))
            print(f"calibrate[{prec}]: {version}: threshold {res['threshold']:.4f} -> {CAL.default_path()}")
    report["seconds"] = round(time.monotonic() - t0, 1)
    return write_report(report, Path(args.out))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate", help="fit the 'no close match' score threshold on the labeled dev sets",
        description=__doc__ + " How it is fitted: visual_search/eval/calibrate.py.",
    )
    p.add_argument("--data", default=str(SHARED_DATA), help="folder holding <set>/manifest.csv")
    p.add_argument("--sets", default=",".join(DEV_SETS), help="comma-separated set names (>= 2)")
    p.add_argument("--precision", choices=("int8", "fp32", "both"), default="both")
    p.add_argument("--probe", default=str(Path(__file__).resolve().parents[2] / "tests" / "data" / "bus.jpg"),
                   help="a photo whose best score against each dev catalog is reported ('' = none)")
    p.add_argument("--no-write", action="store_true", help="do not update artifacts/models/calibration.json")
    p.add_argument("--out", default="benchmarks/calibration.json")
    p.set_defaults(func=run)
