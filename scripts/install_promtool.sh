#!/usr/bin/env bash
# promtool (Prometheus' rule tester) -> .cache/bin/promtool, for `promtool test rules` on the
# chart's PrometheusRule (tests/helm/test_alerts.py). From Debian's `prometheus` package: the
# .deb is downloaded with apt-get and only its promtool binary is unpacked, so no Prometheus
# server/daemon is installed or started. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=.cache/bin
DEST="$BIN_DIR/promtool"
if [ -x "$DEST" ] && "$DEST" --version >/dev/null 2>&1; then
  echo "install_promtool: present: $("$DEST" --version 2>&1 | head -1)"
  exit 0
fi
mkdir -p "$BIN_DIR"
if command -v promtool >/dev/null 2>&1; then
  ln -sf "$(command -v promtool)" "$DEST"
  echo "install_promtool: using $(command -v promtool)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && apt-get download prometheus >/dev/null 2>&1 ) \
  || { apt-get update -qq >/dev/null 2>&1 && ( cd "$tmp" && apt-get download prometheus >/dev/null 2>&1 ); } || {
  echo "install_promtool: 'apt-get download prometheus' failed even after apt-get update;" \
    "tests/helm/test_alerts.py will skip (and fail on CI)" >&2
  exit 1
}
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
install -m 0755 "$tmp/root/usr/bin/promtool" "$DEST"
echo "install_promtool: installed $DEST: $("$DEST" --version 2>&1 | head -1)"
