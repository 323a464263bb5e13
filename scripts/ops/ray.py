"""Ray Serve: the deployment's settings, a Ray cluster (a local single-node one, or one that is
already running), starting and stopping the application (``scripts.ray_serve`` runs it; the door
itself is ``enhancer.serving.ray_serve``).

Everything a replica needs travels in one ``ReplicaConfig`` with absolute paths, so a replica on
another node of a cluster loads the same files, provided the project is installed there the same
way (``scripts/setup.sh ray``) at the same path.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enhancer.contract import MODEL_NAME
from scripts.ops.paths import RUN_DIR, face_beside, restore_beside
from scripts.ops.processes import alive, runs

logger = logging.getLogger(__name__)

APP_NAME = MODEL_NAME
PID_FILE = RUN_DIR / "ray_serve.pid"
DEFAULT_PORT = 8000
# Ray's shared-memory object store holds the request bodies on their way from the proxy to a
# replica; Ray's default (30% of the memory) is far more than that needs.
DEFAULT_OBJECT_STORE_MB = 512


def cpu_count() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def replica_config(
    model: Path,
    model_config: Mapping[str, Any],
    *,
    device: str,
    cpu_threads: int,
    max_request_bytes: int,
    max_batch_size: int,
    batch_wait_s: float,
):
    """The ``ReplicaConfig`` for ``model`` (its restore and face models beside it, if any).

    Raises:
        SystemExit: the model or its card is missing (the message says how to get one).
    """
    from enhancer.serving.ray_serve import ReplicaConfig

    model = Path(model).resolve()
    if not model.exists() or not model.with_suffix(".json").exists():
        raise SystemExit(
            f"ray: no model to serve: {model} and its card {model.with_suffix('.json').name} are "
            "needed.\nThe default model comes from `make train && make export`; or serve your "
            "own: --model PATH.pt"
        )
    restore, face = restore_beside(model), face_beside(model)
    if max_batch_size < 1:
        raise SystemExit(f"ray: the max batch size must be at least 1, not {max_batch_size}")
    return ReplicaConfig(
        model=str(model),
        restore=str(restore) if restore else None,
        face=str(face) if face else None,
        model_config=dict(model_config),
        device=device,
        cpu_threads=max(int(cpu_threads), 1),
        max_request_bytes=max_request_bytes,
        max_batch_size=max_batch_size,
        batch_wait_s=max(batch_wait_s, 0.0),
    )


def build_app(
    config,
    *,
    replicas: int,
    cpus_per_replica: float,
    gpus_per_replica: float = 0,
    queue_size: int = 0,
):
    """The Ray Serve application: ``replicas`` copies of ``EnhancerDeployment``.

    Args:
        config: the ``ReplicaConfig`` every replica loads.
        replicas: how many replicas (each loads the model once).
        cpus_per_replica: CPUs Ray reserves for each (and its torch threads).
        gpus_per_replica: GPUs for each (fractions share one); Ray sets CUDA_VISIBLE_DEVICES.
        queue_size: requests waiting for a replica before new ones get 503 (config.properties'
            ``job_queue_size``); 0 for no limit.
    """
    from ray import serve

    from enhancer.serving.ray_serve import EnhancerDeployment

    actor_options: dict[str, float] = {"num_cpus": cpus_per_replica}
    if gpus_per_replica:
        actor_options["num_gpus"] = gpus_per_replica
    deployment = serve.deployment(
        EnhancerDeployment,
        name=APP_NAME,
        num_replicas=replicas,
        ray_actor_options=actor_options,
        # a batch runs while the next one gathers
        max_ongoing_requests=2 * config.max_batch_size,
        max_queued_requests=queue_size if queue_size > 0 else -1,
        # loading and calibrating the engine takes a while on a busy machine
        health_check_timeout_s=60,
        graceful_shutdown_timeout_s=60,
    )
    return deployment.bind(config)


def start_cluster(
    *,
    address: str | None,
    num_cpus: int,
    num_gpus: int | None,
    object_store_mb: int,
    temp_dir: Path | None,
) -> None:
    """Connect to the Ray cluster at ``address``, or start a local single-node one.

    The local cluster runs only as long as this process: ``stop_all`` (or the process's end) takes
    it down. No dashboard and no usage report are started.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # gRPC's info lines ("skipping fork() handlers") would flood the console; the processes Ray
    # starts inherit this
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import ray

    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    options: dict[str, Any] = {
        "num_cpus": num_cpus,
        "include_dashboard": False,
        "object_store_memory": object_store_mb * 1024 * 1024,
        "logging_level": logging.WARNING,
    }
    if num_gpus is not None:
        options["num_gpus"] = num_gpus
    if temp_dir is not None:
        options["_temp_dir"] = str(Path(temp_dir).resolve())
    ray.init(**options)


def run_app(app, *, host: str, port: int, request_timeout_s: float | None) -> None:
    """Start Serve's HTTP proxy on ``host:port`` and deploy ``app`` at ``/``; returns once every
    replica is up (loaded and calibrated)."""
    from ray import serve

    http_options: dict[str, Any] = {"host": host, "port": port}
    if request_timeout_s:
        http_options["request_timeout_s"] = request_timeout_s
    serve.start(http_options=http_options)
    serve.run(app, name=APP_NAME, route_prefix="/")


def wait_http_ready(url: str, timeout: float) -> float:
    """Wait until ``GET url`` (the ``/ping`` of the deployment) answers 200; seconds waited.

    Raises:
        TimeoutError: not within ``timeout``.
    """
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200 and json.load(response).get("status") == "Healthy":
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.25)


def stop_all() -> None:
    """Delete the application and Serve, and disconnect (a local cluster stops with it)."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


# -- the pid file: `python -m scripts.ray_serve stop` (make ray-stop) ----------------------------

PID_MARKER = "scripts.ray_serve"


def write_pid(path: Path = PID_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")


def remove_pid(path: Path = PID_FILE) -> None:
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except (FileNotFoundError, ValueError):
        pass


def running_pid(path: Path = PID_FILE) -> int | None:
    """The pid of the running ``scripts.ray_serve`` recorded in ``path``, or None."""
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if runs(pid, PID_MARKER) else None


def stop_running(path: Path = PID_FILE, timeout: float = 90) -> str:
    """SIGTERM the recorded server (as Ctrl-C does) and wait until it exited; a line to print.

    Raises:
        TimeoutError: still running after ``timeout`` seconds.
    """
    pid = running_pid(path)
    if pid is None:
        return f"ray: not running (no live process in {path})"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"ray: process {pid} still running after {timeout:.0f} s")
        time.sleep(0.25)
    return f"ray: stopped (pid {pid})"
