#!/usr/bin/env bash
# Build the CPU container images with podman (buildah underneath), without any registry:
#   REGISTRY/vsearch:TAG             services (gateway, shard, CLI, canary, cutover, triton CLI)
#   REGISTRY/vsearch-triton:TAG      tritonserver (CPU) + python deps + complete CPU model repository
#   REGISTRY/model-repository:TAG    /model_repository/{cpu,gpu}, complete, for the chart's init container
# The GPU Triton image (deploy/Dockerfile.triton-gpu) needs nvcr.io and is not built here.
#
# Usage: scripts/build_images.sh [--base IMAGE] [--registry REGISTRY] [--tag TAG]
#                                [--bootstrap-base] [--mirror URL] [--ca-bundle FILE]
#                                [--only vsearch|vsearch-triton|model-repository] [--push]
#   --base            Debian bookworm image to build FROM (default localhost/debian:bookworm)
#   --bootstrap-base  create --base first with debootstrap + podman import (no registry needed)
#   --mirror          Debian mirror for debootstrap (default: the one apt uses on this host)
#   --ca-bundle       CA bundle pip inside the build must trust (default: this host's bundle;
#                     needed behind an intercepting HTTPS proxy); "" = none
#   --push            push the images to REGISTRY afterwards
# Prints build seconds and image sizes; podman's settings for these machines (runc, ulimits,
# cgroupfs) come from a generated containers.conf (see ../shared/docs/environment.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=localhost/debian:bookworm
REGISTRY=localhost/visual-search
TAG=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BOOTSTRAP=0
MIRROR=""
CA=/etc/ssl/certs/ca-certificates.crt
ONLY=""
PUSH=0
while [ $# -gt 0 ]; do
  case $1 in
    --base) BASE=$2; shift 2 ;;
    --registry) REGISTRY=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --bootstrap-base) BOOTSTRAP=1; shift ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --ca-bundle) CA=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --push) PUSH=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build_images: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v podman >/dev/null || { echo "build_images: podman missing (apt-get install -y podman buildah debootstrap runc)" >&2; exit 1; }

mkdir -p .build
if [ -z "${CONTAINERS_CONF:-}" ]; then
  export CONTAINERS_CONF=$PWD/.build/containers.conf
  cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi
if [ -n "$CA" ] && [ -s "$CA" ]; then cp "$CA" .build/ca.crt; else : > .build/ca.crt; fi

if [ $BOOTSTRAP = 1 ] && ! podman image exists "$BASE"; then
  command -v debootstrap >/dev/null || { echo "build_images: debootstrap missing" >&2; exit 1; }
  if [ -z "$MIRROR" ]; then
    MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
      | grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?' | head -n1 || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
  fi
  t0=$SECONDS
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >.build/debootstrap.log 2>&1
  tar -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  echo "build_images: base $BASE bootstrapped in $((SECONDS - t0)) s"
fi

build() {  # build TARGET NAME
  local target=$1 name=$2 t0=$SECONDS
  podman build -f deploy/Dockerfile --ignorefile deploy/Dockerfile.dockerignore --target "$target" \
    --build-arg BASE_IMAGE="$BASE" -t "$REGISTRY/$name:$TAG" . >".build/$name.log" 2>&1 \
    || { tail -n 40 ".build/$name.log" >&2; echo "build_images: $name FAILED (log .build/$name.log)" >&2; exit 1; }
  local size
  size=$(podman image inspect --format '{{.Size}}' "$REGISTRY/$name:$TAG")
  echo "build_images: $REGISTRY/$name:$TAG built in $((SECONDS - t0)) s, $((size / 1000000)) MB"
  if [ $PUSH = 1 ]; then podman push "$REGISTRY/$name:$TAG"; fi
}
for pair in vsearch:vsearch triton-cpu:vsearch-triton model-repository:model-repository; do
  target=${pair%%:*} name=${pair##*:}
  if [ -z "$ONLY" ] || [ "$ONLY" = "$name" ]; then build "$target" "$name"; fi
done
