#!/usr/bin/env bash
# Start the images built by scripts/build_images.sh as containers (podman, one network with DNS:
# containers reach each other by name, as Services do) and check they answer: Triton loads every
# model of its repository, a shard stamps itself with Triton's encoder version, the gateway is
# SERVING, photos are indexed through the gateway's published port and crops of them come back
# first. Not the chart's manifests (see tests/deploy for those): the same commands by hand.
# Usage: scripts/smoke_images.sh [--registry REGISTRY] [--tag TAG] [--port-base 25000]
set -euo pipefail
cd "$(dirname "$0")/.."
REGISTRY=localhost/visual-search
TAG=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BASE_PORT=25000
while [ $# -gt 0 ]; do
  case $1 in
    --registry) REGISTRY=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --port-base) BASE_PORT=$2; shift 2 ;;
    *) echo "smoke_images: unknown argument $1" >&2; exit 2 ;;
  esac
done
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/.build/containers.conf}
NET=vsearch-smoke
names=(vs-gateway vs-shard vs-triton)
DATA=""
cleanup() {
  podman rm -f "${names[@]}" >/dev/null 2>&1 || true
  podman network rm "$NET" >/dev/null 2>&1 || true
  if [ -n "$DATA" ]; then rm -rf "$DATA"; fi
}
trap cleanup EXIT
cleanup
podman network create "$NET" >/dev/null
t0=$SECONDS
podman run -d --name vs-triton --network "$NET" -p "127.0.0.1:$((BASE_PORT + 800)):8000" \
  --shm-size 1g "$REGISTRY/vsearch-triton:$TAG" --model-repository=/models --strict-readiness=true >/dev/null
until curl -sf "http://127.0.0.1:$((BASE_PORT + 800))/v2/health/ready" >/dev/null; do
  sleep 1
  if [ $((SECONDS - t0)) -gt 600 ] || ! podman container exists vs-triton \
     || [ "$(podman inspect -f '{{.State.Running}}' vs-triton)" != true ]; then
    podman logs vs-triton 2>&1 | tail -40; echo "smoke_images: Triton not ready" >&2; exit 1
  fi
done
echo "smoke_images: Triton ready in $((SECONDS - t0)) s with $(curl -s -X POST "http://127.0.0.1:$((BASE_PORT + 800))/v2/repository/index" | grep -o '"state":"READY"' | wc -l) models READY"
DATA=$(mktemp -d) && chmod 0777 "$DATA"  # the shard's volume (the image runs as UID 10001)
podman run -d --name vs-shard --network "$NET" -v "$DATA:/data" "$REGISTRY/vsearch:$TAG" \
  shard --data-dir /data --host 0.0.0.0 --port 50061 --shard-id 0 --triton vs-triton:8001 >/dev/null
podman run -d --name vs-gateway --network "$NET" -p "127.0.0.1:$((BASE_PORT + 51)):50051" "$REGISTRY/vsearch:$TAG" \
  gateway --shards vs-shard:50061 --triton vs-triton:8001 --host 0.0.0.0 --port 50051 >/dev/null
.venv/bin/python - "127.0.0.1:$((BASE_PORT + 51))" <<'PY'
import io, sys, time
from PIL import Image
from visual_search import client as vc
from visual_search.launcher import DEFAULT_MANIFEST
from visual_search.client_cli import iter_source
from visual_search.testing import wait_healthy

addr = sys.argv[1]
t0 = time.monotonic()
wait_healthy(addr, 300)
print(f"smoke_images: gateway SERVING after {time.monotonic() - t0:.1f} s")
rows = list(iter_source(DEFAULT_MANIFEST, "catalog"))[:40:5]
with vc.Client(addr, timeout=120) as c:
    res = list(c.index([vc.IndexItem(i, p.read_bytes(), category=l) for i, p, l in rows]))
    assert all(r.ok for r in res), [(r.item_id, r.error) for r in res if not r.ok]
    ok = 0
    for item_id, path, _ in rows:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        buf = io.BytesIO()
        img.crop((int(w * .08), int(h * .08), int(w * .92), int(h * .92))).save(buf, "JPEG", quality=85)
        hits = c.search(image=buf.getvalue(), k=5).hits
        ok += bool(hits) and hits[0].item_id == item_id
        print(f"  {item_id}: top {hits[0].item_id if hits else None}  (model {c.search(item_id=item_id, k=1).model_version})")
    print(f"smoke_images: {len(rows)} photos indexed through the gateway, {ok}/{len(rows)} crops found their product first")
    sys.exit(0 if ok == len(rows) else 1)
PY
