"""`vsearch adapt ... --serve | --cutover`: from a catalog to serving the model adapted to it, in one
command.

After `vsearch adapt` has exported the adapted model into its output directory:
- `--serve` starts Triton with that directory's models, fresh shards stamped with the adapted
  version and a gateway on loopback (launcher.Stack: supervised, as `vsearch up`), indexes the
  catalog's photos through the public IndexItems stream with progress and a time estimate, and
  serves until Ctrl-C / SIGTERM;
- `--cutover` moves a LIVE gateway to it: starts Triton + as many fresh shards as the live
  generation has (no gateway), runs `vsearch cutover run`'s job against the live gateway's admin
  port (re-embed the catalog into the new shards, canary them through a private staging gateway
  with the given probe set, switch atomically, canary again, roll back by itself on failure), then
  keeps the new generation's processes up until Ctrl-C (roll back with `vsearch cutover rollback`
  before stopping them). The probe set decides what "good enough" means across a model change: a
  `--expect labels` set (`vsearch canary build`) does not depend on the old model's answers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ServeOptions:
    model_dir: Path
    source: Path  # the catalog manifest or folder adapt read (split=catalog rows of a manifest)
    run_dir: Path
    shards: int = 2
    port: int = 0
    max_items: int = 0  # 0 = every catalog photo


def _eta(done: int, total: int, elapsed: float) -> str:
    left = elapsed / max(done, 1) * (total - done)
    return f"{done}/{total} indexed, {elapsed:.0f}s, ~{left:.0f}s left"


def serve(opts: ServeOptions, wait: bool = True) -> int:
    """Start the adapted stack, index the catalog, print the endpoints; block while `wait`."""
    from visual_search.client import Client, IndexItem
    from visual_search.client_cli import iter_source
    from visual_search.launcher import Stack, StackOptions, sigterm_as_interrupt

    man = json.loads((opts.model_dir / "manifest.json").read_text())
    want = man["encoder_model_version"][man["default_precision"]["encoder"]]
    catalog = list(iter_source(opts.source))
    if opts.max_items:
        catalog = catalog[: opts.max_items]
    if not catalog:
        raise SystemExit(f"{opts.source}: no catalog photos to index")
    t0 = time.monotonic()
    print(f"[serve] starting Triton with {opts.model_dir}, {opts.shards} shards, a gateway ...", flush=True)
    stack_opts = StackOptions(opts.run_dir, opts.shards, 1, opts.port, model_dir=opts.model_dir)
    ok = failed = 0
    with sigterm_as_interrupt():
        try:
            with Stack(stack_opts) as stack:
                if stack.model_version != want:
                    raise SystemExit(f"Triton serves {stack.model_version}, the adapted model is {want}")
                print(f"[serve] up in {time.monotonic() - t0:.0f}s: model {stack.model_version}", flush=True)
                t1 = time.monotonic()
                with Client(stack.gateway.address, timeout=120) as c:
                    items = (IndexItem(i, p.read_bytes(), category=lbl) for i, p, lbl in catalog)
                    for n, r in enumerate(c.index(items), 1):
                        ok, failed = ok + r.ok, failed + (not r.ok)
                        if not r.ok:
                            print(f"[serve] {r.item_id}: {r.error_code} {r.error}", flush=True)
                        if n % 25 == 0 or n == len(catalog):
                            print(f"[serve] {_eta(n, len(catalog), time.monotonic() - t1)}", flush=True)
                print(f"[serve] indexed {ok} of {len(catalog)} photos ({failed} failed) with "
                      f"{stack.model_version}; serving:", flush=True)
                for name, ep in stack.endpoints().items():
                    print(f"  {name:<16} {ep}", flush=True)
                print(f"try: vsearch search <photo> --gateway {stack.gateway.address}   (Ctrl-C stops)",
                      flush=True)
                while wait:
                    time.sleep(3600)
        except KeyboardInterrupt:
            print("[serve] stopped", flush=True)
    return 0 if failed == 0 else 1


@dataclass
class CutoverOptions:
    model_dir: Path
    source: Path
    run_dir: Path
    admin: str  # the live gateway's admin host:port
    probes: Path
    admin_token: str | None = None
    gateway: str | None = None  # live public address: canary again after the switch
    gateway_token: str | None = None
    min_recall: float = 0.9
    k: int = 10


def _live_shard_count(admin: str, token: str | None) -> int:
    from visual_search.gateway.admin import AdminClient

    with AdminClient(admin, token=token) as adm:
        return len(adm.generations().current.shards.split(";"))


def cutover_live(opts: CutoverOptions, wait: bool = True) -> int:
    """Start the adapted generation (Triton + shards), cut the live gateway over to it, keep it up."""
    from visual_search.client_cli import iter_source
    from visual_search.cutover.run import CutoverPlan, run_cutover
    from visual_search.eval.canary import load_probes
    from visual_search.launcher import Stack, StackOptions, sigterm_as_interrupt

    catalog = list(iter_source(opts.source))
    probes = load_probes(opts.probes)
    shards = _live_shard_count(opts.admin, opts.admin_token)
    print(f"[cutover] starting Triton with {opts.model_dir} and {shards} new shards ...", flush=True)
    stack_opts = StackOptions(opts.run_dir, shards, 1, model_dir=opts.model_dir, gateway=False)
    res: Any = None
    with sigterm_as_interrupt():
        try:
            with Stack(stack_opts) as stack:
                plan = CutoverPlan(
                    admin=opts.admin, admin_token=opts.admin_token, catalog=catalog,
                    new_shards=stack.shard_spec(), new_triton=stack.triton.grpc_url, probes=probes,
                    state=opts.run_dir / "cutover-state.jsonl", k=opts.k, min_recall=opts.min_recall,
                    gateway=opts.gateway, gateway_token=opts.gateway_token,
                )
                res = run_cutover(plan)
                print(json.dumps(res.as_dict(), indent=1), flush=True)
                if res.problems or not res.switched or res.rolled_back:
                    print("[cutover] NOT switched; the live gateway keeps its model", flush=True)
                    return 1
                print(f"[cutover] the live gateway serves {res.new_version}; this process runs its Triton "
                      f"and shards: {stack.shard_spec()} (Ctrl-C stops them: `vsearch cutover rollback` "
                      "first)", flush=True)
                while wait:
                    time.sleep(3600)
        except KeyboardInterrupt:
            print("[cutover] stopped", flush=True)
    return 0 if res is not None and not res.problems else 1
