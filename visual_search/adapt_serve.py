"""`vsearch adapt ... --serve`: from a catalog to serving the model adapted to it, in one command.

After `vsearch adapt` has exported the adapted model into its output directory, this starts Triton
with that directory's models, fresh shards stamped with the adapted version and a gateway on
loopback (launcher.Stack: supervised, as `vsearch up`), indexes the catalog's photos through the
public IndexItems stream with progress and a time estimate, then serves until Ctrl-C / SIGTERM.
A live deployment moves to the adapted model with `vsearch cutover run` instead (re-embed into new
shards, canary, switch, rollback): adapt prints that command too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


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
