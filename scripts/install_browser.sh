#!/usr/bin/env bash
# Debian's Chromium + ChromeDriver for the web page's browser test (no browser downloads: the
# network reaches only package registries). Needs root (CI runs as root); idempotent.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q chromium chromium-driver >/dev/null
