"""Real TorchServe servers for end-to-end tests (a pytest plugin, loaded by tests/conftest.py).

    from tests.helpers.servers import start_torchserve, stop_torchserve

    ts = start_torchserve(model_pt, tmp_path / "ts", model_config={"batchSize": 1},
                          properties={"token_expiration_min": "0.1"})
    try:
        requests.post(f"{ts.inference_url}/predictions/enhancer", data=png, headers=ts.auth())
    finally:
        stop_torchserve(ts)

Each server is built the way ``make run`` builds the real one (``scripts.ops.archive``,
``scripts.ops.torchserve``)
from the repository's handlers/ and config.properties, with only what must differ changed: free
ports for all five listeners and the worker, a private TMPDIR/TEMP (pid file, worker sockets) and
run folder, and the overrides a test asks for. The ``torchserve`` session fixture serves the tiny
scale-2 model (``tests.helpers.tiny_models.tiny_sr``) once for the whole session; every server a
test starts is stopped at the end of the session even when the test fails.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from enhancer.contract import MODEL_NAME
from scripts.ops import archive
from scripts.ops import torchserve as serve
from scripts.ops.properties import write_private_config

__all__ = ["MODEL_NAME", "TorchServe", "archive", "launch_torchserve", "start_torchserve",
           "stop_torchserve", "write_model_config"]  # fmt: skip


@dataclass
class TorchServe:
    """A running TorchServe started by ``start_torchserve``.

    Attributes:
        workdir: its run folder (config.properties, key_file.json, logs/, tmp/, model_store/).
        inference_url: e.g. "http://127.0.0.1:41234" (``/predictions/enhancer``, ``/ping``).
        management_url: the management API's base URL.
        metrics_url: the metrics API's base URL (prometheus text at ``/metrics``; no token).
        ports: every port it was given, by config key (grpc and the worker's included).
        mar: the archive it serves.
    """

    workdir: Path
    inference_url: str
    management_url: str
    metrics_url: str
    ports: dict[str, int] = field(default_factory=dict)
    mar: Path | None = None

    @property
    def _instance(self) -> serve.Instance:
        return serve.Instance(
            self.workdir, self.inference_url, self.management_url, self.metrics_url
        )

    @property
    def predictions_url(self) -> str:
        """``<inference_url>/predictions/enhancer``."""
        return f"{self.inference_url}/predictions/{MODEL_NAME}"

    def key(self, kind: str = "inference") -> str:
        """A key ("inference", "management" or "API"), read fresh from key_file.json each call."""
        return self._instance.key(kind)

    def auth(self) -> dict[str, str]:
        """The inference authorization header: ``{"Authorization": "Bearer <inference key>"}``."""
        return {"Authorization": f"Bearer {self.key()}"}

    def log_text(self) -> str:
        """model_log.log + ts_log.log as they are now."""
        return self._instance.log_text()

    def pid(self) -> int | None:
        """The frontend (JVM) pid, or None once it has exited."""
        return self._instance.pid()

    def model_status(self) -> dict:
        """``GET /models/enhancer`` on the management API (workers, their pids and status)."""
        return self._instance.model_status()


_started: list[TorchServe] = []


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_model_config(path: Path, overrides: dict | None) -> Path:
    """handlers/model-config.yaml with ``overrides`` merged in (nested dicts merge key by key)."""
    base = yaml.safe_load(archive.MODEL_CONFIG.read_text())
    path.write_text(yaml.safe_dump(_merge(base, overrides or {}), sort_keys=False))
    return path


def start_torchserve(
    model_pt: Path,
    workdir: Path,
    *,
    properties: dict[str, str] | None = None,
    model_config: dict | None = None,
    timeout: float = 120,
) -> TorchServe:
    """Archive ``model_pt`` with the repository's handler and start a TorchServe serving it.

    Args:
        model_pt: a TorchScript model with its card (.json) beside it.
        workdir: a fresh folder for this server (run folder, store, logs, temp files).
        properties: config.properties overrides, e.g. ``{"token_expiration_min": "0.1"}``.
        model_config: overrides of handlers/model-config.yaml keys, merged into nested sections,
            e.g. ``{"batchSize": 1}`` or ``{"handler": {"max_input_pixels": 4096}}``.
        timeout: seconds to wait for a READY worker.

    Returns:
        The running server; stop it with ``stop_torchserve`` (it is also stopped at session end).

    Raises:
        serve.ServeError: it did not become ready (the message holds the log's error and tail);
            the server is stopped first.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = write_model_config(workdir / "model-config.yaml", model_config)
    mar = archive.build_archive(
        Path(model_pt),
        name=MODEL_NAME,
        export_path=workdir / "model_store",
        config_file=config_file,
        store=True,
        force=True,
    )
    return launch_torchserve(mar, workdir, properties=properties, timeout=timeout)


def launch_torchserve(
    mar: Path,
    workdir: Path,
    *,
    properties: dict[str, str] | None = None,
    timeout: float = 120,
    verify: bool = True,
) -> TorchServe:
    """Start a TorchServe on an archive as it is (``start_torchserve`` without building it).

    For archives a test made itself, e.g. a tampered one. Arguments and errors as in
    ``start_torchserve``; the archive must be named enhancer.mar. ``verify=False`` skips the check
    before the start (``serve.verify_archives``), to see what TorchServe and the worker do with it.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.properties"
    ports = write_private_config(config, properties)
    instance = serve.Instance.from_config(workdir, config)
    ts = TorchServe(
        workdir=workdir,
        inference_url=instance.inference_url,
        management_url=instance.management_url,
        metrics_url=instance.metrics_url,
        ports=ports,
        mar=Path(mar),
    )
    _started.append(ts)
    try:
        serve.launch(
            instance, config, Path(mar).parent, f"{MODEL_NAME}={Path(mar).name}", verify=verify
        )
        serve.wait_ready(instance, timeout)
    except BaseException:
        stop_torchserve(ts)
        raise
    return ts


def stop_torchserve(ts: TorchServe) -> None:
    """Stop ``ts`` and wait until its JVM and worker processes are gone (idempotent)."""
    serve.stop(ts._instance)
    if ts in _started:
        _started.remove(ts)


@pytest.fixture(scope="session", autouse=True)
def _stop_leftover_torchserves():
    """Stop every server a test started and did not stop, at the end of the session."""
    yield
    for ts in list(_started):
        stop_torchserve(ts)


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory) -> TorchServe:
    """A TorchServe serving the tiny scale-2 model with the repository's config, for the session."""
    from tests.helpers.tiny_models import tiny_sr

    model_pt = tiny_sr(tmp_path_factory.mktemp("ts-model"))
    ts = start_torchserve(model_pt, tmp_path_factory.mktemp("ts-session"))
    yield ts
    stop_torchserve(ts)
