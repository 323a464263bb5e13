"""A real Triton binding for end-to-end tests: ``python -m scripts.triton_serve`` as a subprocess.

Started the way a user starts it, on free loopback ports with a private temporary folder and
*without* LD_LIBRARY_PATH, so the start command's own libpython fix-up is what lets Triton's Python
stub start (tests/test_triton_parity.py, tests/test_models_e2e.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

TIMEOUT = 120  # seconds per request: generous on a shared 2-core machine; never asserted on
START_TIMEOUT = 180


@dataclass
class TritonProcess:
    """``python -m scripts.triton_serve`` running in its own process group."""

    process: subprocess.Popen
    workdir: Path
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def log(self) -> Path:
        return self.workdir / "triton.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self):
        import tritonclient.http as tritonclient_http

        return tritonclient_http.InferenceServerClient(
            self.url, connection_timeout=10, network_timeout=TIMEOUT
        )

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def stop(self, timeout: float = 60, *, clean: bool = True) -> int | None:
        """SIGTERM, as Docker and Kubernetes stop it; SIGKILL the group if it does not exit.

        ``clean`` removes the private temporary folder afterwards.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # our own process group only
                self.process.wait(10)
        if clean:
            shutil.rmtree((self.workdir / "tmp").resolve(), ignore_errors=True)
        return self.process.returncode


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_triton(model_pt: Path, workdir: Path, *extra: str) -> TritonProcess:
    """Start the binding on free ports; return once it printed READY (or fail with its log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # PyTriton's workspace and Unix sockets: a private folder with a short path, since socket paths
    # hold at most 107 bytes and pytest's temporary folders are long
    (workdir / "tmp").symlink_to(tempfile.mkdtemp(prefix="enh-tr-", dir="/tmp"))
    http_port, grpc_port, metrics_port = free_ports(3)
    env = {key: value for key, value in os.environ.items() if key != "LD_LIBRARY_PATH"}
    env["TMPDIR"] = str((workdir / "tmp").resolve())
    env["PYTRITON_HOME"] = str(workdir / "pytriton-home")
    command = [
        sys.executable, "-m", "scripts.triton_serve",
        "--model", str(model_pt), "--device", "cpu",
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port), *extra,
    ]  # fmt: skip
    with open(workdir / "triton.log", "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
            start_new_session=True,  # its own group: tritonserver and the stub stop with it
        )  # fmt: skip
    server = TritonProcess(process, workdir, http_port, grpc_port, metrics_port)
    deadline = time.monotonic() + START_TIMEOUT
    while "READY after" not in server.log_text():
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            pytest.fail(
                f"Triton did not start (exit {process.returncode}):\n{server.log_text()[-4000:]}"
            )
        time.sleep(0.25)
    return server
