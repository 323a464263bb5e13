#!/usr/bin/env bash
# The long runs of issue 8, `clean` and `restore`: one command to start or continue each, one to
# snapshot it into the repository, one to see where it is. Each trains in the background at the
# lowest priority and survives the session that started it; every working session continues it from
# its checkpoint.
#
#   scripts/train_run.sh clean start      # resume (or start) in the background: make train-clean
#   scripts/train_run.sh clean status     # running? pixels seen, the learning curve's last points
#   scripts/train_run.sh clean snapshot   # ckpt.pth (compact), curve.csv, args.yaml into runs/clean/
#   scripts/train_run.sh clean stop       # stop it (the last checkpoint stays; start resumes exactly)
#   scripts/train_run.sh restore start    # the same for restore: make train-restore, ...
#   scripts/train_run.sh clean args       # its settings, one per line
#
# The working run folder is ../runs/<name> (beside the checkout, outside git; $RUN_DIR overrides).
# `start` first seeds it from the committed snapshot runs/<name>/ when that is further along (a
# fresh machine, or a snapshot committed by another session), so a new session needs no copying.
# A restore run that has neither starts from the clean run's latest weights (warm start: the two
# stay one family, so the denoise option can interpolate between them).
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=${1:?usage: $0 clean|restore start|status|snapshot|stop}
RUN=${RUN_DIR:-../runs/$NAME}
SNAP=runs/$NAME
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-1}
# Everything that defines a run; --resume refuses to continue with other values (train.py checks).
# Both share the architecture: network interpolation needs the same parameters.
ARCH=(--nf 40,80,160 --blocks 3,1,2 --rep)
case "$NAME" in
clean)
    ARGS=(
        --data ../shared/data/train "${ARCH[@]}"
        --budget-gpx 12 --iters 500 --bs 16 --sizes 48,64,64
        --p-clean 0.8 --degrade blur_sigma=0.3,1.0 --degrade p_motion=0.05
        --degrade noise_sigma=1,5 --degrade jpeg_quality=60,95
        --lr 5e-4 --schedule flat-cos --pct-start 0.02 --cos-start 0.6 --clip 0.05 --fft-weight 0.05
        --precision bf16 --val-every 1000 --log-every 250 --keep-every 1000000 --seed 0
    )
    ;;
restore)
    # The second-order model (crappify.RESTORE) with its first-round downscale held to >= 0.4 and
    # its noise to sigma <= 20: this x2 model restores photos, it does not invent a 1/6-size one.
    # 10% plain bicubic pairs keep clean input clean. 128-px HR crops: JPEG blocks and the larger
    # blur kernels need the context. The curve follows evaluate.py's real-world track.
    ARGS=(
        --data ../shared/data/train "${ARCH[@]}" --second-order --p-clean 0.1
        --degrade resize_range=0.4,1.5 --degrade resize_range2=0.6,1.2
        --degrade blur_sigma=0.2,2.5 --degrade noise_sigma=1,20 --degrade noise_sigma2=1,15
        --degrade poisson_scale=0.05,2.0 --degrade poisson_scale2=0.05,1.5
        --budget-gpx 6 --iters 250 --bs 16 --sizes 64
        --lr 2e-4 --schedule flat-cos --pct-start 0.02 --cos-start 0.6 --clip 0.05 --fft-weight 0.05
        --precision bf16 --val-track real_world --val-every 500 --log-every 125
        --keep-every 1000000 --seed 1
    )
    ;;
*)
    echo "usage: $0 clean|restore start|status|snapshot|stop" >&2
    exit 2
    ;;
esac

steps_of() {  # steps in a checkpoint, 0 if there is none
    [ -f "$1" ] || { echo 0; return; }
    "$PY" -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=False)['steps'])" "$1"
}

running() {
    [ -f "$RUN/train.pid" ] && kill -0 "$(cat "$RUN/train.pid")" 2>/dev/null
}

case "${2:-start}" in
args)  # the run's settings, one per line (scripts/gpu_run.sh trains with them)
    printf '%s\n' "${ARGS[@]}"
    ;;
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
    if [ -f "$RUN/ckpt.pth" ]; then
        resume=(--resume)
    elif [ "$NAME" = restore ]; then
        clean=../runs/clean/ckpt.pth
        [ "$(steps_of runs/clean/ckpt.pth)" -gt "$(steps_of "$clean")" ] && clean=runs/clean/ckpt.pth
        [ -f "$clean" ] || { echo "no clean checkpoint to warm-start from"; exit 1; }
        "$PY" scripts/checkpoint.py weights "$clean" "$RUN/init.pth"
        resume=(--init-weights "$RUN/init.pth")
    fi
    # setsid + nohup: keeps running after this shell and session end; nice 19: others come first
    OMP_WAIT_POLICY=PASSIVE setsid nohup nice -n 19 "$PY" scripts/train.py --out "$RUN" \
        --threads "$THREADS" "${ARGS[@]}" "${resume[@]}" >> "$RUN/train.log" 2>&1 < /dev/null &
    echo $! > "$RUN/train.pid"
    # setsid puts the run in its own scheduler autogroup, where its nice value only ranks it against
    # itself: with autogroups on (Linux's default for desktops and this machine), a nice 19 run got
    # as much CPU as the tests beside it. The autogroup's own nice value is what yields.
    # Wait until setsid has moved the child into its own autogroup: written earlier, the value
    # lands on the caller's autogroup (this shell's session) and starves it instead.
    pid=$!
    for _ in $(seq 50); do
        [ "$(cut -d' ' -f1 "/proc/$pid/autogroup" 2>/dev/null)" != "$(cut -d' ' -f1 /proc/$$/autogroup)" ] && break
        sleep 0.1
    done
    if [ "$(cut -d' ' -f1 "/proc/$pid/autogroup" 2>/dev/null)" != "$(cut -d' ' -f1 /proc/$$/autogroup)" ]; then
        echo 19 > "/proc/$pid/autogroup" 2>/dev/null || true
    fi
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
    echo "usage: $0 clean|restore start|status|snapshot|stop" >&2
    exit 2
    ;;
esac
