#!/usr/bin/env bash
# Build a local Debian bookworm base image without any registry pull: debootstrap a minbase rootfs and
# `podman import` it. It is the root Dockerfile's default CPU base (a stand-in for `debian:bookworm-slim`), so
# the image builds on machines that cannot reach a container registry. The host's extra CA certificates
# (/usr/local/share/ca-certificates/*.crt, e.g. an egress proxy's) are added so apt/pip inside the build
# trust the same TLS endpoints as the host.
#
# Usage: deploy/tools/make_base_image.sh [IMAGE_NAME]   (default localhost/samclip-base:bookworm; needs root)
# Env:   MIRROR (default http://deb.debian.org/debian), SUITE (default bookworm), FORCE=1 to rebuild.
set -euo pipefail

IMAGE="${1:-localhost/samclip-base:bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUITE="${SUITE:-bookworm}"

if [ "${FORCE:-0}" != 1 ] && podman image exists "$IMAGE"; then
  echo "base image $IMAGE exists (FORCE=1 to rebuild)"
  exit 0
fi
for tool in debootstrap podman; do
  command -v "$tool" >/dev/null || { echo "missing $tool: deploy/tools/install_ci_tools.sh --system" >&2; exit 2; }
done

ROOTFS="$(mktemp -d /var/tmp/samclip-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" >/dev/null
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates >/dev/null
fi
# Same trimming as the official slim images: no apt lists, no docs, no caches.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/var/log/*.log
tar --numeric-owner -C "$ROOTFS" -c . | podman import \
  --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - "$IMAGE" >/dev/null
podman image ls "$IMAGE"
