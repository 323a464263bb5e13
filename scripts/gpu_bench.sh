#!/usr/bin/env bash
# Issue 13's GPU readiness: one prepared command measures the engine on a GPU and runs the GPU
# tests, in under 8 minutes, writing everything to $OUT (the device tool brings $OUT back).
#
#   scripts/gpu_bench.sh prepare     # here: .whl-gpu/ (this project as a wheel, and the wheels the
#                                    # engine and the tests need that the GPU machine lacks)
#   # the device tool's run:  command: bash scripts/gpu_bench.sh run    carry: [".whl-gpu"]
#   scripts/gpu_bench.sh run         # there: the three parts below, each under its own timeout
#   scripts/gpu_bench.sh dry-run     # here, on CPU: arguments, paths, every code path on tiny cases
#
# 1. python -m scripts.gpu_bench: the shipped model's calls on batches of 256-pixel tiles, float32 /
#    TF32 / float16 / bfloat16, contiguous / channels_last, batch 1-32, eager and CUDA graph replay:
#    output MP/s and the fraction of the GPU's arithmetic peak (gpu_tiles.json, gpu_tiles.log).
# 2. python -m scripts.bench --device cuda: the engine as served (half precision, channels_last,
#    8 tiles a call) and at float32, against the naive float32 baseline, 1 MP and 4 MP, x2 and x4
#    (bench_gpu.json, bench_gpu.log). Target: the engine at least 3x the naive throughput.
# 3. pytest -m gpu (pytest_gpu.log).
#
# The GPU machine has torch, numpy, Pillow and PyYAML but not the project's virtualenv (too big to
# carry) nor pytest: `prepare` downloads those wheels (Python 3.12, as gpu_run.sh), and `run`
# installs them with --no-index into /tmp/site. Run `prepare` right before, so the project wheel
# is the code being measured.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/gpu-bench}
PY=${PY:-python3}
WHEELS=${WHEELS:-.whl-gpu}
# what the engine and the tests import beyond torch, numpy, Pillow and PyYAML
NEEDS='^(pillow-heif|pillow_heif|pyspng|pytest|pytest-timeout|pluggy|iniconfig|packaging|requests|urllib3|idna|certifi|charset-normalizer|tqdm|psutil)=='

timed() {  # timed SECONDS NAME command...: run one part, keep going if it fails or runs over
    local seconds=$1 name=$2
    shift 2
    echo "== $name (at most ${seconds}s) $(date -u +%T)"
    local rc=0
    timeout "$seconds" "$@" 2>&1 | tee "$OUT/$name.log" || rc=$?
    echo "== $name: exit $rc $(date -u +%T)"
}

case "${1:-}" in
prepare)
    PY=${PY_HERE:-.venv/bin/python}
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" . && rm -rf build
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --platform any -d "$WHEELS" $("$PY" -m pip freeze | grep -iE "$NEEDS")
    exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file
    grep -qx "/$WHEELS/" "$exclude" 2>/dev/null || echo "/$WHEELS/" >> "$exclude"
    du -sh "$WHEELS"
    ;;
run)
    mkdir -p "$OUT"
    if ! "$PY" -c "import enhancer, pytest, pillow_heif" 2>/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$WHEELS"/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt" || true
    "$PY" -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
    timed 150 gpu_tiles "$PY" -m scripts.gpu_bench --json "$OUT/gpu_tiles.json"
    timed 240 bench_gpu "$PY" -m scripts.bench --device cuda --cases 1x2 1x4 4x2 4x4 --reps 3 \
        --no-e2e --engine-precisions float32 float16 --json "$OUT/bench_gpu.json"
    timed 60 pytest_gpu "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
    ls -la "$OUT"
    ;;
dry-run)
    PY=${PY_HERE:-.venv/bin/python}
    mkdir -p "$OUT"
    for f in model_store/enhancer.pt model_store/enhancer.json tests/test_gpu.py; do
        [ -f "$f" ] || { echo "missing: $f" >&2; exit 1; }
    done
    "$PY" -m scripts.gpu_bench --dry-run --json "$OUT/gpu_tiles_dry.json"
    "$PY" -m scripts.bench --help > /dev/null
    "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py --co -q | tail -1
    echo "dry run: ok (the real run: scripts/gpu_bench.sh prepare, then the device tool with" \
        "command 'bash scripts/gpu_bench.sh run' and carry ['.whl-gpu'])"
    ;;
*)
    echo "usage: $0 prepare|run|dry-run" >&2
    exit 2
    ;;
esac
