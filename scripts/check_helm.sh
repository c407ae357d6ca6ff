#!/usr/bin/env bash
# Offline checks of the Helm chart (no cluster needed):
#   1. yamllint on the chart's values files and CI value sets
#   2. helm lint (with the values schema) for each CI value set in helm/visual-search/ci/
#   3. helm template for each value set, then validation of the rendered manifests:
#      core kinds with kubernetes-validate (strict, k8s 1.27 and 1.31), ServiceMonitor and
#      PrometheusRule structurally (tests/helm/chart_tools.py)
#   4. the dashboard JSON parses
# Tools come from scripts/install_helm.sh (run it first; it is idempotent).
# Usage: scripts/check_helm.sh [OUT_DIR]   (rendered manifests are kept in OUT_DIR, default .cache/helm-rendered)
set -euo pipefail
cd "$(dirname "$0")/.."
CHART=helm/visual-search
HELM=${HELM:-.cache/bin/helm}
PY=${PY:-.venv/bin/python}
OUT=${1:-.cache/helm-rendered}

if [ ! -x "$HELM" ]; then
  echo "check_helm: $HELM not found; run scripts/install_helm.sh" >&2
  exit 2
fi
mkdir -p "$OUT"

echo "== yamllint"
"$PY" -m yamllint -s -d "{extends: default, rules: {line-length: {max: 110}, comments: {min-spaces-from-content: 1}}}" \
  "$CHART/values.yaml" "$CHART/Chart.yaml" "$CHART"/ci/*.yaml

echo "== dashboard JSON"
"$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], '-', len(d['panels']), 'panels')" \
  "$CHART/dashboards/visual-search.json"

rendered=()
for values in "$CHART"/ci/*.yaml; do
  name=$(basename "$values" .yaml)
  echo "== helm lint ($name)"
  "$HELM" lint --strict "$CHART" -f "$values" --quiet
  echo "== helm template ($name)"
  "$HELM" template vs "$CHART" --namespace search -f "$values" > "$OUT/$name.yaml"
  rendered+=("$OUT/$name.yaml")
done

echo "== validate rendered manifests"
"$PY" tests/helm/chart_tools.py "${rendered[@]}"
echo "check_helm: OK"
