#!/usr/bin/env bash
# Issue 11 ask 2b: the chart's rendered workloads (defaults + triton.gpu.enabled=false) as podman
# containers from the images of scripts/build_images.sh, checked by the same assertions as the
# CI process-level run (tests/deploy/test_chart_runs.py): Triton loads every model, shards and
# gateways SERVING, photos indexed through the gateway Service, crops found first, every probe,
# every METRICS.md metric. Not in CI (needs podman and the images: minutes to build).
# Usage: scripts/deploy_podman.sh [pytest args]   (build the images first)
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/.build/containers.conf}
VSEARCH_DEPLOY_BACKEND=podman exec .venv/bin/python -m pytest -q tests/deploy/test_chart_runs.py -k defaults "$@"
