"""Every container the chart renders with the vsearch image runs real `vsearch` flags: its args
parse with the CLI's own argparse parser (and pass the checks the command makes before it runs),
for the default values and every CI value set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from visual_search.cli import build_parser
from visual_search.deploy.runner import CHART, helm_binary, helm_template

pytestmark = pytest.mark.skipif(
    helm_binary() is None, reason="helm binary missing: run scripts/install_helm.sh"
)

VALUE_SETS = [None, *sorted((CHART / "ci").glob("*.yaml")), Path(__file__).parent / "local-values.yaml"]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            out.append((f"{d['kind']}/{d['metadata']['name']}", spec["template"]["spec"]))
    return out


def vsearch_containers(docs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    found = []
    for where, spec in pod_specs(docs):
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            if c["image"].split("@")[0].rsplit(":", 1)[0].endswith("/vsearch"):
                argv = [*(c.get("command") or [])[1:], *c.get("args", [])]  # command[0] = vsearch
                found.append((f"{where}/{c['name']}", [str(a) for a in argv]))
    return found


@pytest.mark.parametrize("values", VALUE_SETS, ids=lambda p: "defaults" if p is None else p.name)
def test_every_vsearch_container_parses_with_the_real_cli(values: Path | None) -> None:
    docs = helm_template([values] if values else [])
    containers = vsearch_containers(docs)
    assert any("gateway" in w for w, _ in containers) and any("shard" in w for w, _ in containers)
    parser = build_parser()
    for where, argv in containers:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{where}: `vsearch {' '.join(argv)}` does not parse (exit {exc.code})")
        if args.command == "shard":  # required to run a shard, checked in shard.cli._run
            from visual_search.shard.cli import _REQUIRED

            missing = [k for k in _REQUIRED if getattr(args, k) is None]
            assert not missing, f"{where}: missing {missing}"


def test_a_wrong_flag_is_caught() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["gateway", "--config", "/etc/vsearch/gateway/gateway.json", "--port", "1"])
