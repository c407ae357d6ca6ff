"""Behaviour of the visual-search Helm chart, checked on `helm template` output (no cluster).

Skipped only when the helm binary is missing (scripts/install_helm.sh installs it).
"""

from __future__ import annotations

import base64
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chart_tools as manifests  # noqa: E402  (sibling module, also used by scripts/check_helm.sh)

pytestmark = pytest.mark.skipif(
    manifests.helm_binary() is None, reason="helm binary missing: run scripts/install_helm.sh"
)

CI = manifests.CI_VALUES
NS = "search"
VALUE_SETS = sorted(p.name for p in CI.glob("*.yaml"))


def load_values(*files: str) -> dict[str, Any]:
    """Chart defaults overlaid with CI value files (shallow enough for what the tests read)."""
    import yaml

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for k, v in (b or {}).items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    values = yaml.safe_load((manifests.CHART / "values.yaml").read_text())
    for f in files:
        values = merge(values, yaml.safe_load((CI / f).read_text()))
    return values


_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], list[dict[str, Any]]] = {}


def render(*files: str, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    key = (files, sets)
    if key not in _cache:
        _cache[key] = manifests.render([CI / f for f in files], sets, namespace=NS)
    return _cache[key]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "CronJob")]


# --- rendering and validation ---------------------------------------------------------------------
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_value_set_renders_valid_manifests(value_set: str) -> None:
    docs = render(value_set)
    assert docs
    assert manifests.validate(docs, kube_versions=("1.31.0",)) == []


def test_validator_catches_errors() -> None:
    docs = json.loads(json.dumps(render("default-values.yaml")))  # deep copy
    gateway = one(docs, "Deployment", "-gateway")
    pod_spec(gateway)["containers"][0]["bogusField"] = 1
    rule = one(docs, "PrometheusRule", "")
    rule["spec"]["groups"][0]["rules"][0]["expr"] += ")"
    errors = manifests.validate(docs, kube_versions=("1.31.0",))
    assert any("bogusField" in e for e in errors), errors
    assert any("unbalanced" in e for e in errors), errors


