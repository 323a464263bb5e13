# syntax=docker/dockerfile:1
# Image Enhancer: TorchServe + the page (default), or the Triton binding; CPU or CUDA.
#
#   docker build -t image-enhancer:cpu .                              # make docker
#   docker build --build-arg VARIANT=cuda -t image-enhancer:cuda .    # make docker-cuda
#   docker run -d --name enhancer -p 127.0.0.1:8080:8080 -p 127.0.0.1:5000:5000 image-enhancer:cpu
#   docker run -d --shm-size=1g -p 127.0.0.1:8000:8000 image-enhancer:cpu triton   # Triton instead
#
# The build runs the commands CI runs, so the image cannot drift from what is tested
# (tests/test_dockerfile.py checks it): scripts/setup.sh serve (`make setup`), `make setup-triton`,
# `make archive`. The shipped default model (model_store/enhancer.pt + .json) must be in the build
# context; it is archived into model_store/enhancer.mar here, at build time.

ARG VARIANT=cpu

# -- the two bases, picked by VARIANT ---------------------------------------------------------------
FROM python:3.11-slim-bookworm AS base-cpu
# the CPU-only torch wheel (about 200 MB instead of the CUDA build's gigabytes)
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# torch 2.13's default wheel on PyPI is built for CUDA 13.0 and brings its own CUDA libraries; the
# base brings the container toolkit's settings. Ubuntu 24.04's Python is 3.12 (the project
# supports >= 3.10).
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04 AS base-cuda
ENV TORCH_INDEX_URL=""

FROM base-${VARIANT}
ARG WITH_TRITON=1
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHON=python3 \
    PATH=/app/.venv/bin:$PATH \
    HOME=/home/enhancer
WORKDIR /app

# System packages (Java 17, tini, make, Python where missing) and the user "enhancer" (uid 10001).
COPY deploy/docker/system-packages.sh deploy/docker/system-packages.sh
RUN bash deploy/docker/system-packages.sh

# Python dependencies before any code, so that code changes reuse this layer: only what
# `make setup` reads (pyproject.toml and its readme). The project's packages (enhancer, frontend,
# scripts) are registered once the code is in: `make archive` runs scripts/setup.sh again, which
# does that.
COPY pyproject.toml README.md ./
COPY scripts/setup.sh scripts/setup.sh
RUN if [ -n "$TORCH_INDEX_URL" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"; fi; \
    scripts/setup.sh serve
COPY Makefile Makefile
RUN if [ "$WITH_TRITON" = 1 ]; then make setup-triton; fi

# The code, then the default model's archive, built by the same target CI runs.
COPY . .
RUN make archive
RUN install -d -o enhancer -g enhancer /app/.run && chown -R enhancer:enhancer /app/model_store

USER 10001:10001
# 8080 TorchServe inference (token auth on), 5000 the page; 8000/8001/8002 Triton (the `triton`
# command). Publish them on the host's loopback only: -p 127.0.0.1:8080:8080.
EXPOSE 8080 5000 8000 8001 8002
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["/app/.venv/bin/python", "/app/deploy/docker/entrypoint.py", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/app/.venv/bin/python", "/app/deploy/docker/entrypoint.py"]
CMD ["serve"]
