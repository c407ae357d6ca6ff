"""The contract between the chart and the services: every metric METRICS.md lists for the
gateway, the shard and Triton is exported by the real processes, with the documented type, after
some traffic. The chart's alerts and dashboard query only names from METRICS.md (tests/helm), so
together they catch a renamed metric before a dashboard goes blank."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from visual_search.client import Client
from visual_search.launcher import DEFAULT_MANIFEST, Stack

ROOT = Path(__file__).resolve().parents[2]
METRICS_MD = ROOT / "helm" / "visual-search" / "METRICS.md"
TARGET_LABELS = {"namespace", "service", "pod", "instance", "job", "component"}


def contract(section: str) -> dict[str, str]:
    """{metric name: type} from the table under the `## <section>` heading of METRICS.md."""
    text = METRICS_MD.read_text()
    m = re.search(rf"^## {section}\b.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"no '## {section}' section in METRICS.md"
    out = {}
    for row in re.finditer(r"^\| `([a-z0-9_]+)` \| ([^|]+)\|(.*)$", m.group(1), re.M):
        if "GPU hosts only" in row.group(3):
            continue
        out[row.group(1)] = row.group(2).strip().split()[0]
    assert out, f"no metrics parsed from section {section}"
    return out


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def declared(text: str) -> dict[str, str]:
    """{name: type} from the '# TYPE' lines (present even before a labelled series has a sample)."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def check(text: str, section: str) -> None:
    have = declared(text)
    want = contract(section)
    missing = sorted(n for n in want if n not in have)
    assert not missing, f"{section}: METRICS.md lists metrics the process does not export: {missing}"
    wrong = {n: (t, have[n]) for n, t in want.items() if t != "gauge" and have[n] != t}
    assert not wrong, f"{section}: type differs from METRICS.md (documented, exported): {wrong}"
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            bad = TARGET_LABELS & set(s.labels)
            assert not bad, f"{s.name} carries target labels {bad} (set by the ServiceMonitor)"


def samples(text: str, name: str) -> list[dict[str, str]]:
    return [
        s.labels for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name
    ]


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> None:
    """Searches (default box, whole image, by vector), a Detect, an index and a delete."""
    photo = next((DEFAULT_MANIFEST.parent / "images").rglob("*.jpg")).read_bytes()
    with Client(stack.gateway.address, timeout=60) as c:
        for _ in range(3):
            res = c.search(image=photo, k=5)
            assert res.hits
        c.search(image=photo, whole_image=True, k=5)
        c.detect(photo)


def test_gateway_exports_the_contract(stack: Stack, traffic: None) -> None:
    text = scrape(stack.gateway.metrics_url)
    check(text, "Gateway")
    stages = {lab["stage"] for lab in samples(text, "vsearch_gateway_stage_seconds_count")}
    assert {"decode", "detect", "embed", "fanout", "merge", "rerank"} <= stages, stages
    assert samples(text, "vsearch_gateway_shard_request_seconds_count")
    assert samples(text, "vsearch_gateway_embedding_norm_count")
    methods = {lab["method"] for lab in samples(text, "vsearch_gateway_requests_total")}
    assert {"Search", "Detect"} <= methods


def test_shard_exports_the_contract(stack: Stack, traffic: None) -> None:
    for url in stack.shard_metrics_urls():
        text = scrape(url)
        check(text, "Shard")
        for fam in text_string_to_metric_families(text):
            if fam.name.startswith("vsearch_shard_"):
                assert all("shard" in s.labels for s in fam.samples), fam.name
        assert {lab["stage"] for lab in samples(text, "vsearch_shard_search_stage_seconds_count")} == {
            "ann", "rescore", "filter"
        }
        assert samples(text, "vsearch_shard_ingest_lag_seconds_count")  # the catalog was indexed
        assert samples(text, "vsearch_shard_info")[0]["model_version"] == stack.model_version


def test_triton_exports_the_contract(stack: Stack, traffic: None) -> None:
    text = scrape(f"http://127.0.0.1:{stack.triton.metrics_port}/metrics")
    have = declared(text)
    missing = sorted(n for n in contract("Triton") if n not in have)
    assert not missing, f"Triton does not export {missing}"
