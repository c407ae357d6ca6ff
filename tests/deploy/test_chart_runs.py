"""The chart's workloads run and answer (issue 11, ask 2a): `helm template` output started by the
process-level runner (visual_search/deploy/runner.py) the way a cluster would start it - Triton
with the model repository its init container copies, every shard replica of every StatefulSet,
the gateway pods the HPA asks for - then real photos indexed through the gateway Service and
queried back, every probe the manifests declare checked, every METRICS.md metric scraped.

Two runs: the chart defaults with no edits at all, and defaults + tests/deploy/local-values.yaml
(auth on: the token comes from the chart-rendered Secret)."""

from __future__ import annotations

import base64
import io
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from visual_search import client as vc
from visual_search.deploy.runner import CHART, ChartRun, helm_binary
from visual_search.launcher import DEFAULT_MANIFEST, stack_missing

HERE = Path(__file__).resolve().parent
GATEWAY = "vs-visual-search-gateway"
LABELS = ("Oatly-Oat-Milk", "Arla-Sour-Milk", "Alpro-Blueberry-Soyghurt")
PER_LABEL = 2

_missing = "helm binary missing: run scripts/install_helm.sh" if helm_binary() is None else stack_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=str(_missing))


def catalog_rows() -> list[tuple[str, Path, str]]:
    from visual_search.client_cli import iter_source

    rows = [r for r in iter_source(DEFAULT_MANIFEST, "catalog") if r[2] in LABELS]
    return [r for label in LABELS for r in [x for x in rows if x[2] == label][:PER_LABEL]]


