#!/usr/bin/env bash
# The NoGAN sharpening run of issue 11 (scripts/train_gan.py), started like the long runs
# (scripts/train_run.sh): in the background at the lowest priority, surviving the session, resumed
# from its checkpoint by the next `start`.
#
#   scripts/train_gan.sh start    # make train-gan: resume (or start from runs/restore/ckpt.pth)
#   scripts/train_gan.sh status   # make train-gan-status: running? the log's last lines
#   scripts/train_gan.sh stop     # stop it (ckpt.pth stays; start resumes)
#
# The run folder is ../runs/gan (beside the checkout, outside git; $RUN_DIR overrides). The
# generator snapshots gen_NNNNN.pth in it export with scripts/export.py --weights.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${RUN_DIR:-../runs/gan}
PY=${PY:-.venv/bin/python}
MINUTES=${MINUTES:-60}
# ~15 min of critic pretraining and ~40 min of adversarial steps on one shared CPU core
ARGS=(
    --init runs/restore/ckpt.pth --data ../shared/data/train
    --critic-steps 600 --gan-steps 1000 --bs 8 --size 48
    --lr-g 5e-5 --lr-d 2e-4 --adv 0.01 --fm 0 --pixel 1 --fft-weight 0.05
    --ckpt-every 25 --keep-every 100 --log-every 10 --threads 1 --seed 11
)
running() { [ -f "$RUN/train.pid" ] && kill -0 "$(cat "$RUN/train.pid")" 2>/dev/null; }

case "${1:-start}" in
start)
    if running; then echo "already running: pid $(cat "$RUN/train.pid") in $RUN"; exit 0; fi
    mkdir -p "$RUN"
    resume=()
    [ -f "$RUN/ckpt.pth" ] && resume=(--resume)
    # setsid makes a new scheduler autogroup (see scripts/train_run.sh): its nice value is set from
    # inside the new session, so the caller's autogroup is never the one lowered (writing
    # /proc/$!/autogroup from here races setsid, and can lower the caller's shell instead)
    OMP_WAIT_POLICY=PASSIVE setsid nohup bash -c 'echo 19 > /proc/self/autogroup 2>/dev/null;
        exec nice -n 19 "$@"' _ "$PY" -m scripts.train_gan --out "$RUN" "${ARGS[@]}" \
        --max-minutes "$MINUTES" "${resume[@]}" >> "$RUN/train.log" 2>&1 < /dev/null &
    echo $! > "$RUN/train.pid"
    echo "started pid $! (${resume[*]:-fresh}) writing $RUN; log $RUN/train.log"
    ;;
status)
    if running; then echo "running: pid $(cat "$RUN/train.pid")"; else echo "not running"; fi
    [ -f "$RUN/log.csv" ] && { head -n 1 "$RUN/log.csv"; tail -n 5 "$RUN/log.csv"; }
    ;;
stop)
    if running; then kill "$(cat "$RUN/train.pid")" && echo "stopped pid $(cat "$RUN/train.pid")"; fi
    ;;
*)
    echo "usage: $0 start|status|stop" >&2
    exit 2
    ;;
esac
