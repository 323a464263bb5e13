"""The Docker image's entrypoint: TorchServe and the page (``serve``), or Triton (``triton``).

    entrypoint.py serve      # default CMD: TorchServe + the page in the foreground until SIGTERM
    entrypoint.py triton [triton_serve.py flags]   # the PyTriton binding, bound to 0.0.0.0
    entrypoint.py health     # HEALTHCHECK: exit 0 only when what `serve`/`triton` started is ready
    entrypoint.py ready [MANAGEMENT_URL]   # KServe pod readiness: a READY TorchServe worker

``serve`` starts exactly what ``make run`` and ``scripts/page.py start`` start, with their own code
(scripts/serve.py, scripts/page.py): the repository's config.properties and the archive built by
``make archive`` at image build time, run from .run/. One thing differs, because a container's
loopback is its own: TorchServe's *inference* address listens on all of the container's interfaces
(``ENHANCER_INFERENCE_ADDRESS``, default http://0.0.0.0:8080) so that ``docker run -p
127.0.0.1:8080:8080`` can reach it; management and metrics stay on the container's loopback, and
token authorization stays on (``docker exec <name> .venv/bin/python scripts/serve.py key``). The
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import archive  # noqa: E402  (scripts/archive.py)
import page  # noqa: E402  (scripts/page.py)
import serve  # noqa: E402  (scripts/serve.py)

MODE_FILE = serve.RUN_DIR / "container.json"
CONTAINER_CONFIG = serve.RUN_DIR / "container.properties"
PAGE_PORT = int(os.environ.get("ENHANCER_PAGE_PORT", "5000"))
TRITON_HTTP_PORT = int(os.environ.get("ENHANCER_TRITON_HTTP_PORT", "8000"))
WATCH_SECONDS = 5.0


def log(message: str) -> None:
    print(f"entrypoint: {message}", flush=True)


def write_container_config(inference_address: str) -> Path:
    """config.properties with only ``inference_address`` replaced (see the module docstring)."""
    lines = [
        line
        for line in serve.CONFIG.read_text().splitlines()
        if line.lstrip().startswith(("#", "!"))
        or line.partition("=")[0].strip() != "inference_address"
    ]
    lines += ["# container: the inference API on every interface of the container (entrypoint.py)",
              f"inference_address={serve.escape_property(inference_address)}"]  # fmt: skip
    CONTAINER_CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONTAINER_CONFIG.write_text("\n".join(lines) + "\n")
    return CONTAINER_CONFIG


def start_torchserve(model: Path, timeout: float) -> serve.Instance:
    """What ``scripts/serve.py start`` does, with the container's config file."""
    log(serve.check_java())
    mar = archive.build_archive(model, name=serve.MODEL_NAME, export_path=serve.MODEL_STORE)
    config = write_container_config(
        os.environ.get("ENHANCER_INFERENCE_ADDRESS", "http://0.0.0.0:8080")
    )
    instance = serve.run_instance()  # addresses from config.properties: all reachable in here
    serve.launch(instance, config, serve.MODEL_STORE, f"{serve.MODEL_NAME}={mar.name}")
    try:
        waited = serve.wait_ready(instance, timeout)
    except serve.ServeError:
        serve.stop(instance)
        raise
    log(f"TorchServe '{serve.MODEL_NAME}' READY after {waited:.1f} s ({mar.name})")
    return instance


def run_serve() -> int:
    model = Path(os.environ.get("ENHANCER_MODEL", str(serve.DEFAULT_MODEL)))
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
        if page.main(["start", "--host", "0.0.0.0", "--port", str(PAGE_PORT)]) != 0:
            log("the page did not start")
            return 1
        log(f"serving: TorchServe :8080 (token: scripts/serve.py key), page :{PAGE_PORT}")
        while not stop.wait(WATCH_SECONDS):
            if instance.pid() is None:
                log(f"TorchServe exited:\n{instance.log_tail()}")
                code = 1
                break
            if page._read_state() is None:
                log("the page exited (see .run/logs/page.log)")
                code = 1
                break
        else:
            log("stopping")
    finally:
        page.main(["stop"])
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
    command = [sys.executable, str(REPO / "scripts" / "triton_serve.py"), "--address", "0.0.0.0",
               "--http-port", str(port), *args]  # fmt: skip
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
            return 0 if client.is_model_ready(serve.MODEL_NAME) else 1
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


def worker_ready(management_url: str, model_name: str = serve.MODEL_NAME) -> bool:
    """Whether TorchServe's management API (token auth off, as in the KServe pod) shows a READY
    worker. TorchServe's own /ping answers 200 before the worker has loaded the model (seen live),
    so it is no readiness signal."""
    try:
        with urllib.request.urlopen(f"{management_url}/models/{model_name}", timeout=5) as response:
            described = json.loads(response.read())
    except (OSError, ValueError):
        return False
    described = described[0] if isinstance(described, list) and described else described
    workers = described.get("workers", []) if isinstance(described, dict) else []
    return any(worker.get("status") == "READY" for worker in workers)


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


if __name__ == "__main__":
    sys.exit(main())
