"""One version truth (issue 11, ask 3), with the chart's real processes: no version string in the
values; Triton's encoder version is the truth, a fresh shard is stamped with it, and a shard whose
data was embedded by another model makes the gateway NOT_SERVING (readiness fails, calls are
refused with FAILED_PRECONDITION, one clear log line) until it is replaced by a correct one."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator

import pytest

from visual_search import client as vc
from visual_search import contract as C
from visual_search.deploy.runner import ChartRun, helm_binary
from visual_search.launcher import stack_missing

_missing = "helm binary missing: run scripts/install_helm.sh" if helm_binary() is None else stack_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=str(_missing))
SMALL = ("shards.count=1", "shards.replicas=1", "gateway.autoscaling.enabled=false", "gateway.replicas=1")
OLD = "old-encoder-v0"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartRun]:
    tmp = tmp_path_factory.mktemp("version")
    values = tmp / "values.yaml"  # check every second (default 5 s) to keep the test short
    values.write_text('gateway:\n  extraArgs: ["--version-check-interval", "1"]\n')
    chart = ChartRun.render(tmp / "run", values_files=[values], set_values=SMALL)
    (shard,) = [p for p in chart.pods if p.kind == "StatefulSet"]
    # This replica's volume holds data embedded by another model (its stamp says so).
    stamp = {"model_version": OLD, "dim": C.EMBEDDING_DIM, "shard_id": 0, "created_unix": time.time()}
    (shard.claims["data"] / "shard.json").write_text(json.dumps(stamp))
    with chart:
        chart.start()
        yield chart


def pod(run: ChartRun, suffix: str):  # type: ignore[no-untyped-def]
    (p,) = [p for p in run.pods if p.workload.endswith(suffix)]
    return p


def test_no_version_string_in_the_rendered_manifests(run: ChartRun) -> None:
    text = json.dumps(run.docs)
    assert "--model-version" not in text and "VSEARCH_MODEL_VERSION" not in text


def test_mismatch_is_not_serving_then_a_correct_shard_serves(run: ChartRun) -> None:
    from visual_search.triton.client import TritonClient

    triton, shard, gateway = pod(run, "-triton"), pod(run, "-shard-0"), pod(run, "-gateway")
    run.wait_probe(triton)
    run.wait_probe(shard)
    run.wait_probe(gateway, "startupProbe")  # the process is up (not restarted by the kubelet) ...
    assert not any(run.probe(gateway, c["readinessProbe"]) for c in gateway.containers())  # ... not ready
    with TritonClient(run.service_address("vs-visual-search-triton", "grpc")) as tc:
        served = tc.encoder_version()
    assert served and served != OLD
    log = gateway.log_tail("gateway", 20000)
    assert "model version mismatch" in log and OLD in log and served in log
    addr = f"127.0.0.1:{gateway.local_port('grpc')}"
    refused = pytest.raises(vc.FailedPrecondition, match="model version mismatch")
    with vc.Client(addr, timeout=30) as c, refused:
        c.search(item_id="anything", k=1)

    # Replace the replica by a fresh one (new volume): it is stamped with Triton's version and the
    # gateway serves again at its next check.
    run.stop_pod(shard)
    shutil.rmtree(shard.claims["data"])
    shard.claims["data"].mkdir()
    run.start_pod(shard)
    run.wait_probe(shard)
    took = run.wait_probe(gateway, timeout=30)
    assert json.loads((shard.claims["data"] / "shard.json").read_text())["model_version"] == served
    assert "model versions agree again" in gateway.log_tail("gateway", 20000)
    with vc.Client(addr, timeout=30) as c, pytest.raises(vc.NotFound):
        c.search(item_id="anything", k=1)  # served (an unknown item), no longer refused
    assert took < 10
