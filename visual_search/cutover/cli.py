"""`vsearch cutover run | rollback | status | derive-encoder` (model-version change, R15).

Before `run`: start the new Triton (new model repository) and empty new shards stamped with the
new version (`vsearch shard --model-version NEW`), same shard count, next to the live ones; the
live gateway must run with --admin-port. See visual_search/cutover/run.py for the steps.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def _admin(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--admin", default=env("VSEARCH_ADMIN"), required=not env("VSEARCH_ADMIN"),
                   help="live gateway's admin host:port [env VSEARCH_ADMIN]")
    p.add_argument("--admin-token", default=env("VSEARCH_ADMIN_TOKEN"), help="[env VSEARCH_ADMIN_TOKEN]")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cutover", help="model-version change: re-embed, validate, switch, roll back")
    sub = p.add_subparsers(dest="cutover_command", required=True)

    r = sub.add_parser("run", help="re-embed the catalog into new shards, canary them, switch the gateway")
    _admin(r)
    r.add_argument("--catalog", required=True, help="catalog directory or manifest CSV (as `vsearch index`)")
    r.add_argument("--split", default="catalog", help="CSV rows of this split ('' = all)")
    r.add_argument("--new-shards", required=True, help="new shard map 'h:p,h:p;h:p' (same shard count)")
    r.add_argument("--new-triton", required=True, help="Triton gRPC host:port serving the new encoder")
    r.add_argument("--probes", required=True, help="canary probe set (vsearch canary build)")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--min-recall", type=float, default=0.9)
    r.add_argument("--state", default="run/cutover-state.jsonl", help="resume state (finished item ids)")
    r.add_argument("--concurrency", type=int, default=4, help="photos in flight to Triton")
    r.add_argument("--batch", type=int, default=16, help="items per shard upsert / state checkpoint")
    r.add_argument("--gateway", help="live public address: canary again after the switch (auto-rollback)")
    r.add_argument("--token", default=os.environ.get("VSEARCH_AUTH_TOKEN"), help="public API token [env]")
    r.add_argument("--no-switch", action="store_true", help="stop after validating the new shards")
    r.add_argument("--no-auto-rollback", action="store_true")
    r.add_argument("--json", help="write the result (figures) to this file")
    r.set_defaults(func=cmd_run)

    pub = sub.add_parser(
        "publish",
        help="check a stack (replica stamps = Triton's encoder version) and make it the generation every "
        "gateway pod serves (--generation-source); --rollback publishes the previous one",
    )
    pub.add_argument("--shards", help="shard map 'h:p,h:p;h:p' of the target generation")
    pub.add_argument("--triton", help="Triton gRPC host:port of the target generation")
    pub.add_argument("--rollback", action="store_true", help="publish the previous generation again")
    pub.add_argument("--file", help="the generation document (what the gateways mount)")
    pub.add_argument("--configmap",
                     help="or: the ConfigMap holding it (in-cluster API, service-account token)")
    pub.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    pub.add_argument("--shard-token", default=os.environ.get("VSEARCH_SHARD_TOKEN"),
                     help="shard token [env VSEARCH_SHARD_TOKEN, or a file in VSEARCH_SHARD_TOKEN_FILE]")
    pub.set_defaults(func=cmd_publish)

    b = sub.add_parser("rollback", help="switch the gateway back to the previous generation")
    _admin(b)
    b.set_defaults(func=cmd_rollback)

    s = sub.add_parser("status", help="the gateway's current and previous generation")
    _admin(s)
    s.set_defaults(func=cmd_status)

    d = sub.add_parser("derive-encoder", help="write a re-projected copy of the encoder (a second version)")
    d.add_argument("--out", required=True, help="directory (gets encoder_fp32.onnx + manifest.json)")
    d.add_argument("--seed", type=int, default=1)
    d.set_defaults(func=cmd_derive)


def cmd_run(args: argparse.Namespace) -> int:
    from visual_search.client_cli import iter_source
    from visual_search.cutover.run import CutoverPlan, run_cutover
    from visual_search.eval.canary import load_probes

    plan = CutoverPlan(
        admin=args.admin, admin_token=args.admin_token,
        catalog=list(iter_source(args.catalog, args.split or None)),
        new_shards=args.new_shards, new_triton=args.new_triton, probes=load_probes(args.probes),
        state=Path(args.state), k=args.k, min_recall=args.min_recall, gateway=args.gateway,
        gateway_token=args.token, concurrency=args.concurrency, batch=args.batch,
        switch=not args.no_switch, auto_rollback=not args.no_auto_rollback,
    )
    res = run_cutover(plan)
    out = json.dumps(res.as_dict(), indent=1)
    print(out)
    if args.json:
        Path(args.json).write_text(out + "\n")
    return 1 if res.problems else 0


def _show(label: str, g: object) -> None:
    if getattr(g, "model_version", ""):
        print(f"{label:<9} #{g.number} {g.model_version}  shards {g.shards}  triton {g.triton_url or '-'}  "  # type: ignore[attr-defined]
              f"inflight {g.inflight}")  # type: ignore[attr-defined]


def cmd_publish(args: argparse.Namespace) -> int:
    from visual_search.cutover.publish import PublishError, publish
    from visual_search.shard.auth import load_token

    try:
        doc = publish(
            shards=args.shards, triton_url=args.triton, rollback=args.rollback, file=args.file,
            configmap=args.configmap, namespace=args.namespace,
            token=args.shard_token or load_token(),  # else $VSEARCH_SHARD_TOKEN_FILE (the chart's Job)
        )
    except PublishError as exc:
        print(f"vsearch cutover publish: not published: {exc}")
        return 1
    print(f"published generation {doc['number']}: model {doc['model_version']}, shards {doc['shards']}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from visual_search.gateway.admin import AdminClient

    with AdminClient(args.admin, token=args.admin_token) as adm:
        r = adm.rollback()
    print(f"rolled back in {r.swap_ms:.3f} ms")
    _show("current", r.current)
    _show("previous", r.previous)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from visual_search.gateway.admin import AdminClient

    with AdminClient(args.admin, token=args.admin_token) as adm:
        g = adm.generations()
    _show("current", g.current)
    _show("previous", g.previous)
    return 0


def cmd_derive(args: argparse.Namespace) -> int:
    from visual_search.cutover.encoder import derive_encoder

    path, version = derive_encoder(args.out, args.seed)
    print(f"wrote {path} (model version {version}); serve it with "
          f"`vsearch triton generate --encoder {path} --out REPO`")
    return 0
