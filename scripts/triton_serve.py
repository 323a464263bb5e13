"""Serve the enhancer on Triton Inference Server through PyTriton: the same engine as TorchServe.

    .venv/bin/python scripts/triton_serve.py                   # model_store/enhancer.pt, port 8000
    .venv/bin/python scripts/triton_serve.py --model runs/x/enhancer.pt --http-port 9000 \\
        --grpc-port 9001 --metrics-port 9002 --max-batch-size 8
    .venv/bin/python scripts/triton_client.py photo.jpg -o out.webp --scale 4 --format webp --check

PyTriton's wheel bundles ``tritonserver`` and runs on CPU; the model ``enhancer`` is a thin adapter
over ``engine.Enhancer`` (handlers/), exactly like the TorchServe handler: it turns Triton tensors
into image bytes and raw options, calls ``Enhancer.enhance_batch`` and turns each result or
``EnhanceError`` into output tensors. Decoding, validation, limits, tiling and encoding are the
engine's; the limits come from the same ``handlers/model-config.yaml`` (its ``handler:`` section).

Model ``enhancer`` (max_batch_size: the YAML's ``batchSize``; every tensor has shape [1] per row):

    inputs   image         BYTES  the encoded image (PNG, JPEG, WebP, ...), as uploaded
             options       BYTES  optional; a JSON object of option name -> value, e.g.
                                  {"scale": "4", "format": "webp"} (the TorchServe form fields)
    outputs  image         BYTES  the encoded result (empty when status is not 200)
             content_type  BYTES  e.g. b"image/png" (empty on error)
             width, height INT32  the output size (0 on error)
             status        INT32  200, or the engine's HTTP status: 400, 413, 415, 500 or 507
             error         BYTES  empty, or TorchServe's error body: {"code", "type", "message"}

Errors travel as outputs, not as Triton errors, because of what PyTriton 0.7.0 does with an
exception from the inference callable (proxy/inference.py ``_handle_requests``, proxy/model.py
``BatchResponsesHandler``; checked live): every request of the batch gets the same error, HTTP 500
"Failed to process the request(s) ... TritonModelException: Model execute error: Traceback ...",
whatever the exception, with the server's traceback and paths inside. There is no per-request error
and no way to choose the status code. So one bad upload would fail the good requests that the
dynamic batcher put beside it, and a 415 would be indistinguishable from a crash. With outputs, each
row carries its own status and the same JSON body TorchServe sends; an unexpected fault inside the
engine is its row's 500 (``InternalError``), as under TorchServe. Only an exception that escapes
the engine itself would fail a batch, with PyTriton's 500.

Dynamic batching: requests arriving within ``maxBatchDelay`` ms are handed over together (up to
``batchSize``), and the engine shares their tiles' model calls, as under TorchServe; the queue holds
at most ``job_queue_size`` (config.properties) requests and rejects the rest at once, as TorchServe
does.

libpython: PyTriton runs models through Triton's Python backend stub, which links the *system*
``libpython3.X.so.1.0``. When this interpreter is another build (pyenv, a python:3.x Docker image)
its own library directory must come first on LD_LIBRARY_PATH, or the stub dies at start with
errors such as "'_thread.RLock' object has no attribute '_recursion_count'". ``main`` sets that
before starting Triton; PyTriton hands ``os.environ`` to tritonserver, which hands it to the stub,
so no re-exec of this process is needed.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import logging
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
HANDLERS = REPO / "handlers"
MODEL_CONFIG = HANDLERS / "model-config.yaml"
TORCHSERVE_CONFIG = REPO / "config.properties"
DEFAULT_MODEL = REPO / "model_store" / "enhancer.pt"
MODEL_NAME = "enhancer"

sys.path.insert(0, str(HANDLERS))  # the engine modules import flat, as TorchServe imports them
from engine import Enhancer, configure_cpu_threads  # noqa: E402
from errors import BadRequest, EnhanceError, PayloadTooLarge  # noqa: E402
from settings import EnhancerSettings  # noqa: E402

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("image", "content_type", "width", "height", "status", "error")
OPTIONS_EXAMPLE = '{"scale": "4", "format": "webp"}'


# -- the adapter: Triton tensors <-> engine --------------------------------------------------------


def _rows(array: np.ndarray) -> list[object]:
    """The elements of a [n, 1] (or [n]) request tensor, one per row."""
    array = np.asarray(array)
    if array.ndim == 0:
        return [array.item()]
    return list(array.reshape(array.shape[0], -1)[:, 0])


def _as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.bytes_):  # only if a client sent fixed-width strings; NULs are kept
        return bytes(value)
    raise BadRequest(f"input '{name}' must be BYTES, not {type(value).__name__}")


def parse_options(raw: bytes) -> dict[str, str]:
    """The ``options`` input of one row: a JSON object of option name -> string or number.

    The values become the strings the TorchServe adapter would receive as form fields; which names
    exist and what values are valid is the engine's business (``options.parse_options``).

    Raises:
        BadRequest: (400) not UTF-8, not JSON, not an object, or a value neither text nor number.
    """
    if not raw.strip():
        return {}
    try:
        values = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(
            f"input 'options' is not a JSON object such as {OPTIONS_EXAMPLE}"
        ) from None
    if not isinstance(values, dict):
        raise BadRequest(f"input 'options' must be a JSON object such as {OPTIONS_EXAMPLE}")
    options = {}
    for name, value in values.items():
        # bool is an int in Python; true/false is no option's value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise BadRequest(
                f"option '{name}': give a string or a number, not {json.dumps(value)[:40]}"
            )
        options[name] = value if isinstance(value, str) else str(value)
    return options


def read_request(
    request: Mapping[str, np.ndarray], max_image_bytes: int | None = None
) -> list[tuple[bytes, dict[str, str]] | EnhanceError]:
    """Image bytes and raw options for each row of one Triton request, or the error of that row.

    Args:
        request: the request's input tensors by name.
        max_image_bytes: the largest encoded image accepted (413 above it), like TorchServe's
            ``max_request_size``; Triton itself sets no limit on a request's size.
    """
    if "image" not in request:
        # Triton 2.51 lets a request with only the optional input through (checked live); answer
        # each of its rows here rather than raise, which would fail the whole batch
        rows = len(_rows(request["options"])) if "options" in request else 1
        return [BadRequest("input 'image' is missing: send the image as BYTES")] * rows
    images = _rows(request["image"])
    options = _rows(request["options"]) if "options" in request else [b""] * len(images)
    if len(options) != len(images):  # Triton checks batch sizes match; this is belt and braces
        error = BadRequest(f"input 'options' has {len(options)} rows for {len(images)} images")
        return [error] * len(images)
    rows: list[tuple[bytes, dict[str, str]] | EnhanceError] = []
    for image, raw_options in zip(images, options, strict=True):
        try:
            data = _as_bytes(image, "image")
            if max_image_bytes is not None and len(data) > max_image_bytes:
                raise PayloadTooLarge(
                    f"the image is {len(data):,} bytes; the limit is {max_image_bytes:,} bytes"
                )
            rows.append((data, parse_options(_as_bytes(raw_options, "options"))))
        except EnhanceError as error:
            rows.append(error)
    return rows


def _column(values: Sequence[object], dtype: type) -> np.ndarray:
    """A [n, 1] output tensor; BYTES as an object array so trailing NUL bytes survive."""
    column = np.empty((len(values), 1), dtype=dtype)
    for i, value in enumerate(values):
        column[i, 0] = value
    return column


def outputs_for(outcomes: Sequence[object]) -> dict[str, np.ndarray]:
    """The output tensors of one request from its rows' engine Results or EnhanceErrors."""
    images, types, widths, heights, statuses, errors = [], [], [], [], [], []
    for outcome in outcomes:
        if isinstance(outcome, EnhanceError):
            images.append(b"")
            types.append(b"")
            widths.append(0)
            heights.append(0)
            statuses.append(outcome.status)
            errors.append(outcome.to_json())
        else:
            images.append(outcome.data)
            types.append(outcome.content_type.encode())
            widths.append(outcome.width)
            heights.append(outcome.height)
            statuses.append(200)
            errors.append(b"")
    return {
        "image": _column(images, np.object_),
        "content_type": _column(types, np.object_),
        "width": _column(widths, np.int32),
        "height": _column(heights, np.int32),
        "status": _column(statuses, np.int32),
        "error": _column(errors, np.object_),
    }


