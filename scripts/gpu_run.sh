#!/usr/bin/env bash
# Issue 8's GPU path: when a session's `device` status shows a GPU (15 minutes of it, all tries
# together), one prepared command continues both long runs there and brings back models to ship.
#
#   scripts/gpu_run.sh prepare     # here: gpu-data/ (one folder, < 60 MiB: packed crops, the
#                                  # curve's validation images, the clean run's weights)
#   # the device tool's run, carrying gpu-data (and .whl, fastai's wheels, see below):
#   #   command: bash scripts/gpu_run.sh train        carry: ["gpu-data", ".whl"]
#   scripts/gpu_run.sh train       # there: clean, then restore from it; models and curves in $OUT
#
# `train` runs each model for at most $CLEAN_MINUTES / $RESTORE_MINUTES (default 3 + 3) on the
# settings of scripts/train_run.sh (its `args`), with GPU batch, loader workers and mixed precision
# (the settings that define the data and the model stay the runs' own), then exports each with its
# card and writes everything to $OUT (the device tool brings $OUT back): clean.pt/.json,
# restore.pt/.json, their ckpt.pth and curve.csv. Check the cards and the curves here, then
# evaluate and ship as for the CPU runs (runs/restore/README.md).
#
# The GPU machine has torch, torchvision, numpy, Pillow and PyYAML but not fastai: `prepare`
# downloads fastai's wheels and those of its pure-Python needs into .whl/ (pip works here, nothing
# is fetched there). A dry run on CPU (minutes): NO_WHEELS=1 CROPS_MIB=4 scripts/gpu_run.sh prepare &&
#   DEVICE=cpu PY=.venv/bin/python BS=4 ITERS=4 WORKERS=0 CLEAN_MINUTES=0.1 RESTORE_MINUTES=0.1 \
#   OUT=runs/gpu-dry scripts/gpu_run.sh train
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${GPU_DATA:-gpu-data}
OUT=${OUT:-runs/gpu}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
VAL14=(comic.png foreman.png zebra.png)  # train.py's VAL_DEFAULT: Set5 and these Set14 images

case "${1:-}" in
prepare)
    PY=${PY_HERE:-.venv/bin/python}
    rm -rf "$DATA" && mkdir -p "$DATA/eval/set5" "$DATA/eval/set14"
    "$PY" scripts/pack_data.py --data ${TRAIN_DATA:-../shared/data/train} --out "$DATA/crops.npy" \
        --side 160 --max-mib ${CROPS_MIB:-44}
    # the curve's validation subset (train.py's default: Set5 and three Set14 images)
    EVAL=${EVAL_DATA:-../shared/data/eval}
    cp "$EVAL"/set5/*.png "$DATA/eval/set5/"
    for f in "${VAL14[@]}"; do cp "$EVAL/set14/$f" "$DATA/eval/set14/"; done
    clean=../runs/clean/ckpt.pth
    [ -f "$clean" ] || clean=runs/clean/ckpt.pth
    "$PY" scripts/checkpoint.py weights "$clean" "$DATA/clean-init.pth"
    if [ -z "${NO_WHEELS:-}" ]; then
        grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
        rm -rf .whl && "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_17_x86_64 --platform any -d .whl \
            $("$PY" -m pip freeze | grep -iE '^(fastai|fastcore|fastprogress|fastdownload|fasttransform|plum-dispatch|beartype|rich)==')
    fi
    grep -qx "/$DATA/" .git/info/exclude 2>/dev/null || echo "/$DATA/" >> .git/info/exclude
    du -sh "$DATA" $([ -d .whl ] && echo .whl)
    ;;
train)
    if [ -d .whl ] && ! "$PY" -c "import fastai" 2>/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    mkdir -p "$OUT"
    gpu=(--pack "$DATA/crops.npy" --val "$DATA/eval/set5" "${VAL14[@]/#/$DATA/eval/set14/}" --device "$DEVICE" --precision auto
         --bs ${BS:-64} --iters ${ITERS:-100} --workers ${WORKERS:-12} --threads ${THREADS:-4}
         --val-every ${ITERS:-100} --log-every 50)
    mapfile -t clean_args < <(scripts/train_run.sh clean args)
    "$PY" -m scripts.train "${clean_args[@]}" "${gpu[@]}" --out "$OUT/clean" \
        --init-weights "$DATA/clean-init.pth" --budget-gpx ${CLEAN_GPX:-8} \
        --max-minutes ${CLEAN_MINUTES:-3} 2>&1 | tee "$OUT/clean.log"
    "$PY" scripts/checkpoint.py weights "$OUT/clean/ckpt.pth" "$OUT/restore-init.pth"
    mapfile -t restore_args < <(scripts/train_run.sh restore args)
    "$PY" -m scripts.train "${restore_args[@]}" "${gpu[@]}" --out "$OUT/restore" \
        --init-weights "$OUT/restore-init.pth" --budget-gpx ${RESTORE_GPX:-6} \
        --max-minutes ${RESTORE_MINUTES:-3} 2>&1 | tee "$OUT/restore.log"
    for name in clean restore; do
        "$PY" -m scripts.export --weights "$OUT/$name/ckpt.pth" --train-args "$OUT/$name/args.yaml" \
            --out "$OUT/$name.pt" --name "$name" --tile 256 --overlap 16
        cp "$OUT/$name/curve.csv" "$OUT/$name-curve.csv"
    done
    ls -la "$OUT"
    ;;
*)
    echo "usage: $0 prepare|train" >&2
    exit 2
    ;;
esac
