#!/usr/bin/env bash
# Create or update the project's virtual environment in .venv, and the system packages it needs.
#
#   scripts/setup.sh serve   # TorchServe, the engine and the page (CPU torch is enough)
#   scripts/setup.sh dev     # + tests, training (fastai, full torch build), export (spandrel),
#                            #   Triton, Ray Serve, headless Chromium
#   scripts/setup.sh ray     # serve + Ray Serve (make ray)
#
# Idempotent: a stamp file per kind records the pyproject.toml it installed, so a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/.."

kind=${1:-serve}
case "$kind" in serve | dev | ray) ;; *) echo "usage: $0 serve|dev|ray" >&2; exit 2 ;; esac
python=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_updated=0
apt_install() {
    command -v apt-get >/dev/null || return 1
    if [ $apt_updated = 0 ]; then as_root apt-get update -qq || return 1; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@"
}

# TorchServe's frontend is a Java 17 program: without Java a request would hang, so stop here instead.
java_ok() { command -v java >/dev/null && java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])'; }
if ! java_ok; then
    echo "setup: Java 17 not found; installing openjdk-17-jre-headless" >&2
    apt_install openjdk-17-jre-headless || {
        echo "setup: TorchServe needs Java 17. Install it (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) and run again." >&2
        exit 1
    }
fi

if [ "$kind" = dev ] && ! command -v chromium >/dev/null; then
    echo "setup: installing Debian's chromium and chromium-driver for the browser tests" >&2
    apt_install chromium chromium-driver || {
        echo "setup: the browser tests need Chromium (Debian: apt-get install chromium chromium-driver)." >&2
        exit 1
    }
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
stamp=".venv/.installed-$kind-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    if [ "$kind" = dev ]; then
        # torchvision only imports beside the full torch build; where a local CPU-only wheel of the
        # same version is on offer (+cpu), refuse it explicitly.
        "${pip[@]}" "torch==2.13.0,!=2.13.0+cpu" "torchvision==0.28.0"
        "${pip[@]}" -e ".[test,train,export,triton,ray]"
    elif [ "$kind" = ray ]; then
        .venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
        "${pip[@]}" -e ".[ray]"
    else
        .venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
        "${pip[@]}" -e .
    fi
    touch "$stamp"
fi
# The face path's detector weights (enhancer/faces.py reads facenet-pytorch's shipped pnet/rnet/
# onet.pt, never its code): the wheel pins old torch/numpy/Pillow, so install it without its deps.
.venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('facenet_pytorch') is None)" \
    || "${pip[@]}" --no-deps "facenet-pytorch==2.6.0"
# The project's own packages (enhancer, frontend, scripts) are installed editable: an install made
# before their folders existed (the Docker image installs the dependencies before copying the code)
# does not know them, so register them again, without touching the dependencies.
if ! .venv/bin/python -c "import enhancer.contract, frontend, scripts.ops" 2>/dev/null; then
    "${pip[@]}" --no-deps -e .
fi
echo "setup: .venv ready ($kind)" >&2
