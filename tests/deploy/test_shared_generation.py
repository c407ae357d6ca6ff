"""Cutover with many gateway pods (issue 11, ask 4), on the chart's real processes: the serving
generation lives in the generation ConfigMap every gateway pod mounts; `vsearch cutover publish`
(what the chart's cutover Job runs) checks the target stack and writes the document; the runner
updates the mounted files as the kubelet would; every pod switches, then rolls back, and the
time from the file update until the last pod serves the new generation is measured."""

from __future__ import annotations

import json
import os
import platform
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from visual_search import client as vc
from visual_search.cutover.publish import PublishError, publish
from visual_search.deploy.runner import ChartRun, Pod, helm_binary
from visual_search.launcher import DEFAULT_MANIFEST, stack_missing
from visual_search.shard.process import ShardProcess

_missing = "helm binary missing: run scripts/install_helm.sh" if helm_binary() is None else stack_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=str(_missing))
PODS = 3
SETS = (
    "shards.count=1", "shards.replicas=1", "gateway.autoscaling.enabled=false", f"gateway.replicas={PODS}"
)
CM = "vs-visual-search-gateway-generation"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartRun]:
    chart = ChartRun.render(tmp_path_factory.mktemp("generation"), set_values=SETS)
    with chart:
        chart.start()
        chart.wait_ready(timeout=300)
        yield chart


def gateways(run: ChartRun) -> list[Pod]:
    return [p for p in run.pods if p.workload.endswith("-gateway")]


def serving(pod: Pod) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{pod.local_port('metrics')}/metrics", timeout=5) as r:
        m = re.search(r"^vsearch_gateway_serving_generation (\S+)$", r.read().decode(), re.M)
    return int(float(m.group(1))) if m else -99


def propagate(run: ChartRun, doc_path: Path, number: int, timeout: float = 30.0) -> dict[str, float]:
    """Kubelet step (the ConfigMap update reaches the pods' volumes), then seconds until each pod
    serves `number`."""
    t0 = time.monotonic()
    assert run.update_configmap(CM, {"generation.json": doc_path.read_text()}) == PODS
    took: dict[str, float] = {}
    while len(took) < PODS:
        for pod in gateways(run):
            if pod.name not in took and serving(pod) == number:
                took[pod.name] = time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"not every pod switched: {took}"
        time.sleep(0.05)
    return took


def test_every_pod_switches_and_rolls_back(
    run: ChartRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    from visual_search.triton.client import TritonClient

    # The target shards accept the chart's shard token (what the gateways send); publish sends it.
    token = base64.b64decode(run.secrets["vs-visual-search-shard-auth"]["data"]["token"]).decode()
    monkeypatch.setenv("VSEARCH_SHARD_TOKEN", token)

    triton = run.service_address("vs-visual-search-triton", "grpc")
    with TritonClient(triton) as tc:
        version = tc.encoder_version()
    photo = next((DEFAULT_MANIFEST.parent / "images").rglob("*.jpg"))
    with vc.Client(run.service_address("vs-visual-search-gateway", "grpc"), timeout=120) as c:
        (res,) = list(c.index([vc.IndexItem("live-item", photo.read_bytes())]))
        assert res.ok
    assert {serving(p) for p in gateways(run)} == {0}  # the chart's generation 0 everywhere

    # The published document starts as what the chart rendered (addresses as the pods see them).
    (live_pod,) = [p for p in gateways(run)][:1]
    doc = tmp_path / "generation.json"
    doc.write_text((live_pod.dir / "volumes" / "generation" / "generation.json").read_text())

    # A wrongly stamped target is refused before anything is published.
    refused = pytest.raises(PublishError, match="other-encoder")
    with ShardProcess(tmp_path / "wrong", shard_id=0, model_version="other-encoder") as wrong, refused:
        publish(shards=wrong.address, triton_url=triton, rollback=False, file=str(doc),
                configmap=None, namespace="search", token=token)
    assert json.loads(doc.read_text())["number"] == 0

    with ShardProcess(tmp_path / "new", shard_id=0, model_version=version) as new:
        published = publish(shards=new.address, triton_url=triton, rollback=False, file=str(doc),
                            configmap=None, namespace="search", token=token)
        assert published["number"] == 1 and published["model_version"] == version
        switch = propagate(run, doc, 1)
        for pod in gateways(run):  # the new (empty) shards answer on every pod
            addr = f"127.0.0.1:{pod.local_port('grpc')}"
            with vc.Client(addr, timeout=30) as c, pytest.raises(vc.NotFound):
                c.search(item_id="live-item", k=1)

        back = publish(shards=None, triton_url=None, rollback=True, file=str(doc), configmap=None,
                       namespace="search", token=token)
        assert back["number"] == 2
        rollback = propagate(run, doc, 2)
        for pod in gateways(run):
            with vc.Client(f"127.0.0.1:{pod.local_port('grpc')}", timeout=30) as c:
                assert c.search(item_id="live-item", k=1).lists  # known again (no NotFound)
    figures = {"pods": PODS, "poll_s": 1.0, "switch_s": switch, "rollback_s": rollback,
               "switch_max_s": max(switch.values()), "rollback_max_s": max(rollback.values())}
    print("generation propagation (file update -> pod serving):", json.dumps(figures))
    out = os.environ.get("VSEARCH_PROPAGATION_JSON")  # benchmarks/generation_propagation.json
    if out:
        Path(out).write_text(json.dumps({
            "what": "seconds from the generation ConfigMap's files changing in every gateway pod "
                    "(what the kubelet's refresh does) until each pod serves the published generation; "
                    "process-level chart run (tests/deploy/test_shared_generation.py)",
            "args": {"chart_sets": list(SETS), "generation_poll_s": 1.0},
            "machine": {"cpus": os.cpu_count(), "loadavg_1m_5m_15m": os.getloadavg(),
                        "platform": platform.platform()},
            "not_included": "the kubelet's own ConfigMap refresh delay (syncFrequency + cache TTL, "
                            "about a minute by default) - not measurable without a cluster",
            "results": figures,
        }, indent=1))
    # bounded by the poll period (1 s) + building the generation (connect, version check)
    assert figures["switch_max_s"] < 5 and figures["rollback_max_s"] < 3
