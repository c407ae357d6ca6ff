"""Render and validate the visual-search Helm chart offline.

Used by scripts/check_helm.sh (as a command) and by tests/helm/test_chart.py (as a module):

    python tests/helm/chart_tools.py [--kube-version 1.27.0 ...] RENDERED.yaml ...

Core Kubernetes kinds are validated with kubernetes-validate (strict: unknown fields fail). The
Prometheus Operator kinds (ServiceMonitor, PrometheusRule) have no schema there, so they are
checked structurally against the subset of monitoring.coreos.com/v1 the chart uses, plus simple
PromQL sanity checks (balanced brackets, no unrendered Helm template left in expressions).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "visual-search"
CI_VALUES = CHART / "ci"
KUBE_VERSIONS = ("1.27.0", "1.31.0")  # the chart's minimum (Chart.yaml kubeVersion) and a recent one

CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def helm_binary() -> str | None:
    """helm from $HELM, .cache/bin (scripts/install_helm.sh) or PATH; None if absent."""
    for candidate in (os.environ.get("HELM"), str(REPO / ".cache" / "bin" / "helm"), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def helm_template(
    values_files: Sequence[str | os.PathLike[str]] = (),
    set_values: Sequence[str] = (),
    *,
    release: str = "vs",
    namespace: str = "search",
    helm: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `helm template` on the chart; returns the completed process (check returncode)."""
    helm = helm or helm_binary()
    if helm is None:
        raise FileNotFoundError("helm not found: run scripts/install_helm.sh")
    cmd = [helm, "template", release, str(CHART), "--namespace", namespace]
    for f in values_files:
        cmd += ["-f", str(f)]
    for s in set_values:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(
    values_files: Sequence[str | os.PathLike[str]] = (), set_values: Sequence[str] = (), **kw: Any
) -> list[dict[str, Any]]:
    """Rendered manifests as dicts; raises RuntimeError with helm's message on failure."""
    proc = helm_template(values_files, set_values, **kw)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or proc.stdout.strip())
    return load_docs(proc.stdout)


# --- structural schemas of the Prometheus Operator kinds (the subset the chart uses) -------------
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": _STRMAP, "matchExpressions": {"type": "array"}},
}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "labels": _STRMAP,
    },
}


def _crd_schema(spec_required: list[str], spec_properties: dict[str, Any]) -> dict[str, Any]:
    """A Prometheus Operator object: apiVersion/kind/metadata plus a closed `spec`."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": spec_required,
                "properties": spec_properties,
            },
        },
    }


SERVICE_MONITOR_SCHEMA = _crd_schema(
    ["selector", "endpoints"],
    {
        "jobLabel": {"type": "string"},
        "namespaceSelector": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "any": {"type": "boolean"},
                "matchNames": {"type": "array", "items": {"type": "string"}},
            },
        },
        "selector": _LABEL_SELECTOR,
        "endpoints": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["port"],
                "properties": {
                    "port": {"type": "string"},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "interval": _DURATION,
                    "scrapeTimeout": _DURATION,
                    "honorLabels": {"type": "boolean"},
                    "relabelings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "sourceLabels": {"type": "array", "items": {"type": "string"}},
                                "targetLabel": {"type": "string"},
                                "regex": {"type": "string"},
                                "replacement": {"type": "string"},
                                "separator": {"type": "string"},
                                "action": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
)
PROMETHEUS_RULE_SCHEMA = _crd_schema(
    ["groups"],
    {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "rules"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": _DURATION,
                    "rules": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["expr"],
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            "properties": {
                                "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
                                "record": {"type": "string"},
                                "expr": {"type": "string", "minLength": 1},
                                "for": _DURATION,
                                "labels": _STRMAP,
                                "annotations": _STRMAP,
                            },
                        },
                    },
                },
            },
        },
    },
)


def _promql_problems(expr: str) -> list[str]:
    problems = []
    if "{{" in expr or "}}" in expr:
        problems.append("unrendered template in expr")
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    in_string = False
    for ch in expr:
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            problems.append(f"unbalanced {ch!r}")
            break
    if stack or in_string:
        problems.append("unclosed bracket or string")
    return problems


def validate_crd(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    kind = doc["kind"]
    schema = SERVICE_MONITOR_SCHEMA if kind == "ServiceMonitor" else PROMETHEUS_RULE_SCHEMA
    errors = [
        f"{kind}: {e.message} at {list(e.absolute_path)}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]
    if kind == "PrometheusRule" and not errors:
        seen: set[str] = set()
        for group in doc["spec"]["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                if rule.get("alert"):
                    if name in seen:
                        errors.append(f"PrometheusRule: duplicate alert {name}")
                    seen.add(name)
                errors += [f"PrometheusRule {name}: {p}" for p in _promql_problems(rule["expr"])]
    return errors


def validate(docs: Iterable[dict[str, Any]], kube_versions: Sequence[str] = KUBE_VERSIONS) -> list[str]:
    """Every problem found in the rendered manifests (empty = valid)."""
    import kubernetes_validate

    errors: list[str] = []
    names: set[tuple[str, str, str]] = set()
    for doc in docs:
        kind, api = doc.get("kind", "?"), doc.get("apiVersion", "?")
        name = (doc.get("metadata") or {}).get("name", "?")
        key = (kind, (doc.get("metadata") or {}).get("namespace", ""), name)
        if key in names:
            errors.append(f"duplicate {kind}/{name}")
        names.add(key)
        if (api, kind) in CRD_KINDS:
            errors += [f"{kind}/{name}: {e}" for e in validate_crd(doc)]
            continue
        for version in kube_versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                errors.append(f"{kind}/{name} (k8s {version}): {exc.message} at {path}")
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{kind}/{name}: no schema for {api} in k8s {version}")
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="rendered manifest files (multi-document YAML)")
    parser.add_argument("--kube-version", action="append", help=f"default: {' '.join(KUBE_VERSIONS)}")
    args = parser.parse_args(argv)
    failed = False
    for path in args.files:
        docs = load_docs(Path(path).read_text())
        errors = validate(docs, args.kube_version or KUBE_VERSIONS)
        for e in errors:
            print(f"{path}: {e}", file=sys.stderr)
        kinds = sorted({d["kind"] for d in docs})
        print(f"{path}: {len(docs)} objects ({', '.join(kinds)}): {'FAILED' if errors else 'valid'}")
        failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
