"""The web page under gunicorn (``frontend:create_app()``): start, wait, stop, inspect.

The page runs under gunicorn, never Flask's development server, with gevent workers: each
connection is a greenlet, so a client that sends its request slowly holds a few kilobytes, not one
of a handful of threads (RELIABILITY.md R10: with threads, 20 clients sending a byte a second
starved every upload). Headers must arrive whole within KEEP_ALIVE seconds (gunicorn's gevent
worker reads them under that deadline) and a body at BODY_MIN_RATE (frontend/security.py);
slower connections are closed.

It finds TorchServe the way ``scripts.ops.torchserve`` runs it: the addresses in the repository's
``config.properties`` and the key file ``.run/key_file.json``. Its pid and address are kept in
``.run/page.json``, its logs in ``.run/logs/page.log`` (errors, key rotations) and
``.run/logs/page_access.log``. Settings of the app itself can be given as ``FLASK_*`` environment
variables (``FLASK_MAX_UPLOAD_BYTES=20000000``); see frontend/__init__.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts.ops.paths import REPO, RUN_DIR
from scripts.ops.processes import alive, runs
from scripts.ops.torchserve import run_instance

STATE_FILE = RUN_DIR / "page.json"
LOG_DIR = RUN_DIR / "logs"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
# The app's default read timeout for TorchServe (frontend/__init__.py); gunicorn's own worker
# timeout must stay above it or gunicorn would kill a worker waiting on a long enhancement.
APP_READ_TIMEOUT = 310.0
# Seconds an idle keep-alive connection is kept, and, under the gevent worker, the deadline for a
# request's whole header block.
KEEP_ALIVE = 5
# Connections each worker serves at once (greenlets; TorchServe's queue bounds the work behind
# them).
DEFAULT_CONNECTIONS = 200
# Environment variables that must not reach the production server.
_DEV_ONLY = ("FLASK_DEBUG", "FLASK_ENV", "FLASK_RUN_HOST", "FLASK_RUN_PORT")


class PageError(Exception):
    """The page cannot be started; the message says why."""


def gunicorn_command(
    host: str,
    port: int,
    *,
    workers: int = 2,
    connections: int = DEFAULT_CONNECTIONS,
    read_timeout: float = APP_READ_TIMEOUT,
    error_log: Path,
    access_log: Path,
) -> list[str]:
    """The gunicorn command line that serves the page.

    Args:
        host, port: where to listen.
        workers, connections: processes, and connections each serves at once (gevent greenlets:
            the work is I/O wait on TorchServe and on clients).
        read_timeout: the app's READ_TIMEOUT; gunicorn's worker timeout is set above it.
        error_log, access_log: log files.
    """
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--chdir",
        str(REPO),
        "--bind",
        f"{host}:{port}",
        "--worker-class",
        "gevent",
        "--workers",
        str(workers),
        "--worker-connections",
        str(connections),
        "--timeout",
        str(int(read_timeout) + 30),
        "--graceful-timeout",
        "30",
        "--keep-alive",
        str(KEEP_ALIVE),
        "--log-level",
        "info",
        "--error-logfile",
        str(error_log),
        "--access-logfile",
        str(access_log),
        "--capture-output",
        # gunicorn 23+ opens a control socket at one fixed path per user: several pages (or a page
        # and the tests' pages) would fight over it, and nothing here uses it.
        "--no-control-socket",
        "frontend:create_app()",
    ]


def page_env(
    inference_url: str, management_url: str, key_file: Path, extra: dict[str, str] | None = None
) -> dict:
    """This environment, minus development switches, plus where TorchServe and its keys are."""
    env = {name: value for name, value in os.environ.items() if name not in _DEV_ONLY}
    env.update(
        {
            "FLASK_TORCHSERVE_URL": inference_url,
            "FLASK_TORCHSERVE_MANAGEMENT_URL": management_url,
            "FLASK_KEY_FILE": str(key_file),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def launch(command: list[str], env: dict, console: Path) -> subprocess.Popen:
    """Start gunicorn in its own session (it outlives this script and the terminal's Ctrl-C)."""
    console.parent.mkdir(parents=True, exist_ok=True)
    with open(console, "ab") as out:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def health(url: str, timeout: float = 10.0) -> tuple[int, dict]:
    """GET ``<url>/health``: (status, report). Raises OSError when nothing answers."""
    request = urllib.request.Request(f"{url.rstrip('/')}/health")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read() or b"{}")
        except ValueError:
            return error.code, {}