def metrics_contract(section: str) -> set[str]:
    """Metric names METRICS.md lists under `## <section>` (GPU-only rows left out: no GPU here)."""
    text = (CHART / "METRICS.md").read_text()
    m = re.search(rf"^## {section}\b.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m
    return {r.group(1) for r in re.finditer(r"^\| `([a-z0-9_]+)` \|[^\n]*$", m.group(1), re.M)
            if "GPU hosts only" not in r.group(0)}


def crop_jpeg(path: Path) -> bytes:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    buf = io.BytesIO()
    img.crop((int(w * 0.08), int(h * 0.08), int(w * 0.92), int(h * 0.92))).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def token_of(run: ChartRun) -> str | None:
    """The public API token from the chart-rendered Secret (not the shard token's Secret)."""
    sec = run.secrets.get("vs-visual-search-auth")
    return base64.b64decode(sec["data"]["token"]).decode() if sec else None


# VSEARCH_DEPLOY_BACKEND=podman (scripts/deploy_podman.sh): the same workloads as podman containers
# from scripts/build_images.sh's images, CPU Triton (triton.gpu.enabled=false: the GPU repository
# flavour needs the onnxruntime GPU backend). Default: local processes (CI).
PODMAN = os.environ.get("VSEARCH_DEPLOY_BACKEND") == "podman"


@pytest.fixture(scope="module", params=["defaults", "local-values"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartRun]:
    files = [] if request.param == "defaults" else [HERE / "local-values.yaml"]
    tmp = tmp_path_factory.mktemp(f"chart-{request.param}")
    if PODMAN:
        from visual_search.deploy.podman import PodmanChartRun

        cpu = ("triton.gpu.enabled=false",)
        chart: ChartRun = PodmanChartRun.render(tmp, values_files=files, set_values=cpu)
    else:
        chart = ChartRun.render(tmp, values_files=files)
    with chart:
        chart.start()
        chart.wait_ready(timeout=300)
        yield chart


@pytest.fixture(scope="module")
def indexed(run: ChartRun) -> dict[str, vc.IndexResult]:
    with vc.Client(run.service_address(GATEWAY, "grpc"), token=token_of(run), timeout=180) as c:
        items = [vc.IndexItem(i, p.read_bytes(), category=lbl) for i, p, lbl in catalog_rows()]
        return {r.item_id: r for r in c.index(items)}


def test_every_rendered_workload_runs(run: ChartRun) -> None:
    kinds = {(p.kind, p.workload.rsplit("-", 1)[-1] if p.kind == "Deployment" else "shard") for p in run.pods}
    assert {("Deployment", "gateway"), ("Deployment", "triton"), ("StatefulSet", "shard")} <= kinds
    sts = run.of_kind("StatefulSet")
    assert len([p for p in run.pods if p.kind == "StatefulSet"]) == sum(d["spec"]["replicas"] for d in sts)
    hpa = run.of_kind("HorizontalPodAutoscaler")[0]
    assert len([p for p in run.pods if p.workload == GATEWAY]) == hpa["spec"]["minReplicas"]


def test_triton_loads_every_model_of_the_repository(run: ChartRun) -> None:
    from visual_search.triton.client import TritonClient

    (triton,) = [p for p in run.pods if p.workload.endswith("-triton")]
    repo = triton.dir / "volumes" / "models"  # what the init container copied
    models = sorted(d.name for d in repo.iterdir() if (d / "config.pbtxt").exists())
    assert len(models) >= 10, models
    addr = run.service_address("vs-visual-search-triton", "grpc")
    with TritonClient(addr) as tc:
        for m in models:
            assert tc._c.is_model_ready(m), f"model {m} not ready"
        assert tc.encoder_version()


def test_shards_and_gateways_report_serving(run: ChartRun) -> None:
    for pod in run.pods:
        if pod.kind == "StatefulSet" or pod.workload == GATEWAY:
            with grpc.insecure_channel(f"127.0.0.1:{pod.local_port('grpc')}") as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert r.status == health_pb2.HealthCheckResponse.SERVING, pod.name


def test_photos_indexed_through_the_gateway_service(indexed: dict[str, vc.IndexResult]) -> None:
    assert len(indexed) == len(LABELS) * PER_LABEL
    bad = {k: (r.error_code, r.error_message) for k, r in indexed.items() if not r.ok}
    assert not bad
    assert {r.shard_id for r in indexed.values()} == {0, 1}


def test_photo_queries_find_the_right_product_first_on_every_gateway_pod(
    run: ChartRun, indexed: dict[str, vc.IndexResult]
) -> None:
    rows = catalog_rows()
    for pod in [p for p in run.pods if p.workload == GATEWAY]:
        with vc.Client(f"127.0.0.1:{pod.local_port('grpc')}", token=token_of(run), timeout=120) as c:
            for item_id, path, _ in rows[::PER_LABEL]:
                res = c.search(image=crop_jpeg(path), k=5)
                assert res.hits and res.hits[0].item_id == item_id, (pod.name, item_id, res.hits[:3])


def test_auth_follows_the_values(run: ChartRun, indexed: dict) -> None:
    """Defaults: no auth, no Secret. auth.enabled: the rendered Secret's token is required."""
    addr = run.service_address(GATEWAY, "grpc")
    with vc.Client(addr, timeout=30) as c:
        if token_of(run) is None:
            assert c.search(item_id=next(iter(indexed)), k=1).hits
        else:
            with pytest.raises(vc.Unauthenticated):
                c.search(item_id=next(iter(indexed)), k=1)


def test_every_declared_probe_answers(run: ChartRun, indexed: dict) -> None:
    seen = []
    for pod, container, kind, spec in run.probes():
        assert run.probe(pod, spec), f"{pod.name}/{container} {kind} {spec} fails"
        seen.append(kind)
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(seen)


def test_every_metric_in_the_contract_is_scraped(run: ChartRun, indexed: dict) -> None:
    with vc.Client(run.service_address(GATEWAY, "grpc"), token=token_of(run), timeout=60) as c:
        c.search(image=crop_jpeg(catalog_rows()[0][1]), k=5)  # query-path series on the first pod
    exported: dict[str, set[str]] = {"gateway": set(), "shard": set(), "triton": set()}
    for pod, url in run.metrics_urls():
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        component = (
            "gateway" if pod.workload == GATEWAY else "shard" if pod.kind == "StatefulSet" else "triton"
        )
        exported[component] |= set(re.findall(r"^# TYPE (\S+) \S+$", text, re.M))
    for section, component in (("Gateway", "gateway"), ("Shard", "shard"), ("Triton", "triton")):
        missing = metrics_contract(section) - exported[component]
        assert not missing, f"{section} metrics not scraped from the chart's pods: {sorted(missing)}"
