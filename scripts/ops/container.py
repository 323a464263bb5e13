"""The Docker image's entrypoint: TorchServe and the page (``serve``), or Triton (``triton``).

``deploy/docker/entrypoint.py`` runs ``main``:

    entrypoint.py serve      # default CMD: TorchServe + the page in the foreground until SIGTERM
    entrypoint.py triton [triton_serve.py flags]   # the PyTriton binding, bound to 0.0.0.0
    entrypoint.py health     # HEALTHCHECK: exit 0 only when what `serve`/`triton` started is ready
    entrypoint.py ready [MANAGEMENT_URL]   # KServe pod readiness: a READY TorchServe worker

``serve`` starts exactly what ``make run`` starts, with the same code (``scripts.ops.torchserve``
``start``, ``scripts.ops.page``): the repository's config.properties and the archive built by
``make archive`` at image build time, run from .run/. One thing differs, because a container's
loopback is its own: TorchServe's *inference* address listens on all of the container's interfaces
(``ENHANCER_INFERENCE_ADDRESS``, default http://0.0.0.0:8080) so that ``docker run -p
127.0.0.1:8080:8080`` can reach it; management and metrics stay on the container's loopback, and
token authorization stays on (``docker exec <name> python -m scripts.serve key``; the health
check goes through ``enhancer.client`` like the page, so it rotates an expired key). The
page listens on 0.0.0.0:5000. Publish both on the host's loopback only, as the README shows.

It then watches both: if either exits, it stops the other and exits 1 so the container restarts
(Docker's restart policy, Kubernetes). SIGTERM or SIGINT stop both cleanly and exit 0. tini is PID 1
and forwards signals here; TorchServe's JVM and gunicorn run in sessions of their own.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import urllib.request
from pathlib import Path

from enhancer.client import worker_statuses
from enhancer.contract import MODEL_NAME
from scripts.ops import archive, page
from scripts.ops import torchserve as serve
from scripts.ops.paths import CONFIG, DEFAULT_MODEL, REPO, RUN_DIR
from scripts.ops.properties import write_config

MODE_FILE = RUN_DIR / "container.json"
CONTAINER_CONFIG = RUN_DIR / "container.properties"
PAGE_PORT = int(os.environ.get("ENHANCER_PAGE_PORT", "5000"))
TRITON_HTTP_PORT = int(os.environ.get("ENHANCER_TRITON_HTTP_PORT", "8000"))
WATCH_SECONDS = 5.0


def log(message: str) -> None:
    print(f"entrypoint: {message}", flush=True)


def write_container_config(inference_address: str) -> Path:
    """config.properties with only ``inference_address`` replaced (see the module docstring)."""
    return write_config(
        CONTAINER_CONFIG,
        {"inference_address": inference_address},
        base=CONFIG,
        note="container: the inference API on every interface of the container",
    )


def start_torchserve(model: Path, timeout: float) -> serve.Instance:
    """What ``python -m scripts.serve start`` does, with the container's config file."""
    config = write_container_config(
        os.environ.get("ENHANCER_INFERENCE_ADDRESS", "http://0.0.0.0:8080")
    )
    instance = serve.run_instance()  # addresses from config.properties: all reachable in here
    serve.start(instance, model, config=config, timeout=timeout, log=log)
    return instance


def run_serve() -> int:
    model = Path(os.environ.get("ENHANCER_MODEL", str(DEFAULT_MODEL)))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    MODE_FILE.parent.mkdir(parents=True, exist_ok=True)
    MODE_FILE.write_text(json.dumps({"mode": "serve", "page_port": PAGE_PORT}))
    try:
        instance = start_torchserve(model, float(os.environ.get("ENHANCER_START_TIMEOUT", "300")))
    except (serve.ServeError, archive.ArchiveError) as error:
        log(f"TorchServe did not start: {error}")
        return 1
    code = 0
    try:
        try:
            page.start("0.0.0.0", PAGE_PORT, log=log)
        except page.PageError as error:
            log(f"the page did not start: {error}")
            return 1
        log(f"serving: TorchServe :8080 (token: python -m scripts.serve key), page :{PAGE_PORT}")
        while not stop.wait(WATCH_SECONDS):
            if instance.pid() is None:
                log(f"TorchServe exited:\n{instance.log_tail()}")
                code = 1
                break
            if page.read_state() is None:
                log("the page exited (see .run/logs/page.log)")
                code = 1
                break
        else:
            log("stopping")
    finally:
        page.stop()
        serve.stop(instance)
    return code


def http_port(args: list[str], default: int) -> int:
    """The ``--http-port`` among triton_serve.py flags (its last one, as argparse takes)."""
    port = default
    for i, arg in enumerate(args):
        if arg.startswith("--http-port="):
            port = int(arg.partition("=")[2])
        elif arg == "--http-port" and i + 1 < len(args):
            port = int(args[i + 1])
    return port


def run_triton(args: list[str]) -> int:
    port = http_port(args, TRITON_HTTP_PORT)
    MODE_FILE.parent.mkdir(parents=True, exist_ok=True)
    MODE_FILE.write_text(json.dumps({"mode": "triton", "http_port": port}))
    command = [sys.executable, "-m", "scripts.triton_serve", "--address", "0.0.0.0",
               "--http-port", str(port), *args]  # fmt: skip
    os.chdir(REPO)
    os.execv(command[0], command)  # the binding handles SIGTERM itself


def health() -> int:
    """0 when the services of this container's mode are ready, else 1 (Docker HEALTHCHECK)."""
    try:
        state = json.loads(MODE_FILE.read_text())
    except (OSError, ValueError):
        return 1
    if state.get("mode") == "triton":
        import tritonclient.http as httpclient

        url = f"127.0.0.1:{state['http_port']}"
        client = httpclient.InferenceServerClient(url, connection_timeout=5, network_timeout=5)
        try:
            return 0 if client.is_model_ready(MODEL_NAME) else 1
        except Exception:  # noqa: BLE001 - not answering is simply "unhealthy"
            return 1
        finally:
            client.close()
    if not serve.run_instance().ready():
        return 1
    try:
        status, _ = page.health(f"http://127.0.0.1:{state['page_port']}", timeout=5)
    except (OSError, ValueError):
        return 1
    return 0 if status == 200 else 1


def worker_ready(management_url: str, model_name: str = MODEL_NAME) -> bool:
    """Whether TorchServe's management API (token auth off, as in the KServe pod) shows a READY
    worker. TorchServe's own /ping answers 200 before the worker has loaded the model (seen live),
    so it is no readiness signal."""
    try:
        with urllib.request.urlopen(f"{management_url}/models/{model_name}", timeout=5) as response:
            described = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return "READY" in worker_statuses(described)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, rest = (argv[0], argv[1:]) if argv else ("serve", [])
    if command == "serve":
        return run_serve()
    if command == "triton":
        return run_triton(rest)
    if command == "health":
        return health()
    if command == "ready":
        return 0 if worker_ready(rest[0] if rest else "http://127.0.0.1:8081") else 1
    print(__doc__, file=sys.stderr)
    return 2
