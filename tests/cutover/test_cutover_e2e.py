"""End-to-end model cutover on real processes: two tritonservers (the exported encoder, and a
re-projected copy with its own version), two shard sets, one gateway with its admin port.

A small real catalog is indexed on version A; `vsearch cutover run` re-embeds it into the B
shards (resuming an interrupted run), canaries them through a staging gateway, switches the live
gateway while photo queries keep running, and `vsearch cutover rollback` goes back.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from visual_search.cli import main as vsearch
from visual_search.client import Client, IndexItem, VisualSearchError
from visual_search.client_cli import iter_source
from visual_search.cutover.encoder import derive_encoder
from visual_search.cutover.reembed import reembed
from visual_search.eval import canary
from visual_search.gateway.admin import AdminClient
from visual_search.gateway.process import GatewayProcess
from visual_search.shard.process import ShardProcess
from visual_search.supervise import free_port, wait_healthy
from visual_search.triton.client import TritonClient
from visual_search.triton.repository import Options
from visual_search.triton.server import DEFAULT_TRITON_HOME, TritonServer

MANIFEST = Path(__file__).resolve().parents[3] / "shared" / "data" / "grocery_packages_dev" / "manifest.csv"
PER_LABEL, K = 2, 5
ADMIN_TOKEN = "cutover-admin-token"  # the admin port refuses to start without one


@dataclass
class Env:
    root: Path
    version_a: str
    version_b: str
    triton_b: TritonServer
    shards_a: list[ShardProcess]
    shards_b: list[ShardProcess]
    gw: GatewayProcess
    admin: str
    catalog: list[tuple[str, Path, str]]
    probes: Path

    def spec(self, procs: list[ShardProcess]) -> str:
        return ";".join(p.address for p in procs)


def _catalog() -> list[tuple[str, Path, str]]:
    seen: dict[str, int] = {}
    out = []
    for row in iter_source(MANIFEST, "catalog"):
        if seen.get(row[2], 0) < PER_LABEL:
            seen[row[2]] = seen.get(row[2], 0) + 1
            out.append(row)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if not (DEFAULT_TRITON_HOME / "bin" / "tritonserver").exists():
        pytest.skip("tritonserver not installed: run scripts/install_triton.sh")
    if not MANIFEST.exists():
        pytest.skip("shared data not present")
    root = tmp_path_factory.mktemp("cutover")
    enc_b, version_b = derive_encoder(root / "encoder-b", seed=1)
    servers = [TritonServer(Options(), run_dir=root / "triton-a"),
               TritonServer(Options(encoder_path=enc_b), run_dir=root / "triton-b")]
    shards: list[ShardProcess] = []
    gw = None
    try:
        for t in servers:
            t.start()
        with TritonClient(servers[0].grpc_url) as a, TritonClient(servers[1].grpc_url) as b:
            version_a, served_b = a.encoder_version(), b.encoder_version()
        assert served_b == version_b != version_a  # Triton serves the derived encoder under its version
        shards_a = [ShardProcess(root / f"a{s}", shard_id=s, model_version=version_a) for s in (0, 1)]
        shards_b = [ShardProcess(root / f"b{s}", shard_id=s, model_version=version_b) for s in (0, 1)]
        shards = [*shards_a, *shards_b]
        for p in shards:
            p.start(wait=False)
        for p in shards:
            wait_healthy(p.address, 120, p.proc)
        admin_port = free_port()
        gw = GatewayProcess(";".join(p.address for p in shards_a), triton_url=servers[0].grpc_url,
                            log_path=root / "gw.log", extra_args=["--admin-port", str(admin_port)],
                            env={"VSEARCH_ADMIN_TOKEN": ADMIN_TOKEN}).start()
        catalog = _catalog()
        with Client(gw.address, timeout=120) as c:
            results = list(c.index(IndexItem(i, p.read_bytes(), category=lab) for i, p, lab in catalog))
            assert all(r.ok for r in results), [r.error for r in results if not r.ok]
            ps, paths = canary.build_from_deployment(c, MANIFEST, 6, K, seed=3)
        probes = root / "probes.json"
        canary.save_probes(ps, probes, paths=paths)
        yield Env(root, version_a, version_b, servers[1], shards_a, shards_b, gw,
                  f"127.0.0.1:{admin_port}", catalog, probes)
    finally:
        if gw is not None:
            gw.stop()
        for p in shards:
            p.stop()
        for t in servers:
            t.stop()


def test_cutover_under_queries_then_rollback(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    probes = canary.load_probes(env.probes)
    photos = [p.image for p in probes.probes if p.image is not None]
    with Client(env.gw.address, timeout=60) as c:
        before = [[h.item_id for h in c.search(image=ph, k=K).hits] for ph in photos]

    # an interrupted first run: 10 items re-embedded, then the job "dies"
    state = env.root / "state.jsonl"
    with AdminClient(env.admin, token=ADMIN_TOKEN) as adm:
        live_shards = adm.generations().current.shards
    first = asyncio.run(reembed(env.catalog, live_shards, env.spec(env.shards_b), env.triton_b.grpc_url,
                                env.version_b, state, stop_after=10))
    assert first.embedded == 10

    seen: list[tuple[int, float, float, str]] = []
    errors: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with Client(env.gw.address, timeout=60, retries=0) as c:
            i = worker
            while not stop.is_set():
                try:
                    t0 = time.monotonic()
                    r = c.search(image=photos[i % len(photos)], k=K)
                    seen.append((worker, t0, time.monotonic(), r.model_version))
                    if r.partial or not r.hits:
                        errors.append(f"partial/empty answer on {r.model_version}")
                except VisualSearchError as e:
                    errors.append(f"{e.code.name}: {e}")
                i += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    out = env.root / "result.json"
    try:
        rc = vsearch(_run_args(env, state, out))
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    res = json.loads(out.read_text())
    assert rc == 0, res["problems"]
    assert res["switched"] and not res["rolled_back"]
    assert res["resumed"] == 10 and res["reembedded"] == len(env.catalog) - 10
    assert res["skipped"] == len(list(iter_source(MANIFEST, "catalog"))) - len(env.catalog)  # never indexed
    assert res["staging_recall"] >= 0.8 and res["live_recall"] >= 0.8
    assert not errors, errors[:5]
    for w in range(2):  # each worker: A..A then B..B
        versions = [v for wk, _, _, v in seen if wk == w]
        assert versions and set(versions) <= {env.version_a, env.version_b}
        cut = versions.index(env.version_b) if env.version_b in versions else len(versions)
        assert set(versions[cut:]) <= {env.version_b} and set(versions[:cut]) <= {env.version_a}
    assert {v for *_, v in seen} == {env.version_a, env.version_b}
    print(f"\ncutover figures: {json.dumps(res)}; queries during cutover {len(seen)}, failed {len(errors)}")

    with Client(env.gw.address, timeout=60) as c:
        after = [c.search(image=ph, k=K) for ph in photos]
    assert {r.model_version for r in after} == {env.version_b}
    overlap = [len(set(b) & {h.item_id for h in r.hits}) / K for b, r in zip(before, after, strict=True)]
    assert sum(overlap) / len(overlap) >= 0.8  # same catalog, rotated space: same neighbours

    assert vsearch(["cutover", "rollback", "--admin", env.admin, "--admin-token", ADMIN_TOKEN]) == 0
    with Client(env.gw.address, timeout=60) as c:
        back = [[h.item_id for h in c.search(image=ph, k=K).hits] for ph in photos]
        assert c.search(image=photos[0], k=K).model_version == env.version_a
    assert back == before


def _run_args(env: Env, state: Path, out: Path) -> list[str]:
    return [
        "cutover", "run", "--admin", env.admin, "--admin-token", ADMIN_TOKEN,
        "--catalog", str(MANIFEST), "--new-shards",
        env.spec(env.shards_b), "--new-triton", env.triton_b.grpc_url, "--probes", str(env.probes),
        "--k", str(K), "--min-recall", "0.8", "--state", str(state), "--gateway", env.gw.address,
        "--json", str(out), "--batch", "8",
    ]


def test_failing_canary_blocks_the_switch(env: Env, tmp_path: Path) -> None:
    """New shards that do not answer the probes as expected are never switched to."""
    bad = tmp_path / "bad-probes.json"
    ps = canary.load_probes(env.probes)
    wrong = [canary.Probe(("no-such-item",), image=p.image, name=p.name) for p in ps.probes]
    canary.save_probes(canary.ProbeSet(wrong, K), bad, inline_images=True)
    with AdminClient(env.admin, token=ADMIN_TOKEN) as adm:
        before = adm.generations().current
    state = tmp_path / "state.jsonl"
    out = tmp_path / "result.json"
    args = _run_args(env, state, out)
    args[args.index("--probes") + 1] = str(bad)
    assert vsearch(args) == 1
    res = json.loads(out.read_text())
    assert not res["switched"] and any("canary" in p for p in res["problems"])
    with AdminClient(env.admin, token=ADMIN_TOKEN) as adm:
        assert adm.generations().current == before
