#!/usr/bin/env bash
# System packages and the service user of the Docker image. Run once, as root, by the Dockerfile,
# in a layer of its own so that code and dependency changes never repeat it.
#
#   - Java 17 for TorchServe's frontend (scripts/setup.sh would install the same package; here it
#     is cached apart from the Python dependencies);
#   - Python 3 with venv where the base image has none (the nvidia/cuda images);
#   - the shared libpython of that Python, which Triton's Python stub (PyTriton) loads: the
#     python:3.x images ship it, Debian's and Ubuntu's python3 keep it in a package of its own;
#   - tini, PID 1, which forwards signals and reaps TorchServe's and gunicorn's daemons;
#   - make, for `make archive` and `make setup-triton` in the later layers;
#   - the unprivileged user "enhancer" (uid 10001: numeric, so Kubernetes' runAsNonRoot can check
#     it, and clear of the uid 1000 some base images already use).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
packages=(openjdk-17-jre-headless tini make ca-certificates)
if ! command -v python3 >/dev/null || ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    packages+=(python3 python3-venv)
fi
apt-get install -y -qq --no-install-recommends "${packages[@]}"

version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! ldconfig -p | grep -q "libpython${version}\.so\.1\.0"; then
    apt-get install -y -qq --no-install-recommends "libpython${version}"
fi
rm -rf /var/lib/apt/lists/*

java -version 2>&1 | head -1
python3 --version
groupadd --gid 10001 enhancer
useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin enhancer