def make_infer_func(
    enhancer: Enhancer, *, max_image_bytes: int | None = None
) -> Callable[[Sequence[Mapping[str, np.ndarray]]], list[dict[str, np.ndarray]]]:
    """The PyTriton inference callable: a batch of requests in, one output dict per request out.

    Every row of every request goes through one ``Enhancer.enhance_batch`` call, so their tiles
    share model calls; each row gets its own result or error (see the module docstring for why
    errors are outputs). Only an engine bug raises.

    Args:
        enhancer: the loaded engine.
        max_image_bytes: see ``read_request``.
    """

    def infer(requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        started = time.perf_counter()
        per_request = [read_request(request, max_image_bytes) for request in requests]
        flat = [row for rows in per_request for row in rows]
        valid = [row for row in flat if not isinstance(row, EnhanceError)]
        results = iter(enhancer.enhance_batch(valid) if valid else [])
        outcomes = [row if isinstance(row, EnhanceError) else next(results) for row in flat]
        for outcome in outcomes:
            if isinstance(outcome, EnhanceError):
                logger.info("row refused: %d %s", outcome.status, outcome.message)
        responses, start = [], 0
        for rows in per_request:
            responses.append(outputs_for(outcomes[start : start + len(rows)]))
            start += len(rows)
        logger.info(
            "%d request(s), %d image(s), %d refused, in %.0f ms",
            len(requests),
            len(flat),
            sum(isinstance(outcome, EnhanceError) for outcome in outcomes),
            1000 * (time.perf_counter() - started),
        )
        return responses

    return infer


# -- configuration shared with TorchServe ---------------------------------------------------------


def load_model_config(path: Path = MODEL_CONFIG) -> dict[str, Any]:
    """The parsed handlers/model-config.yaml (TorchServe's per-model config)."""
    return yaml.safe_load(Path(path).read_text()) or {}


def serving_defaults(
    model_config: Mapping[str, Any], properties_path: Path = TORCHSERVE_CONFIG
) -> dict[str, int]:
    """Triton settings that match TorchServe's: batching, queue and request size.

    Returns:
        ``max_batch_size`` (model-config.yaml ``batchSize``), ``delay_us`` (``maxBatchDelay`` ms,
        in microseconds), ``queue_size`` (config.properties ``job_queue_size``; 0, Triton's
        "unbounded", if unset) and ``max_image_bytes`` (``max_request_size``; TorchServe's
        default 6553500 if unset).
    """
    if str(REPO / "scripts") not in sys.path:
        sys.path.insert(0, str(REPO / "scripts"))
    from serve import read_properties  # the parser scripts/serve.py uses for the same file

    properties = read_properties(properties_path) if Path(properties_path).exists() else {}
    return {
        "max_batch_size": int(model_config.get("batchSize", 1)),
        "delay_us": int(float(model_config.get("maxBatchDelay", 0)) * 1000),
        "queue_size": int(properties.get("job_queue_size", 0)),
        "max_image_bytes": int(properties.get("max_request_size", 6553500)),
    }


def model_tensors() -> tuple[list, list]:
    """The PyTriton input and output definitions (see the module docstring)."""
    from pytriton.model_config import Tensor

    inputs = [
        Tensor(name="image", dtype=np.bytes_, shape=(1,)),
        Tensor(name="options", dtype=np.bytes_, shape=(1,), optional=True),
    ]
    outputs = [
        Tensor(name="image", dtype=np.bytes_, shape=(1,)),
        Tensor(name="content_type", dtype=np.bytes_, shape=(1,)),
        Tensor(name="width", dtype=np.int32, shape=(1,)),
        Tensor(name="height", dtype=np.int32, shape=(1,)),
        Tensor(name="status", dtype=np.int32, shape=(1,)),
        Tensor(name="error", dtype=np.bytes_, shape=(1,)),
    ]
    return inputs, outputs


def model_config(max_batch_size: int, delay_us: int, queue_size: int):
    """PyTriton ModelConfig with dynamic batching and a bounded, rejecting queue."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, TimeoutAction

    if max_batch_size < 1:
        raise ValueError(f"max batch size must be at least 1, not {max_batch_size}")
    policy = QueuePolicy(timeout_action=TimeoutAction.REJECT, max_queue_size=max(queue_size, 0))
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=max(delay_us, 0), default_queue_policy=policy
    )
    return ModelConfig(
        batching=True, max_batch_size=max_batch_size, batcher=batcher, response_cache=False
    )


# -- the libpython detail -------------------------------------------------------------------------


def python_library_path(environ: Mapping[str, str] | None = None) -> str | None:
    """The LD_LIBRARY_PATH Triton's Python stub needs to load this interpreter's libpython.

    Args:
        environ: the environment to start from (default: ``os.environ``).

    Returns:
        The new value (this interpreter's LIBDIR first, then the old entries without it), or None
        when nothing must change: LIBDIR is already first, or the interpreter has no shared
        libpython (then the stub can only use a system one of the same minor version).
    """
    environ = os.environ if environ is None else environ
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not soname:
        return None
    if not (Path(libdir) / soname).exists():
        return None
    entries = [entry for entry in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if entry]
    if entries and os.path.realpath(entries[0]) == os.path.realpath(libdir):
        return None
    rest = [entry for entry in entries if os.path.realpath(entry) != os.path.realpath(libdir)]
    return os.pathsep.join([libdir, *rest])


def use_own_libpython() -> None:
    """Put this interpreter's libpython first for the processes Triton starts (module docstring)."""
    value = python_library_path()
    if value is not None:
        os.environ["LD_LIBRARY_PATH"] = value
        logger.info("LD_LIBRARY_PATH for Triton's Python stub: %s", value)
    elif not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        # e.g. Debian's and Ubuntu's python3: linked statically, its libpython is a package apart
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if ctypes.util.find_library(f"python{version}") is None:
            logger.warning(
                "no libpython%s.so found: Triton's Python stub cannot start. Install it (Debian "
                "and Ubuntu: apt-get install libpython%s) or use a Python built with "
                "--enable-shared",
                version,
                version,
            )


# -- the server ----------------------------------------------------------------------------------

# Unix socket paths hold at most 107 bytes on Linux (sockaddr_un.sun_path).
SOCKET_PATH_MAX = 107


def socket_path_problem(workspace: Path, model_name: str = MODEL_NAME) -> str | None:
    """Why PyTriton's Unix sockets would not fit their paths, or None when they do.

    PyTriton puts ``<model>_0_0-server.sock`` in its workspace, and the Python stub's
    multiprocessing manager listens at ``$TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX``; a path over the
    limit makes the model fail at load with a bare EOFError (checked live), so say it up front.
    """
    longest = {
        "the workspace": len(str(workspace / f"{model_name}_0_0-server.sock")),
        "TMPDIR": len(tempfile.gettempdir()) + len("/pymp-xxxxxxxx/listener-xxxxxxxx"),
    }
    too_long = {where: size for where, size in longest.items() if size > SOCKET_PATH_MAX}
    if not too_long:
        return None
    where, size = next(iter(too_long.items()))
    return (
        f"Unix socket paths under {where} would be {size} bytes, over the {SOCKET_PATH_MAX}-byte "
        "limit: set TMPDIR (or --workspace) to a shorter folder, e.g. TMPDIR=/tmp"
    )


def resolve_device(name: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; anything else as given."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_enhancer(model: Path, device: str, settings: EnhancerSettings) -> Enhancer:
    """Load the engine as the TorchServe handler does (card check, CPU threads)."""
    if not model.exists() or not model.with_suffix(".json").exists():
        raise SystemExit(
            f"triton: no model to serve: {model} and its card "
            f"{model.with_suffix('.json').name} are needed.\nThe default model comes from "
            "`make train && make export`; or serve your own: --model PATH.pt"
        )
    if device == "cpu":
        logger.info("CPU inference with %d threads", configure_cpu_threads(settings))
    return Enhancer.load(model, device=device, settings=settings)


def wait_model_ready(url: str, model_name: str, timeout: float) -> float:
    """Wait until Triton at ``url`` (host:port) says the model is ready; return the seconds waited.

    Raises:
        TimeoutError: not ready within ``timeout``.
    """
    import tritonclient.http as httpclient

    started = time.monotonic()
    client = httpclient.InferenceServerClient(url, connection_timeout=5, network_timeout=5)
    try:
        while True:
            try:
                if client.is_server_ready() and client.is_model_ready(model_name):
                    return time.monotonic() - started
            except Exception:  # noqa: BLE001 - connection refused while starting: keep waiting
                pass
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"model '{model_name}' not ready at {url} after {timeout:.0f} s")
            time.sleep(0.25)
    finally:
        client.close()


def build_parser() -> argparse.ArgumentParser:
    model_config_values = load_model_config()
    defaults = serving_defaults(model_config_values)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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

    settings = EnhancerSettings.from_model_config(load_model_config(args.model_config))
    device = resolve_device(args.device)
    enhancer = load_enhancer(args.model, device, settings)
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
        print(
            f"try:    .venv/bin/python scripts/triton_client.py photo.jpg -o photo_x2.png "
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
