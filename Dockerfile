# syntax=docker/dockerfile:1
# samclip-serve container image (multi-stage), built from the repository root.
#
#   CPU (default): deploy/tools/make_base_image.sh          # once: debootstrap bookworm -> localhost/samclip-base:bookworm
#                  podman build --format docker -t samclip .
#                  (no registry pull: the base is made locally; apt and pip reach the Debian mirror and PyPI.
#                  Any Debian bookworm image works too: --build-arg BASE_IMAGE=docker.io/library/debian:bookworm-slim)
#   GPU:           podman build --format docker -t samclip:gpu \
#                    --build-arg BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 \
#                    --build-arg ORT_PACKAGE=onnxruntime-gpu .
#   deploy/build_image.sh [--gpu] [--bundle DIR] wraps both (podman or buildah).
#
# `--format docker` keeps HEALTHCHECK (the OCI image format has no field for it; podman warns and drops it).
# Hosts whose OCI runtime cannot start build containers (e.g. inside another container) add --isolation chroot.
#
# The model bundle (python -m model_export export ... --out DIR) is read from /models/bundle (SAMCLIP_BUNDLE):
# mount it there read-only (-v DIR:/models/bundle:ro, or the Helm chart's PVC / init container), or bake it in
# with --build-arg BUNDLE_DIR=<dir inside the build context> (default deploy/bundle holds only a README).
# SAMCLIP_BACKEND is left unset: the service's default `auto` picks the best backend present at start.
# Builder and runtime use the same BASE_IMAGE so the venv's interpreter path and ABI match.
# ORT_PACKAGE is a pip requirement: current onnxruntime-gpu wheels are CUDA 13 + cuDNN 9 builds (hence the
# CUDA 13 GPU base); for a CUDA 12 base pin a CUDA 12 build, e.g. ORT_PACKAGE=onnxruntime-gpu==1.22.0.

ARG BASE_IMAGE=localhost/samclip-base:bookworm

FROM ${BASE_IMAGE} AS builder
ARG ORT_PACKAGE=onnxruntime
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3008: apt versions are not pinned because BASE_IMAGE varies (Debian bookworm, Ubuntu 24.04 CUDA); the base
# image tag pins the distribution release, and the Python packages are what the service depends on.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY samclip_bundle ./samclip_bundle
COPY service ./service
# The wheel needs the README that pyproject.toml names; a minimal one stands in if the context lacks it.
RUN test -f README.md || echo "# samclip-serve" > README.md \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip wheel \
 && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install "$(ls /wheels/samclip_serve-*.whl)[serve]" \
 && if [ "${ORT_PACKAGE}" != "onnxruntime" ]; then \
      /opt/venv/bin/pip uninstall -y onnxruntime && /opt/venv/bin/pip install "${ORT_PACKAGE}"; \
    fi \
 && /opt/venv/bin/pip uninstall -y pip wheel \
 && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} + \
 && /opt/venv/bin/python -c "import onnxruntime, service; print(onnxruntime.get_available_providers())"

FROM ${BASE_IMAGE} AS runtime
ARG BUNDLE_DIR=deploy/bundle
ARG APP_UID=10001
LABEL org.opencontainers.image.title="samclip-serve" \
      org.opencontainers.image.description="SAM-CLIP model server: classify, text/prompt segment, refine" \
      org.opencontainers.image.licenses="Apache-2.0"
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Runtime: the interpreter only (no pip, no compilers, no torch). libgomp1 for ONNX Runtime's OpenMP builds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid "${APP_UID}" samclip \
 && useradd --uid "${APP_UID}" --gid samclip --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin samclip
COPY --from=builder /opt/venv /opt/venv
COPY ${BUNDLE_DIR}/ /models/bundle/
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SAMCLIP_BUNDLE=/models/bundle \
    SAMCLIP_HOST=0.0.0.0 \
    SAMCLIP_PORT=8000
WORKDIR /tmp
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SAMCLIP_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
CMD []
