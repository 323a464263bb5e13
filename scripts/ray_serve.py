"""Serve the enhancer on Ray Serve: the same engine and HTTP API as TorchServe, in replicas.

    .venv/bin/python -m scripts.ray_serve --replicas 2        # model_store/enhancer.pt, port 8000
    .venv/bin/python -m scripts.ray_serve --model runs/x/enhancer.pt --port 9000 --num-cpus 8 \\
        --replicas 4 --max-batch-size 8 --batch-wait-ms 20
    .venv/bin/python -m scripts.ray_serve --ray-address auto   # on a cluster started by `ray start`
    .venv/bin/python -m scripts.ray_serve stop                 # what Ctrl-C does, from elsewhere
    curl -T photo.jpg 'http://127.0.0.1:8000/predictions/enhancer?scale=4' -o photo_x4.jpg

Without ``--ray-address`` it starts a local single-node Ray cluster limited to ``--num-cpus``
(this machine's cores by default), each replica reserving its share of them (and using as many
torch threads). It runs in the foreground until Ctrl-C or SIGTERM, then stops Serve and the
cluster. Batching, queue and size limits come from ``handlers/model-config.yaml`` and
``config.properties``, as for TorchServe and Triton (``scripts.ops.serving``); the HTTP API is
TorchServe's (``enhancer.serving.ray_serve``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from scripts.ops import ray as ray_ops
from scripts.ops.paths import DEFAULT_MODEL, MODEL_CONFIG
from scripts.ops.serving import load_model_config, resolve_device, serving_defaults


def build_parser() -> argparse.ArgumentParser:
    defaults = serving_defaults(load_model_config())
    parser = argparse.ArgumentParser(
        prog="python -m scripts.ray_serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=("start", "stop"),
        default="start",
        help="start (default; in the foreground) or stop the one recorded in --pid-file",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        metavar="PT",
        help="TorchScript model with its card (.json) beside it (default: %(default)s)",
    )
    parser.add_argument(
        "--model-config",
        type=Path,
        default=MODEL_CONFIG,
        metavar="YAML",
        help="settings file; its handler: section sets the limits (default: %(default)s)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)"
    )
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="address the HTTP proxy binds (default: %(default)s; no token protects it)",
    )
    parser.add_argument("--port", type=int, default=ray_ops.DEFAULT_PORT, help="%(default)s")
    parser.add_argument(
        "--replicas", type=int, default=1, help="copies of the engine (default: %(default)s)"
    )
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=ray_ops.cpu_count(),
        help="CPUs of the local cluster (default: this machine's, %(default)s)",
    )
    parser.add_argument(
        "--cpus-per-replica",
        type=float,
        default=None,
        help="CPUs each replica reserves and uses (default: --num-cpus / --replicas)",
    )
    parser.add_argument(
        "--gpus-per-replica",
        type=float,
        default=None,
        help="GPUs each replica reserves on CUDA, fractions share one (default: 1)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=defaults["max_batch_size"],
        help="requests per engine call (default: batchSize of model-config.yaml, %(default)s)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=defaults["delay_us"] / 1000,
        help="how long a request waits for others to batch with "
        "(default: maxBatchDelay of model-config.yaml, %(default)s)",
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=defaults["queue_size"],
        help="requests waiting for a replica before 503 "
        "(default: job_queue_size of config.properties, %(default)s; 0: unbounded)",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=int,
        default=defaults["max_image_bytes"],
        help="largest request body, 413 above "
        "(default: max_request_size of config.properties, %(default)s)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="join this running Ray cluster (e.g. auto, after `ray start --head`) instead of "
        "starting a local one",
    )
    parser.add_argument(
        "--object-store-mb",
        type=int,
        default=ray_ops.DEFAULT_OBJECT_STORE_MB,
        help="the local cluster's object store (default: %(default)s)",
    )
    parser.add_argument(
        "--temp-dir",
        type=Path,
        default=None,
        help="the local cluster's session folder (default: Ray's, /tmp/ray; keep it short: "
        "Unix socket paths live there)",
    )
    parser.add_argument(
        "--pid-file",
        type=Path,
        default=ray_ops.PID_FILE,
        help="where the running server's pid is recorded (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the replicas to be ready (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    if args.action == "stop":
        try:
            print(ray_ops.stop_running(args.pid_file))
        except TimeoutError as error:
            print(error, file=sys.stderr)
            return 1
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.replicas < 1 or args.num_cpus < 1:
        print("ray: --replicas and --num-cpus must be at least 1", file=sys.stderr)
        return 2
    other = ray_ops.running_pid(args.pid_file)
    if other is not None:
        print(
            f"ray: already running (pid {other}); stop it with python -m scripts.ray_serve stop",
            file=sys.stderr,
        )
        return 1

    yaml_config = load_model_config(args.model_config)
    device = resolve_device(args.device)
    cpus = args.cpus_per_replica or args.num_cpus / args.replicas
    gpus = 0.0
    if device.startswith("cuda"):
        gpus = args.gpus_per_replica if args.gpus_per_replica is not None else 1.0
    config = ray_ops.replica_config(
        args.model,
        yaml_config,
        device="cuda" if gpus else device,  # Ray sets CUDA_VISIBLE_DEVICES per replica
        cpu_threads=max(int(cpus), 1),
        max_request_bytes=args.max_image_bytes,
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1000,
    )
    stop = threading.Event()
    ray_ops.write_pid(args.pid_file)
    try:
        ray_ops.start_cluster(
            address=args.ray_address,
            num_cpus=args.num_cpus,
            num_gpus=None,
            object_store_mb=args.object_store_mb,
            temp_dir=args.temp_dir,
        )
        # after ray.init, which installs handlers of its own
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stop.set())
        app = ray_ops.build_app(
            config,
            replicas=args.replicas,
            cpus_per_replica=cpus,
            gpus_per_replica=gpus,
            queue_size=args.queue_size,
        )
        timeout = yaml_config.get("responseTimeout")
        ray_ops.run_app(
            app,
            host=args.address,
            port=args.port,
            request_timeout_s=float(timeout) if timeout else None,
        )
        local = "127.0.0.1" if args.address in ("0.0.0.0", "::") else args.address
        base = f"http://{local}:{args.port}"
        ray_ops.wait_http_ready(f"{base}/ping", args.timeout)
        print(
            f"ray: '{ray_ops.APP_NAME}' READY after {time.monotonic() - started:.1f} s: "
            f"{args.replicas} replica(s) of {config.model} on {device}, {cpus:g} CPU(s) each; "
            f"batches of up to {args.max_batch_size} within {args.batch_wait_ms:g} ms, "
            f"queue {args.queue_size}"
        )
        print(f"ray: {base}/predictions/{ray_ops.APP_NAME}   (stop: Ctrl-C, or make ray-stop)")
        print(f"try:  curl -T photo.jpg '{base}/predictions/enhancer?scale=2' -o photo_x2.jpg")
        sys.stdout.flush()
        while not stop.wait(1.0):
            pass
        print("ray: stopping")
        sys.stdout.flush()
        return 0
    except TimeoutError as error:
        print(f"ray: {error}", file=sys.stderr)
        return 1
    finally:
        try:
            ray_ops.stop_all()
        finally:
            ray_ops.remove_pid(args.pid_file)


if __name__ == "__main__":
    sys.exit(main())
