"""Serve the enhancer on Triton Inference Server through PyTriton: the same engine as TorchServe.

    .venv/bin/python -m scripts.triton_serve                   # model_store/enhancer.pt, port 8000
    .venv/bin/python -m scripts.triton_serve --model runs/x/enhancer.pt --http-port 9000 \\
        --grpc-port 9001 --metrics-port 9002 --max-batch-size 8
    .venv/bin/python -m scripts.triton_client photo.jpg -o out.webp --scale 4 --format webp --check

PyTriton's wheel bundles ``tritonserver`` and runs on CPU. The model's inputs and outputs, and why
errors travel as outputs, are documented in ``enhancer.serving.triton`` (the adapter); batching,
queue and size limits come from ``handlers/model-config.yaml`` and ``config.properties`` so that
both servers refuse and batch alike (``scripts.ops.triton``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from enhancer.contract import MODEL_NAME
from enhancer.serving.triton import make_infer_func, model_config, model_tensors
from enhancer.settings import EnhancerSettings
from scripts.ops.paths import DEFAULT_MODEL, MODEL_CONFIG
from scripts.ops.serving import load_model_config, resolve_device, serving_defaults
from scripts.ops.triton import (
    load_enhancer,
    socket_path_problem,
    use_own_libpython,
    wait_model_ready,
)


def build_parser() -> argparse.ArgumentParser:
    model_config_values = load_model_config()
    defaults = serving_defaults(model_config_values)
    parser = argparse.ArgumentParser(
        prog="python -m scripts.triton_serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        metavar="PT",
        help="TorchScript model with its card (.json) beside it (default: %(default)s)",
    )
    parser.add_argument(
        "--model-name", default=MODEL_NAME, help="Triton model name (default: %(default)s)"
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
        help="address to bind HTTP, gRPC and metrics to (default: %(default)s; "
        "0.0.0.0 only inside a container or pod)",
    )
    parser.add_argument("--http-port", type=int, default=8000, help="default: %(default)s")
    parser.add_argument("--grpc-port", type=int, default=8001, help="default: %(default)s")
    parser.add_argument("--metrics-port", type=int, default=8002, help="default: %(default)s")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=defaults["max_batch_size"],
        help="requests per model execution (default: batchSize of model-config.yaml, %(default)s)",
    )
    parser.add_argument(
        "--batch-delay-ms",
        type=float,
        default=defaults["delay_us"] / 1000,
        help="how long a request waits for others to batch with "
        "(default: maxBatchDelay of model-config.yaml, %(default)s)",
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=defaults["queue_size"],
        help="queued requests before Triton rejects new ones "
        "(default: job_queue_size of config.properties, %(default)s; 0: unbounded)",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=int,
        default=defaults["max_image_bytes"],
        help="largest encoded image accepted, 413 above "
        "(default: max_request_size of config.properties, %(default)s)",
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="PyTriton's working folder, which must not exist yet "
        "(default: a fresh one in the temporary folder, removed at exit)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds to wait for the model to be ready (default: %(default)s)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="PyTriton's and Triton's own logs too"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        logging.getLogger("pytriton").setLevel(logging.WARNING)
    use_own_libpython()

    from pytriton.triton import Triton, TritonConfig

    yaml_config = load_model_config(args.model_config)
    settings = EnhancerSettings.from_model_config(yaml_config)
    device = resolve_device(args.device)
    enhancer = load_enhancer(args.model, device, settings)
    # admission by cost, as under TorchServe: a share of the same responseTimeout (413 over it)
    enhancer.admit_by_cost(yaml_config)
    inputs, outputs = model_tensors()
    config = model_config(args.max_batch_size, round(args.batch_delay_ms * 1000), args.queue_size)
    triton_config = TritonConfig(
        http_address=args.address,
        http_port=args.http_port,
        grpc_address=args.address,
        grpc_port=args.grpc_port,
        metrics_address=args.address,
        metrics_port=args.metrics_port,
        allow_sagemaker=False,
        allow_vertex_ai=False,
        log_verbose=1 if args.verbose else 0,
    )
    # PyTriton's default workspace is under ~/.cache; a private temporary folder (TMPDIR) instead
    scratch = None if args.workspace else Path(tempfile.mkdtemp(prefix="enhancer-triton-"))
    workspace = args.workspace or scratch / "workspace"
    problem = socket_path_problem(Path(workspace).resolve(), args.model_name)
    if problem:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"triton: {problem}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())

    triton = Triton(config=triton_config, workspace=workspace)
    try:
        triton.bind(
            model_name=args.model_name,
            infer_func=make_infer_func(enhancer, max_image_bytes=args.max_image_bytes),
            inputs=inputs,
            outputs=outputs,
            config=config,
            strict=True,  # outputs are checked against the declared dtypes and shapes
        )
        triton.run()
        local = "127.0.0.1" if args.address in ("0.0.0.0", "::") else args.address
        wait_model_ready(f"{local}:{args.http_port}", args.model_name, args.timeout)
        waited = time.monotonic() - started
        print(
            f"triton: '{args.model_name}' READY after {waited:.1f} s on {device} "
            f"(max batch {args.max_batch_size}, delay {args.batch_delay_ms:g} ms, "
            f"queue {args.queue_size})"
        )
        print(
            f"triton: http://{local}:{args.http_port}/v2/models/{args.model_name}  "
            f"grpc {local}:{args.grpc_port}  metrics http://{local}:{args.metrics_port}/metrics"
        )
        listed = enhancer.models()["models"]
        print(
            "triton: models (the model option): "
            + ", ".join(
                f"{m['name']} (x{m['scale']}{', default' if m['default'] else ''})" for m in listed
            )
        )
        print(
            f"try:    .venv/bin/python -m scripts.triton_client photo.jpg -o photo_x2.png "
            f"--url {local}:{args.http_port} --check"
        )
        sys.stdout.flush()
        while not stop.wait(1.0):
            if not triton.is_alive():
                print("triton: the server or the model stopped; exiting", file=sys.stderr)
                return 1
        print("triton: stopping")
        return 0
    except TimeoutError as error:
        print(f"triton: {error}", file=sys.stderr)
        return 1
    finally:
        triton.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
