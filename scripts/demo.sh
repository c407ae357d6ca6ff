#!/usr/bin/env bash
# README command 1: install, then run the main job on the embedded default: start local Triton +
# search shards + gateway on loopback, index the sample catalog, run real photo queries, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
exec vsearch demo "$@"
