"""The cutover job: re-embed into new shards, validate them with canary probes, switch, verify.

Validation runs the probe set through a private staging gateway (loopback, free port) serving
only the new generation, so the live gateway never sees the new version before the switch. The
switch is the live gateway's admin Switch (atomic; see gateway/generations.py); the old shards
stay up and the old generation warm, so `vsearch cutover rollback` is one more admin call. If
the canary fails on the live gateway right after the switch, the job rolls back by itself.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from visual_search.eval import canary


@dataclass
class CutoverPlan:
    admin: str  # live gateway's admin host:port
    catalog: Sequence[tuple[str, Path, str]]
    new_shards: str
    new_triton: str
    probes: canary.ProbeSet
    state: Path
    k: int = 10
    min_recall: float = 0.9
    admin_token: str | None = None
    gateway: str | None = None  # live public address, for the post-switch canary
    gateway_token: str | None = None
    concurrency: int = 4
    batch: int = 16
    switch: bool = True
    auto_rollback: bool = True


@dataclass
class CutoverResult:
    old_version: str = ""
    new_version: str = ""
    items: int = 0
    reembedded: int = 0
    resumed: int = 0
    skipped: int = 0
    failed: int = 0
    reembed_s: float = 0.0
    items_per_s: float = 0.0
    staging_recall: float = 0.0
    switched: bool = False
    prepare_ms: float = 0.0
    swap_ms: float = 0.0
    live_recall: float | None = None
    rolled_back: bool = False
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _say(msg: str) -> None:
    print(f"cutover: {msg}", file=sys.stderr, flush=True)


def new_version_of(triton_url: str, new_shards: str) -> str:
    """The new Triton's encoder version, which every new shard must be stamped with."""
    from visual_search.gateway.config import ShardMap
    from visual_search.shard import auth as shard_auth
    from visual_search.triton.client import TritonClient
    from visual_search.v1 import shard_pb2, shard_pb2_grpc

    with TritonClient(triton_url) as tc:
        version = tc.encoder_version()
    for replicas in ShardMap.parse(new_shards).shards:
        for addr in replicas:
            with shard_auth.channel(addr) as ch:  # the shard token from the environment
                st = shard_pb2_grpc.SearchShardStub(ch).Stats(shard_pb2.StatsRequest(), timeout=10)
            if st.model_version != version:
                raise SystemExit(f"new shard {addr} is stamped {st.model_version!r}; Triton: {version!r}")
    return version


def validate(plan: CutoverPlan, version: str, log_dir: Path) -> canary.CanaryReport:
    """Canary probes through a staging gateway over the new shards + new Triton only."""
    from visual_search.gateway.process import GatewayProcess

    log = log_dir / "staging-gateway.log"
    with GatewayProcess(plan.new_shards, triton_url=plan.new_triton, log_path=log) as gw:
        report, _ = canary.check(gw.address, plan.probes, plan.k, plan.min_recall, version)
    return report


def run_cutover(plan: CutoverPlan) -> CutoverResult:
    from visual_search.cutover.reembed import reembed
    from visual_search.gateway.admin import AdminClient

    res = CutoverResult(items=len(plan.catalog))
    with AdminClient(plan.admin, token=plan.admin_token) as adm:
        live = adm.generations().current
        res.old_version = live.model_version
        res.new_version = new_version_of(plan.new_triton, plan.new_shards)
        if res.new_version == res.old_version:
            raise SystemExit(f"the live gateway already serves {res.old_version}")
        _say(f"live {res.old_version} on {live.shards}; new {res.new_version} on {plan.new_shards}")

        st = asyncio.run(reembed(
            plan.catalog, live.shards, plan.new_shards, plan.new_triton, res.new_version, plan.state,
            plan.concurrency, plan.batch,
        ))
        res.reembedded, res.resumed, res.reembed_s = st.embedded, st.resumed, st.seconds
        res.items_per_s, res.skipped, res.failed = st.items_per_s, len(st.skipped or []), len(st.failed or {})
        _say(f"re-embedded {st.embedded} items in {st.seconds:.1f}s ({st.items_per_s:.2f}/s); "
             f"{st.resumed} resumed, {res.skipped} not in the live shards (deleted or never indexed), "
             f"{res.failed} failed")
        if st.failed:
            res.problems += [f"{i}: {e}" for i, e in sorted(st.failed.items())[:10]]
            return res

        report = validate(plan, res.new_version, plan.state.parent)
        res.staging_recall = report.recall
        _say("staging " + canary.format_report(report))
        why = report.verdict(plan.min_recall, res.new_version)
        if why:
            res.problems += [f"new shards failed the canary: {w}" for w in why]
            return res
        if not plan.switch:
            return res

        sw = adm.switch(plan.new_shards, plan.new_triton, expect_model_version=res.new_version)
        res.switched, res.prepare_ms, res.swap_ms = True, sw.prepare_ms, sw.swap_ms
        _say(f"switched: generation {sw.current.number} ({sw.current.model_version}); prepare "
             f"{sw.prepare_ms:.1f} ms, swap {sw.swap_ms:.3f} ms; old generation kept warm for rollback")

        if plan.gateway:
            t0 = time.monotonic()
            report, why = canary.check(plan.gateway, plan.probes, plan.k, plan.min_recall, res.new_version,
                                       token=plan.gateway_token)
            res.live_recall = report.recall
            _say(f"live canary after switch ({time.monotonic() - t0:.1f}s): recall {report.recall:.3f}")
            if why and plan.auto_rollback:
                adm.rollback()
                res.rolled_back = True
                res.problems += [f"live canary failed after the switch, rolled back: {w}" for w in why]
    return res
