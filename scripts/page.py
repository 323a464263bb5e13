"""Start, stop and inspect the web page: gunicorn serving ``frontend:create_app()``.

    .venv/bin/python scripts/page.py start                 # http://127.0.0.1:5000/; waits for it
    .venv/bin/python scripts/page.py start --port 8000     # another port
    .venv/bin/python scripts/page.py status                # is it up, and is TorchServe ready?
    .venv/bin/python scripts/page.py stop

The page runs under gunicorn (threads, since the work is waiting on TorchServe), never Flask's
development server. It finds TorchServe the way ``scripts/serve.py`` runs it: the addresses in the
repository's ``config.properties`` and the key file ``.run/key_file.json``. Its pid and address are
kept in ``.run/page.json``, its logs in ``.run/logs/page.log`` (errors, key rotations) and
``.run/logs/page_access.log``. Settings of the app itself can be given as ``FLASK_*`` environment
variables (``FLASK_MAX_UPLOAD_BYTES=20000000``); see frontend/__init__.py.

The functions here are also how the browser tests start their page (tests/test_browser_e2e.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / ".run"
STATE_FILE = RUN_DIR / "page.json"
LOG_DIR = RUN_DIR / "logs"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
# The app's default read timeout for TorchServe (frontend/__init__.py); gunicorn's own worker
# timeout must stay above it or gunicorn would kill a worker waiting on a long enhancement.
APP_READ_TIMEOUT = 310.0
# Environment variables that must not reach the production server.
_DEV_ONLY = ("FLASK_DEBUG", "FLASK_ENV", "FLASK_RUN_HOST", "FLASK_RUN_PORT")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve  # noqa: E402  (scripts/serve.py: TorchServe's addresses and run folder)


class PageError(Exception):
    """The page cannot be started; the message says why."""


def gunicorn_command(
    host: str,
    port: int,
    *,
    workers: int = 2,
    threads: int = 4,
    read_timeout: float = APP_READ_TIMEOUT,
    error_log: Path,
    access_log: Path,
) -> list[str]:
    """The gunicorn command line that serves the page.

    Args:
        host, port: where to listen.
        workers, threads: processes and threads per process (the work is I/O wait on TorchServe).
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
        "gthread",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--timeout",
        str(int(read_timeout) + 30),
        "--graceful-timeout",
        "30",
        "--keep-alive",
        "5",
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
            process.poll() is not None
            if process is not None
            else (pid is None or not serve.alive(pid))
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
    if not serve.alive(pid) or not _is_gunicorn(pid):
        return False
    os.kill(pid, signal.SIGTERM)  # graceful: workers finish their requests (--graceful-timeout)
    deadline = time.monotonic() + timeout
    while serve.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if serve.alive(pid):
        os.killpg(pid, signal.SIGKILL)  # its own session: the master and its workers, nothing else
    return True


def _is_gunicorn(pid: int) -> bool:
    """Whether ``pid`` is a gunicorn (a recorded pid may since belong to something else)."""
    try:
        return b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the record


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _read_state() -> dict | None:
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    return state if isinstance(pid, int) and serve.alive(pid) and _is_gunicorn(pid) else None


def _describe(status: int, report: dict) -> str:
    if status == 200:
        return f"TorchServe {report.get('torchserve')}, model {report.get('model')}"
    return (
        f"TorchServe not ready ({report.get('message', status)}); "
        "start it with `.venv/bin/python scripts/serve.py start`"
    )


# -- the commands ----------------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    state = _read_state()
    if state is not None:
        print(f"page: already running (pid {state['pid']}): {state['url']}")
        return 0
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"page: listening on {args.host}: put a TLS-terminating proxy in front of it",
            file=sys.stderr,
        )
    instance = serve.run_instance()  # TorchServe's addresses from config.properties, keys in .run/
    read_timeout = float(os.environ.get("FLASK_READ_TIMEOUT", APP_READ_TIMEOUT))
    error_log, access_log = LOG_DIR / "page.log", LOG_DIR / "page_access.log"
    command = gunicorn_command(
        args.host,
        args.port,
        workers=args.workers,
        threads=args.threads,
        read_timeout=read_timeout,
        error_log=error_log,
        access_log=access_log,
    )
    env = page_env(
        instance.inference_url, instance.management_url, instance.workdir / "key_file.json"
    )
    process = launch(command, env, error_log)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port}"
    try:
        status, report = wait_ready(url, process, None, args.timeout, error_log)
    except PageError:
        if process.poll() is None:
            stop_pid(process.pid)
        raise
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({"pid": process.pid, "url": url}))
    print(f"page: {_describe(status, report)}")
    print(f"page: logs in {os.path.relpath(error_log)}; stop with `make stop`")
    print(f"page: open {url}/")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    state = _read_state()
    if state is None:
        print("page: not running.")
        STATE_FILE.unlink(missing_ok=True)
        return 0
    stop_pid(state["pid"])
    STATE_FILE.unlink(missing_ok=True)
    print("page: stopped.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = _read_state()
    if state is None:
        print("page: not running.")
        return 1
    try:
        status, report = health(state["url"])
    except (OSError, ValueError) as error:
        print(f"page: runs (pid {state['pid']}) but {state['url']}/health did not answer: {error}")
        return 1
    print(f"page: runs (pid {state['pid']}) at {state['url']}/; {_describe(status, report)}")
    return 0 if status == 200 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "start", help="start the page under gunicorn and wait until it answers"
    )
    start.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)"
    )
    start.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)"
    )
    start.add_argument(
        "--workers", type=int, default=2, help="gunicorn processes (default: %(default)s)"
    )
    start.add_argument(
        "--threads", type=int, default=4, help="threads per process (default: %(default)s)"
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the page to answer (default: %(default)s)",
    )
    start.set_defaults(run=cmd_start)
    commands.add_parser("stop", help="stop the page").set_defaults(run=cmd_stop)
    commands.add_parser(
        "status", help="show whether the page and TorchServe are ready; exit 1 unless both"
    ).set_defaults(run=cmd_status)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except PageError as error:
        print(f"page: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