def wait_ready(
    url: str, process: subprocess.Popen | None, pid: int | None, timeout: float, log: Path
) -> tuple[int, dict]:
    """Wait until the page answers /health (200 or 503: it is up either way).

    Raises:
        PageError: gunicorn exited, or did not answer within ``timeout``; the message holds the log.
    """
    deadline = time.monotonic() + timeout
    while True:
        exited = (
            process.poll() is not None if process is not None else (pid is None or not alive(pid))
        )
        if exited:
            raise PageError(f"gunicorn exited during start-up:\n{_tail(log)}")
        try:
            return health(url, timeout=5.0)
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise PageError(
                f"the page did not answer {url}/health within {timeout:.0f} s:\n{_tail(log)}"
            )
        time.sleep(0.2)


def stop_pid(pid: int, timeout: float = 40.0) -> bool:
    """Stop the gunicorn master ``pid`` (TERM, then KILL after ``timeout``); whether it ran."""
    if not alive(pid) or not _is_gunicorn(pid):
        return False
    os.kill(pid, signal.SIGTERM)  # graceful: workers finish their requests (--graceful-timeout)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)  # its own session: the master and its workers, nothing else
    return True


def _is_gunicorn(pid: int) -> bool:
    """Whether ``pid`` is a gunicorn (a recorded pid may since belong to something else)."""
    return runs(pid, "gunicorn")


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def read_state() -> dict | None:
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    return state if isinstance(pid, int) and alive(pid) and _is_gunicorn(pid) else None


def describe(status: int, report: dict) -> str:
    if status == 200:
        return f"TorchServe {report.get('torchserve')}, model {report.get('model')}"
    return (
        f"TorchServe not ready ({report.get('message', status)}); "
        "start it with `.venv/bin/python -m scripts.serve start`"
    )


def start(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    workers: int = 2,
    connections: int = DEFAULT_CONNECTIONS,
    timeout: float = 60.0,
    log=print,
) -> str:
    """Start the page under gunicorn for the TorchServe of ``make run`` and wait until it answers.

    Returns:
        The page's URL (also when it was running already).

    Raises:
        PageError: gunicorn exited or did not answer in time (it is stopped again).
    """
    state = read_state()
    if state is not None:
        log(f"already running (pid {state['pid']}): {state['url']}")
        return state["url"]
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"listening on {host}: put a TLS-terminating proxy in front of it")
    instance = run_instance()  # TorchServe's addresses from config.properties, keys in .run/
    read_timeout = float(os.environ.get("FLASK_READ_TIMEOUT", APP_READ_TIMEOUT))
    error_log, access_log = LOG_DIR / "page.log", LOG_DIR / "page_access.log"
    command = gunicorn_command(
        host,
        port,
        workers=workers,
        connections=connections,
        read_timeout=read_timeout,
        error_log=error_log,
        access_log=access_log,
    )
    env = page_env(instance.inference_url, instance.management_url, instance.key_file)
    process = launch(command, env, error_log)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    try:
        status, report = wait_ready(url, process, None, timeout, error_log)
    except PageError:
        if process.poll() is None:
            stop_pid(process.pid)
        raise
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({"pid": process.pid, "url": url}))
    log(describe(status, report))
    log(f"logs in {os.path.relpath(error_log)}; stop with `make stop`")
    log(f"open {url}/")
    return url


def stop() -> bool:
    """Stop the page started by ``start``; whether it was running."""
    state = read_state()
    STATE_FILE.unlink(missing_ok=True)
    if state is None:
        return False
    stop_pid(state["pid"])
    return True


def status() -> tuple[bool, str]:
    """Whether the page runs and TorchServe behind it is ready, and a line that says so."""
    state = read_state()
    if state is None:
        return False, "not running."
    try:
        code, report = health(state["url"])
    except (OSError, ValueError) as error:
        return False, f"runs (pid {state['pid']}) but {state['url']}/health did not answer: {error}"
    return code == 200, f"runs (pid {state['pid']}) at {state['url']}/; {describe(code, report)}"