# --- shards ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_one_statefulset_per_shard_with_replicas_and_pvcs(value_set: str) -> None:
    values = load_values(value_set)
    n, r = values["shards"]["count"], values["shards"]["replicas"]
    docs = render(value_set)
    sets = sorted(of_kind(docs, "StatefulSet"), key=lambda d: d["metadata"]["name"])
    assert len(sets) == n
    headless = {
        d["metadata"]["name"]: d for d in of_kind(docs, "Service") if d["spec"].get("clusterIP") == "None"
    }
    for i, sts in enumerate(sorted(sets, key=lambda d: int(d["metadata"]["name"].rsplit("-", 1)[1]))):
        name = sts["metadata"]["name"]
        assert name == f"vs-visual-search-shard-{i}"
        assert sts["spec"]["replicas"] == r
        # Each replica gets its own data volume.
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        assert claim["spec"]["resources"]["requests"]["storage"] == values["shards"]["persistence"]["size"]
        container = pod_spec(sts)["containers"][0]
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
        # The shard id comes from the shard's index.
        args = container["args"]
        assert args[0] == "shard"
        assert args[args.index("--shard-id") + 1] == str(i)
        assert args[args.index("--data-dir") + 1] == "/data"
        # No version string in values: a fresh shard is stamped with Triton's encoder version.
        assert "--model-version" not in args
        assert args[args.index("--triton") + 1] == f"vs-visual-search-triton.{NS}.svc.cluster.local:8001"
        # A headless Service per shard, selecting exactly this shard's pods.
        assert sts["spec"]["serviceName"] == name
        svc = headless[name]
        assert svc["spec"]["selector"]["visual-search.io/shard"] == str(i)
        assert sts["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


def test_shard_anti_affinity_hard_across_nodes_by_default() -> None:
    sts = of_kind(render("default-values.yaml"), "StatefulSet")[0]
    terms = pod_spec(sts)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["topologyKey"] == "kubernetes.io/hostname"
    assert terms[0]["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    soft = of_kind(render("cpu-triton-values.yaml"), "StatefulSet")[0]
    assert "preferredDuringSchedulingIgnoredDuringExecution" in pod_spec(soft)["affinity"]["podAntiAffinity"]


# --- gateway ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_gateway_shard_map_lists_every_replica(value_set: str) -> None:
    values = load_values(value_set)
    n, r, port = values["shards"]["count"], values["shards"]["replicas"], values["shards"]["port"]
    docs = render(value_set)
    config = json.loads(one(docs, "ConfigMap", "-gateway")["data"]["shards.json"])
    expected = [
        [
            f"vs-visual-search-shard-{i}-{j}.vs-visual-search-shard-{i}.{NS}.svc.cluster.local:{port}"
            for j in range(r)
        ]
        for i in range(n)
    ]
    assert config["shards"] == expected
    args = pod_spec(one(docs, "Deployment", "-gateway"))["containers"][0]["args"]
    assert args[args.index("--shards") + 1] == "/etc/vsearch/gateway/shards.json"
    assert args[args.index("--triton") + 1] == f"vs-visual-search-triton.{NS}.svc.cluster.local:8001"
    # Every address names a pod the StatefulSets actually create.
    pods = {
        f"{s['metadata']['name']}-{j}"
        for s in of_kind(docs, "StatefulSet")
        for j in range(s["spec"]["replicas"])
    }
    assert {addr.split(".")[0] for group in config["shards"] for addr in group} == pods


def test_close_match_threshold_is_calibrated_unless_set() -> None:
    def args(*sets: str) -> list[str]:
        gateway = one(render("default-values.yaml", sets=sets), "Deployment", "-gateway")
        return list(pod_spec(gateway)["containers"][0]["args"])

    assert "--close-match-threshold" not in args()  # the image's calibration.json decides
    a = args("gateway.closeMatchThreshold=0.7")
    assert a[a.index("--close-match-threshold") + 1] == "0.7"
    a = args("gateway.closeMatchThreshold=0")  # 0 = off must still be passed
    assert a[a.index("--close-match-threshold") + 1] == "0"


def test_query_strategy_value_reaches_the_gateway_flag() -> None:
    def args(*sets: str) -> list[str]:
        gateway = one(render("default-values.yaml", sets=sets), "Deployment", "-gateway")
        return list(pod_spec(gateway)["containers"][0]["args"])

    a = args()
    assert a[a.index("--query-strategy") + 1] == "max"  # the documented default
    a = args("gateway.queryStrategy=default-box")
    assert a[a.index("--query-strategy") + 1] == "default-box"


def test_gateway_config_change_rolls_pods() -> None:
    a = one(render("default-values.yaml"), "Deployment", "-gateway")
    b = one(render("default-values.yaml", sets=("shards.count=5",)), "Deployment", "-gateway")
    key = "checksum/config"
    assert (
        a["spec"]["template"]["metadata"]["annotations"][key]
        != b["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_tls_and_auth_wiring() -> None:
    docs = render("sharded-tls-auth-values.yaml")
    gateway = one(docs, "Deployment", "-gateway")
    spec = pod_spec(gateway)
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["VSEARCH_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "vsearch-api-token",
        "key": "token",
    }
    # existingSecret given: the chart renders no Secret of its own.
    assert of_kind(docs, "Secret") == []
    args = container["args"]
    assert args[args.index("--tls-cert") + 1] == "/etc/vsearch/tls/tls.crt"
    assert args[args.index("--tls-key") + 1] == "/etc/vsearch/tls/tls.key"
    assert args[args.index("--dedup-threshold") + 1] == "0.95"  # extraArgs appended
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "vsearch-gateway-tls"
    # kubelet gRPC probes are plaintext: with TLS the gateway is probed on its TCP socket.
    assert "tcpSocket" in container["readinessProbe"] and "grpc" not in container["readinessProbe"]
    # The canary uses the same token and TLS.
    canary = one(docs, "CronJob", "-canary")
    cargs = pod_spec(canary)["containers"][0]["args"]
    assert cargs[0] == "canary" and "--tls" in cargs
    assert cargs[cargs.index("--pushgateway") + 1].startswith("http://")


def test_generated_auth_secret_when_no_existing_secret() -> None:
    docs = render("default-values.yaml", sets=("auth.enabled=true", "auth.token=s3cret"))
    secret = one(docs, "Secret", "-search-auth")

    assert base64.b64decode(secret["data"]["token"]).decode() == "s3cret"
    env = {e["name"]: e for e in pod_spec(one(docs, "Deployment", "-gateway"))["containers"][0]["env"]}
    assert env["VSEARCH_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    # No token given: a random 32-character one is generated.
    random_docs = render("default-values.yaml", sets=("auth.enabled=true",))
    assert len(base64.b64decode(one(random_docs, "Secret", "-search-auth")["data"]["token"])) == 32


def _token_file(spec: dict[str, Any], container: dict[str, Any]) -> tuple[str, str]:
    """(Secret name, key) behind the container's VSEARCH_SHARD_TOKEN_FILE."""
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = env["VSEARCH_SHARD_TOKEN_FILE"]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    key = path[len(mount["mountPath"]) + 1 :]
    assert [i["key"] for i in volume["secret"]["items"]] == [key]
    return volume["secret"]["secretName"], key


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_shard_token_reaches_every_shard_and_the_gateway(value_set: str) -> None:
    """Shards refuse calls without the shard token: every shard pod and the gateway mount the same
    Secret (a file, never argv); it is rendered (random) unless an existing Secret is named."""
    docs = render(value_set)
    values = load_values(value_set)
    gateway = pod_spec(one(docs, "Deployment", "-gateway"))
    want = _token_file(gateway, gateway["containers"][0])
    for sts in of_kind(docs, "StatefulSet"):
        spec = pod_spec(sts)
        assert _token_file(spec, spec["containers"][0]) == want
        assert not any("token" in str(a).lower() for a in spec["containers"][0]["args"])
    rendered = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-shard-auth")]
    if values["shardAuth"]["existingSecret"]:
        assert want[0] == values["shardAuth"]["existingSecret"] and rendered == []
    else:
        (secret,) = rendered
        assert want == (secret["metadata"]["name"], "token")
        assert len(base64.b64decode(secret["data"]["token"])) == 48
    # A given token: used as is, and changing it rolls the shard pods.
    a = render("default-values.yaml", sets=("shardAuth.token=one",))
    b = render("default-values.yaml", sets=("shardAuth.token=two",))
    assert base64.b64decode(one(a, "Secret", "-shard-auth")["data"]["token"]) == b"one"
    key = "checksum/shard-auth"
    ann = [one(d, "StatefulSet", "-shard-0")["spec"]["template"]["metadata"]["annotations"] for d in (a, b)]
    assert ann[0][key] != ann[1][key]


def test_hpa_cpu_and_optional_custom_metric() -> None:
    hpa = of_kind(render("default-values.yaml"), "HorizontalPodAutoscaler")[0]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "vs-visual-search-gateway"
    docs = render("sharded-tls-auth-values.yaml")
    hpa = of_kind(docs, "HorizontalPodAutoscaler")[0]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    # The HPA owns the replica count.
    assert "replicas" not in one(docs, "Deployment", "-gateway")["spec"]
    fixed = render("cpu-triton-values.yaml")
    assert of_kind(fixed, "HorizontalPodAutoscaler") == []
    assert one(fixed, "Deployment", "-gateway")["spec"]["replicas"] == 3


# --- triton ----------------------------------------------------------------------------------------
def test_triton_gpu_scheduling_and_model_repository() -> None:
    values = load_values("default-values.yaml")
    triton = one(render("default-values.yaml"), "Deployment", "-triton")
    spec = pod_spec(triton)
    container = spec["containers"][0]
    # our Triton image (deploy/Dockerfile.triton-gpu): the plain NGC one lacks the models' deps
    assert container["image"].startswith("ghcr.io/visual-search/vsearch-triton-gpu:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    (init,) = spec["initContainers"]
    assert init["image"].startswith(values["triton"]["modelRepository"]["image"]["repository"])
    assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
    assert "--model-repository=/models" in container["args"]


def test_triton_cpu_only_and_pvc_source() -> None:
    spec = pod_spec(one(render("cpu-triton-values.yaml"), "Deployment", "-triton"))
    container = spec["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert "--allow-gpu-metrics=false" in container["args"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-source"]["persistentVolumeClaim"]["claimName"] == "vsearch-model-repository"


def test_triton_s3_source() -> None:
    spec = pod_spec(one(render("sharded-tls-auth-values.yaml"), "Deployment", "-triton"))
    (init,) = spec["initContainers"]
    assert "aws s3 sync" in init["args"][0] and "s3://vsearch-models/encoder-v2-3f9a1c/" in init["args"][0]
    assert init["envFrom"] == [{"secretRef": {"name": "vsearch-models-s3"}}]


# --- probes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_probes_present_and_startup_sized(value_set: str) -> None:
    values = load_values(value_set)
    docs = render(value_set)
    budgets = {
        "-triton": values["triton"]["startup"]["maxModelLoadSeconds"],
        "-gateway": values["gateway"]["startup"]["maxStartupSeconds"],
        "shard": values["shards"]["startup"]["maxRecoverySeconds"],
    }
    for workload in [w for w in workloads(docs) if w["kind"] != "CronJob"]:
        name = workload["metadata"]["name"]
        container = pod_spec(workload)["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container, f"{name} lacks {probe}"
        startup = container["startupProbe"]
        budget = next(b for suffix, b in budgets.items() if suffix in name)
        allowed = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget <= allowed < budget + startup["periodSeconds"], (name, allowed, budget)
        assert container["livenessProbe"]["failureThreshold"] >= 3
    triton = pod_spec(one(docs, "Deployment", "-triton"))["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_startup_threshold_rounds_up() -> None:
    docs = render("default-values.yaml", sets=("triton.startup.maxModelLoadSeconds=601",))
    startup = pod_spec(one(docs, "Deployment", "-triton"))["containers"][0]["startupProbe"]
    assert startup["failureThreshold"] == math.ceil(601 / startup["periodSeconds"])


# --- security --------------------------------------------------------------------------------------
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_security_contexts_non_root_read_only_no_caps(value_set: str) -> None:
    docs = render(value_set)
    assert workloads(docs)
    for workload in workloads(docs):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        assert spec["automountServiceAccountToken"] is False
        for container in spec.get("initContainers", []) + spec["containers"]:
            sc = container["securityContext"]
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert container["resources"]["requests"] and container["resources"]["limits"], where


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pdbs(value_set: str) -> None:
    values = load_values(value_set)
    docs = render(value_set)
    pdbs = {d["metadata"]["name"]: d for d in of_kind(docs, "PodDisruptionBudget")}
    shard_pdbs = [p for n, p in pdbs.items() if "-shard-" in n]
    if values["shards"]["pdb"]["enabled"]:
        assert len(shard_pdbs) == values["shards"]["count"]
        for sts in of_kind(docs, "StatefulSet"):
            pdb = pdbs[sts["metadata"]["name"]]
            assert pdb["spec"]["selector"] == sts["spec"]["selector"]
            assert pdb["spec"]["maxUnavailable"] == 1
    else:
        assert shard_pdbs == []
    gateway_pdb = pdbs["vs-visual-search-gateway"]
    assert gateway_pdb["spec"]["selector"] == one(docs, "Deployment", "-gateway")["spec"]["selector"]
    assert ("vs-visual-search-triton" in pdbs) == (values["triton"]["replicas"] > 1)


def test_network_policies_only_gateway_reaches_shards_and_triton() -> None:
    docs = render("default-values.yaml")
    policies = {d["metadata"]["name"]: d for d in of_kind(docs, "NetworkPolicy")}
    gateway_labels = one(docs, "Deployment", "-gateway")["spec"]["selector"]["matchLabels"]
    shard_labels = {  # replicas pull from their peers
        k: v
        for k, v in one(docs, "StatefulSet", "-shard-0")["spec"]["selector"]["matchLabels"].items()
        if k != "visual-search.io/shard"
    }
    for name, port, callers in (
        ("vs-visual-search-shards", 50061, [gateway_labels, shard_labels]),
        ("vs-visual-search-triton", 8001, [gateway_labels, shard_labels]),  # shards: version stamp
    ):
        rules = policies[name]["spec"]["ingress"]
        api_rule = next(r for r in rules if any(p["port"] == port for p in r["ports"]))
        assert api_rule["from"] == [{"podSelector": {"matchLabels": c}} for c in callers]
        metrics_rule = next(r for r in rules if r is not api_rule)
        assert "namespaceSelector" in metrics_rule["from"][0]
    assert of_kind(render("monitoring-disabled-values.yaml"), "NetworkPolicy") == []


# --- monitoring ------------------------------------------------------------------------------------
def test_monitoring_objects_and_alerts() -> None:
    docs = render("sharded-tls-auth-values.yaml")
    (sm,) = of_kind(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    scraped = [
        d
        for d in of_kind(docs, "Service")
        if d["metadata"]["labels"].get("visual-search.io/scrape") == "true"
    ]
    assert len(scraped) == 3 + 2  # every shard's headless Service, the gateway, Triton
    for svc in scraped:
        assert "metrics" in [p["name"] for p in svc["spec"]["ports"]]
        assert all(
            svc["metadata"]["labels"][k] == v for k, v in sm["spec"]["selector"]["matchLabels"].items()
        )
    (rule,) = of_kind(docs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    for name, metric in {
        "VSearchShardP99LatencyHigh": "vsearch_gateway_shard_request_seconds_bucket",
        "VSearchPartialResultsHigh": "vsearch_gateway_partial_results_total",
        "VSearchIndexFreshnessBehind": "vsearch_shard_last_applied_write_timestamp_seconds",
        "VSearchIngestBehind": "vsearch_gateway_ingest_behind_seconds",
        "VSearchCanaryShardRecallLow": "vsearch_canary_shard_recall",
        "VSearchModelVersionMismatch": "vsearch_gateway_model_version_consistent",
        "VSearchCanaryRecallLow": "vsearch_canary_recall",
        "VSearchEmbeddingNormDrift": "vsearch_gateway_embedding_norm_sum",
        "VSearchTritonQueueTimeHigh": "nv_inference_queue_duration_us",
    }.items():
        assert metric in alerts[name]["expr"], name
        assert alerts[name]["labels"]["team"] == "search"
    assert "< 0.9" in alerts["VSearchCanaryRecallLow"]["expr"]


def test_alert_metrics_are_documented_in_metrics_contract() -> None:
    import re

    contract = (manifests.CHART / "METRICS.md").read_text()
    (rule,) = of_kind(render("sharded-tls-auth-values.yaml"), "PrometheusRule")
    dashboard = (manifests.CHART / "dashboards" / "visual-search.json").read_text()
    used = set(re.findall(r"\b(?:vsearch|nv)_[a-z_]+", json.dumps(rule) + dashboard))

    def documented(metric: str) -> bool:  # histogram series: documented under the base name
        return f"`{metric}`" in contract or f"`{re.sub(r'_(bucket|sum|count)$', '', metric)}`" in contract

    missing = sorted(m for m in used if not documented(m))
    assert not missing, f"metrics used by alerts/dashboard but missing from METRICS.md: {missing}"


def test_monitoring_disabled_renders_no_monitoring_objects() -> None:
    docs = render("monitoring-disabled-values.yaml")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    assert not [d for d in of_kind(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]


def test_dashboard_configmap_ships_the_dashboard() -> None:
    cm = one(render("default-values.yaml"), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["visual-search.json"])
    assert dashboard["uid"] == "visual-search"
    titles = " ".join(p["title"] for p in dashboard["panels"])
    for word in ("stage", "shard", "Hedge", "Partial", "Index age", "Canary recall", "norm", "Triton queue"):
        assert word.lower() in titles.lower(), word


# --- schema ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("shards.replicas=-1",), "shards.replicas"),
        (("shards.count=0",), "shards.count"),
        (("shards.bogus=1",), "bogus"),
        (("unknownTopLevel=1",), "unknownTopLevel"),
        (("triton.modelRepository.source=ftp",), "source"),
        (("shards.podAntiAffinity=sometimes",), "podAntiAffinity"),
        (("gateway.port=70000",), "gateway.port"),
        (("canary.minRecall=1.5",), "minRecall"),
        (("gateway.closeMatchThreshold=1.5",), "closeMatchThreshold"),
        (("gateway.queryStrategy=min",), "queryStrategy"),
        (("modelVersion=v1",), "modelVersion"),  # gone: Triton is the one version truth
        (("tls.enabled=true",), "existingSecret"),
        (("monitoring.serviceMonitor.interval=soon",), "interval"),
    ],
)
def test_schema_rejects_bad_values(sets: tuple[str, ...], message: str) -> None:
    proc = manifests.helm_template([], sets, namespace=NS)
    assert proc.returncode != 0, f"{sets} was accepted"
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("gateway.autoscaling.minReplicas=5", "gateway.autoscaling.maxReplicas=2"), "maxReplicas"),
        (("canary.enabled=true",), "canary.probes"),
        (("triton.modelRepository.source=s3",), "s3.uri"),
    ],
)
def test_inconsistent_values_fail_with_clear_message(sets: tuple[str, ...], message: str) -> None:
    proc = manifests.helm_template([], sets, namespace=NS)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_shard_replicas_get_their_peers_and_probe_the_process() -> None:
    docs = render("default-values.yaml")
    sts = one(docs, "StatefulSet", "-shard-1")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    peers = container["args"][container["args"].index("--peers") + 1].split(",")
    assert len(peers) == sts["spec"]["replicas"] == 2
    assert all(p.startswith("vs-visual-search-shard-1-") for p in peers)
    # liveness/startup must not kill a replica that is up but still catching up (not ready)
    assert container["startupProbe"]["grpc"]["service"] == "process"
    assert container["livenessProbe"]["grpc"]["service"] == "process"
    assert "service" not in container["readinessProbe"]["grpc"]
    svc = one(docs, "Service", "-shard-1")
    assert svc["spec"]["publishNotReadyAddresses"] is True  # catching-up replicas reach each other
