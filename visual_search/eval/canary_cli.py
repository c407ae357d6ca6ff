"""`vsearch canary build | check`: make a probe set, run it against a deployment (see eval/canary.py).

`check` is what the helm chart's CronJob runs; it exits 1 when recall@k is below --min-recall,
every probe failed, or the gateway serves another model version than --model-version.
"""

from __future__ import annotations

import argparse
import os
import sys


def _conn(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--gateway", default=env("VSEARCH_GATEWAY"), required=not env("VSEARCH_GATEWAY"),
                   help="gateway host:port [env VSEARCH_GATEWAY]")
    p.add_argument("--token", default=env("VSEARCH_AUTH_TOKEN"), help="bearer token [env VSEARCH_AUTH_TOKEN]")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--tls-ca", help="PEM root certificate for --tls")
    p.add_argument("--timeout", type=float, default=30.0, help="per-query deadline, seconds")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("canary", help="canary probes: build a probe set, check a deployment")
    sub = p.add_subparsers(dest="canary_command", required=True)

    b = sub.add_parser("build", help="write a probe set (photos + expected item ids) as JSON")
    b.add_argument("--manifest", required=True, help="labeled manifest CSV (image,label,split)")
    b.add_argument("--expect", choices=("deployment", "labels"), default="deployment",
                   help="expected ids = the deployment's current top k (needs --gateway), or the "
                   "catalog items of the probe's label")
    b.add_argument("--n", type=int, default=20, help="probe photos (query split, spread over labels)")
    b.add_argument("--k", type=int, default=10)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--inline", action="store_true", help="embed photos as base64 (self-contained file)")
    b.add_argument("--out", required=True)
    env = os.environ.get
    b.add_argument("--gateway", default=env("VSEARCH_GATEWAY"))
    b.add_argument("--token", default=env("VSEARCH_AUTH_TOKEN"))
    b.add_argument("--tls", action="store_true")
    b.add_argument("--tls-ca")
    b.add_argument("--timeout", type=float, default=30.0)
    b.set_defaults(func=cmd_build)

    c = sub.add_parser("check", help="run a probe set; exit 1 below the recall floor or on version mismatch")
    _conn(c)
    c.add_argument("--probes", required=True, help="probe set JSON")
    c.add_argument("--k", type=int, default=10)
    c.add_argument("--min-recall", type=float, default=0.9)
    c.add_argument("--model-version", default=env("VSEARCH_MODEL_VERSION") or None,
                   help="the model version the gateway must serve")
    c.add_argument("--pushgateway", help="Prometheus Pushgateway URL (optional)")
    c.add_argument("--push-job", default="visual-search-canary")
    c.add_argument("--shards", type=int, default=0,
                   help="number of shards: also report recall per shard (vsearch_canary_shard_recall)")
    c.add_argument("-v", "--verbose", action="store_true", help="list every probe")
    c.set_defaults(func=cmd_check)


def _client_kw(args: argparse.Namespace) -> dict[str, object]:
    from pathlib import Path

    root = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    return {"token": args.token, "tls": args.tls, "root_cert": root, "timeout": args.timeout}


def cmd_build(args: argparse.Namespace) -> int:
    from visual_search.client import Client
    from visual_search.eval import canary

    if args.expect == "deployment":
        if not args.gateway:
            raise SystemExit("--expect deployment needs --gateway")
        with Client(args.gateway, **_client_kw(args)) as c:  # type: ignore[arg-type]
            ps, paths = canary.build_from_deployment(c, args.manifest, args.n, args.k, args.seed)
    else:
        ps, paths = canary.build_from_labels(args.manifest, args.n, args.k, args.seed)
    canary.save_probes(ps, args.out, inline_images=args.inline, paths=paths)
    print(f"wrote {len(ps.probes)} probes ({ps.source}; model {ps.model_version or '-'}) to {args.out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from visual_search.eval import canary

    ps = canary.load_probes(args.probes)
    report, why = canary.check(
        args.gateway, ps, args.k, args.min_recall, args.model_version, **_client_kw(args)
    )
    print(canary.format_report(report, args.verbose))
    if args.shards:
        per = report.recall_by_shard(args.shards)
        print("recall by shard: " + ", ".join(f"{s}: {v:.3f}" for s, v in per.items()))
    if args.pushgateway:
        try:
            canary.push_metrics(report, args.pushgateway, args.push_job, args.shards)
        except OSError as e:  # the check's verdict still stands; a stale-canary alert covers this
            print(f"canary: push to {args.pushgateway} failed: {e}", file=sys.stderr)
    for reason in why:
        print(f"canary FAILED: {reason}", file=sys.stderr)
    if not why:
        print("canary passed")
    return 1 if why else 0
