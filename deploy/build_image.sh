#!/usr/bin/env bash
# Build the samclip-serve CPU (default) or GPU image with podman (or buildah) from the root Dockerfile.
#
# Usage: deploy/build_image.sh [--gpu] [--base IMAGE] [--tag TAG] [--bundle DIR] [--dry-run]
#   (CPU)          base localhost/samclip-base:bookworm, made here once with debootstrap + podman import
#                  (deploy/tools/make_base_image.sh; no registry pull) + onnxruntime
#   --gpu          GPU variant: CUDA runtime base (registry pull) + onnxruntime-gpu
#   --base IMAGE   override BASE_IMAGE (e.g. docker.io/library/debian:bookworm-slim); no local base is made
#   --local-base   accepted for compatibility: the local base is the CPU default now
#   --bundle DIR   bake the bundle DIR into /models/bundle (built from a staged copy of the context)
#   --tag TAG      image name (default samclip-serve:<version>-cpu|gpu)
#   --dry-run      print the build command and exit
# Env: BUILDER=podman|buildah (default: podman if present), BUILD_NETWORK (default host: pip/apt reach the
#      package indexes through the host network), BUILD_ISOLATION (default chroot; oci needs a working
#      runtime), EXTRA_BUILD_ARGS (appended verbatim).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)"
LOCAL_BASE=localhost/samclip-base:bookworm
VARIANT=cpu BASE="" TAG="" BUNDLE="" DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) VARIANT=gpu ;;
    --base) BASE="$2"; shift ;;
    --tag) TAG="$2"; shift ;;
    --bundle) BUNDLE="$2"; shift ;;
    --local-base) ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$VARIANT" = gpu ]; then
  ORT=onnxruntime-gpu; DEFAULT_BASE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
else
  ORT=onnxruntime; DEFAULT_BASE=$LOCAL_BASE
fi
BASE="${BASE:-$DEFAULT_BASE}"
TAG="${TAG:-samclip-serve:${VERSION}-${VARIANT}}"
BUILDER="${BUILDER:-$(command -v podman >/dev/null && echo podman || echo buildah)}"

CONTEXT="$ROOT"
if [ -n "$BUNDLE" ] && [ "$DRY_RUN" = 0 ]; then
  [ -f "$BUNDLE/manifest.json" ] || { echo "$BUNDLE has no manifest.json" >&2; exit 2; }
  CONTEXT="$(mktemp -d)"
  trap 'rm -rf "$CONTEXT"' EXIT
  cp -r "$ROOT/pyproject.toml" "$ROOT/samclip_bundle" "$ROOT/service" "$ROOT/.dockerignore" "$CONTEXT/"
  [ -f "$ROOT/README.md" ] && cp "$ROOT/README.md" "$CONTEXT/"
  mkdir -p "$CONTEXT/deploy"
  cp -rL "$BUNDLE" "$CONTEXT/deploy/bundle"
fi

# docker format keeps HEALTHCHECK and SHELL (OCI image config has no field for them). Chroot isolation runs the
# RUN steps without an OCI runtime, which also works inside containers and on hybrid-cgroup hosts.
args=(--format docker --isolation "${BUILD_ISOLATION:-chroot}" --network "${BUILD_NETWORK:-host}"
      -f "$ROOT/Dockerfile" -t "$TAG" --build-arg "BASE_IMAGE=$BASE" --build-arg "ORT_PACKAGE=$ORT")
if [ "$BUILDER" = buildah ]; then
  cmd=(buildah build "${args[@]}")
else
  cmd=(podman build "${args[@]}")
fi
# shellcheck disable=SC2206
cmd+=(${EXTRA_BUILD_ARGS:-} "$CONTEXT")
echo "+ ${cmd[*]}"
[ "$DRY_RUN" = 1 ] && exit 0
if [ "$BASE" = "$LOCAL_BASE" ]; then
  "$ROOT/deploy/tools/make_base_image.sh" "$LOCAL_BASE"
fi
"${cmd[@]}"
"$BUILDER" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F "${TAG##*/}" || true
