"""The chart's PrometheusRule expressions, unit-tested with `promtool test rules` (Debian's
prometheus package; scripts/install_promtool.sh) on synthetic series: each alert fires when it
should and stays quiet on a healthy quiet shard (no writes for days, index never rebuilt).

Annotations are left out of the tested copy of the rules (promtool would compare them verbatim);
`promtool check rules` validates the full rules, annotation templates included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chart_tools as manifests  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NS = "search"


def promtool() -> str | None:
    local = str(REPO / ".cache" / "bin" / "promtool")
    for c in (os.environ.get("PROMTOOL"), local, shutil.which("promtool")):
        if c and os.access(c, os.X_OK):
            return c
    return None


pytestmark = pytest.mark.skipif(
    manifests.helm_binary() is None or promtool() is None,
    reason="helm or promtool missing: run scripts/install_helm.sh and scripts/install_promtool.sh",
)

GW = f'namespace="{NS}",service="vs-visual-search-gateway"'
CANARY = 'job="vs-visual-search-canary"'


def shard_sel(i: int, r: int) -> str:
    pod = f"vs-visual-search-shard-{i}-{r}"
    return f'namespace="{NS}",service="vs-visual-search-shard-{i}",pod="{pod}",shard="{i}"'


def rules(tmp: Path) -> tuple[Path, Path]:
    values = tmp / "values.yaml"
    values.write_text(yaml.safe_dump({"canary": {"enabled": True, "probes": [
        {"query_item_id": "a", "expected_item_ids": ["a"]}]}}))
    docs = manifests.render([values], namespace=NS)
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    full = tmp / "rules-full.yaml"
    full.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    groups = []
    for g in rule["spec"]["groups"]:
        bare = [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]
        groups.append({**g, "rules": bare})
    tested = tmp / "rules.yaml"
    tested.write_text(yaml.safe_dump({"groups": groups}))
    return full, tested


def alert(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": e} for e in expected]}


def firing_case() -> dict[str, Any]:
    """Shard 0 takes a write every minute; replica 1 stops applying at minute 5. A gateway's
    ingest stalls from minute 3. Canary: shard 1's items are missed. One gateway reports a
    version mismatch from minute 5."""
    series = [
        {"series": f'vsearch_gateway_last_write_ack_timestamp_seconds{{{GW},pod="gw-a",shard="0"}}',
         "values": "60+60x40"},
        {"series": f"vsearch_shard_last_applied_write_timestamp_seconds{{{shard_sel(0, 0)}}}",
         "values": "60+60x40"},
        {"series": f"vsearch_shard_last_applied_write_timestamp_seconds{{{shard_sel(0, 1)}}}",
         "values": "60+60x4 300x36"},
        {"series": f'vsearch_gateway_ingest_behind_seconds{{{GW},pod="gw-a"}}', "values": "0x2 60+60x38"},
        {"series": f'vsearch_gateway_ingest_behind_seconds{{{GW},pod="gw-b"}}', "values": "0x40"},
        {"series": f'vsearch_canary_shard_recall{{{CANARY},k="10",shard="0"}}', "values": "1x40"},
        {"series": f'vsearch_canary_shard_recall{{{CANARY},k="10",shard="1"}}', "values": "0.4x40"},
        {"series": f'vsearch_gateway_model_version_consistent{{{GW},pod="gw-a"}}', "values": "1x4 0x36"},
        {"series": f'vsearch_gateway_model_version_consistent{{{GW},pod="gw-b"}}', "values": "1x40"},
    ]
    stalled = {"severity": "warning", "namespace": NS, "shard": "0", "pod": "vs-visual-search-shard-0-1"}
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            alert("VSearchIndexFreshnessBehind", "4m"),  # every replica applies what is acknowledged
            alert("VSearchIndexFreshnessBehind", "30m", stalled),  # only the stalled replica
            alert("VSearchIngestBehind", "5m"),
            alert("VSearchIngestBehind", "30m", {"severity": "warning", "namespace": NS, "pod": "gw-a"}),
            alert("VSearchCanaryShardRecallLow", "10m", {"severity": "critical", "shard": "1"}),
            alert("VSearchModelVersionMismatch", "3m"),
            alert(
                "VSearchModelVersionMismatch", "10m", {"severity": "critical", "namespace": NS, "pod": "gw-a"}
            ),
        ],
    }


QUIET_ALERTS = (
    "VSearchIndexFreshnessBehind", "VSearchIngestBehind", "VSearchCanaryShardRecallLow",
    "VSearchCanaryRecallLow", "VSearchCanaryStale", "VSearchModelVersionMismatch", "VSearchTargetDown",
)


def quiet_case() -> dict[str, Any]:
    """A healthy quiet shard for 3 days: its last writes were acknowledged and applied at t=600 s,
    nothing since; its ANN index is never rebuilt (the old age-based alert fired after 48 h)."""
    series = [
        {"series": f'vsearch_gateway_last_write_ack_timestamp_seconds{{{GW},pod="gw-a",shard="0"}}',
         "values": "600x80"},
        {"series": f'vsearch_gateway_ingest_behind_seconds{{{GW},pod="gw-a"}}', "values": "0x80"},
        {"series": f'vsearch_gateway_model_version_consistent{{{GW},pod="gw-a"}}', "values": "1x80"},
        {"series": f'vsearch_canary_shard_recall{{{CANARY},k="10",shard="0"}}', "values": "1x80"},
        {"series": f'vsearch_canary_recall{{{CANARY},k="10",model_version="m1"}}', "values": "1x80"},
        {"series": f"vsearch_canary_last_run_timestamp_seconds{{{CANARY}}}", "values": "0+3600x80"},
        {"series": f'up{{{GW},pod="gw-a"}}', "values": "1x80"},
    ]
    for r in range(2):
        series += [
            {"series": f"vsearch_shard_last_applied_write_timestamp_seconds{{{shard_sel(0, r)}}}",
             "values": "600x80"},
            {"series": f"vsearch_shard_index_age_seconds{{{shard_sel(0, r)}}}", "values": "0+3600x80"},
            {"series": f'up{{namespace="{NS}",service="vs-visual-search-shard-0",'
                       f'pod="vs-visual-search-shard-0-{r}"}}', "values": "1x80"},
        ]
    return {
        "interval": "1h",
        "input_series": series,
        "alert_rule_test": [alert(name, at) for name in QUIET_ALERTS for at in ("1h", "49h", "72h")],
    }


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = promtool()
    assert tool
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def test_rules_are_valid_promql(tmp_path: Path) -> None:
    full, _ = rules(tmp_path)
    proc = run_promtool("check", "rules", str(full))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alerts_fire_when_they_should_and_stay_quiet_on_a_quiet_shard(tmp_path: Path) -> None:
    _, tested = rules(tmp_path)
    spec = tmp_path / "alerts_test.yaml"
    spec.write_text(yaml.safe_dump({
        "rule_files": [tested.name], "evaluation_interval": "1m", "tests": [firing_case(), quiet_case()],
    }))
    proc = subprocess.run([promtool() or "", "test", "rules", spec.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The harness is not vacuous: claiming the stalled replica is fine makes promtool fail."""
    _, tested = rules(tmp_path)
    case = firing_case()
    case["alert_rule_test"] = [alert("VSearchIndexFreshnessBehind", "30m")]
    spec = tmp_path / "wrong_test.yaml"
    doc = {"rule_files": [tested.name], "evaluation_interval": "1m", "tests": [case]}
    spec.write_text(yaml.safe_dump(doc))
    proc = subprocess.run([promtool() or "", "test", "rules", spec.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
