#!/usr/bin/env bash
# The long `clean` run (issue 8): one command to start or continue it, one to snapshot it into the
# repository, one to see where it is. It trains in the background at the lowest priority and
# survives the session that started it; every working session continues it from its checkpoint.
#
#   scripts/train_clean.sh start      # resume (or start) in the background: make train-clean
#   scripts/train_clean.sh status     # running? pixels seen, the learning curve's last points
#   scripts/train_clean.sh snapshot   # ckpt.pth (compact), curve.csv, args.yaml into runs/clean/
#   scripts/train_clean.sh stop       # stop it (the last checkpoint stays; start resumes exactly)
#
# The working run folder is $CLEAN_RUN (default ../runs/clean: beside the checkout, outside git).
# `start` first seeds it from the committed snapshot runs/clean/ when that is further along (a
# fresh machine, or a snapshot committed by another session), so a new session needs no copying.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${CLEAN_RUN:-../runs/clean}
SNAP=runs/clean
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-1}
# Everything that defines the run; --resume refuses to continue with other values (train.py checks).
ARGS=(
    --data ../shared/data/train
    --nf 40,80,160 --blocks 3,1,2 --rep
    --budget-gpx 12 --iters 500 --bs 16 --sizes 48,64,64
    --p-clean 0.8 --degrade blur_sigma=0.3,1.0 --degrade p_motion=0.05
    --degrade noise_sigma=1,5 --degrade jpeg_quality=60,95
    --lr 5e-4 --schedule flat-cos --pct-start 0.02 --cos-start 0.6 --clip 0.05 --fft-weight 0.05
    --precision bf16 --val-every 1000 --log-every 250 --keep-every 1000000 --seed 0
)

steps_of() {  # steps in a checkpoint, 0 if there is none
    [ -f "$1" ] || { echo 0; return; }
    "$PY" -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=False)['steps'])" "$1"
}

running() {
    [ -f "$RUN/train.pid" ] && kill -0 "$(cat "$RUN/train.pid")" 2>/dev/null
}

case "${1:-start}" in
start)
    if running; then
        echo "already running: pid $(cat "$RUN/train.pid") in $RUN"
        exit 0
    fi
    mkdir -p "$RUN"
    if [ "$(steps_of "$SNAP/ckpt.pth")" -gt "$(steps_of "$RUN/ckpt.pth")" ]; then
        echo "seeding $RUN from the committed snapshot $SNAP ($(steps_of "$SNAP/ckpt.pth") steps)"
        cp "$SNAP/ckpt.pth" "$RUN/ckpt.pth.tmp" && mv "$RUN/ckpt.pth.tmp" "$RUN/ckpt.pth"
        cp "$SNAP/curve.csv" "$RUN/curve.csv"
    fi
    resume=()
    [ -f "$RUN/ckpt.pth" ] && resume=(--resume)
    # setsid + nohup: keeps running after this shell and session end; nice 19: others come first
    OMP_WAIT_POLICY=PASSIVE setsid nohup nice -n 19 "$PY" scripts/train.py --out "$RUN" \
        --threads "$THREADS" "${ARGS[@]}" "${resume[@]}" >> "$RUN/train.log" 2>&1 < /dev/null &
    echo $! > "$RUN/train.pid"
    echo "started pid $! (${resume[*]:-fresh}) writing $RUN; log $RUN/train.log"
    ;;
status)
    if running; then echo "running: pid $(cat "$RUN/train.pid")"; else echo "not running"; fi
    [ -f "$RUN/ckpt.pth" ] && "$PY" -c "
import sys, torch
c = torch.load(sys.argv[1], weights_only=False)
print(f\"checkpoint: epoch {c['epoch']}, step {c['steps']}, {c['pixels'] / 1e9:.3f} of \"
      f\"{c['budget'] / 1e9:.1f} G px, {c['cpu_s'] / 3600:.2f} CPU-h, {c['wall_s'] / 3600:.2f} h\")" \
        "$RUN/ckpt.pth"
    [ -f "$RUN/curve.csv" ] && { head -n 1 "$RUN/curve.csv"; tail -n +2 "$RUN/curve.csv" | tail -n 5; }
    ;;
snapshot)
    [ -f "$RUN/ckpt.pth" ] || { echo "no checkpoint in $RUN"; exit 1; }
    mkdir -p "$SNAP"
    # the compact copy (Adam moments in bf16, about 2/3 of the size): see scripts/checkpoint.py
    "$PY" scripts/checkpoint.py compact "$RUN/ckpt.pth" "$SNAP/ckpt.pth"
    cp "$RUN/curve.csv" "$RUN/args.yaml" "$SNAP/"
    echo "snapshot of step $(steps_of "$SNAP/ckpt.pth") in $SNAP: git add $SNAP && git commit"
    ;;
stop)
    if running; then kill "$(cat "$RUN/train.pid")" && echo "stopped pid $(cat "$RUN/train.pid")"; fi
    ;;
*)
    echo "usage: $0 start|status|snapshot|stop" >&2
    exit 2
    ;;
esac
