"""Start, stop and inspect TorchServe serving the enhancer, from a run folder (.run/).

    .venv/bin/python scripts/serve.py start            # archive if stale, start, wait until READY
    .venv/bin/python scripts/serve.py start --model runs/x/enhancer.pt    # serve another model
    .venv/bin/python scripts/serve.py status           # is it up, and is the worker READY?
    .venv/bin/python scripts/serve.py key              # the current inference key (for curl)
    .venv/bin/python scripts/serve.py smoke            # enhance a generated photo, check the sizes
    .venv/bin/python scripts/serve.py stop

TorchServe runs with the repository's ``config.properties`` and ``model_store/``, from ``.run/``:
its key file (``key_file.json``, fresh keys at each start), its logs (``.run/logs/``), its pid file
and worker sockets (``.run/tmp/``, through TMPDIR and TEMP) all live there, so it never collides
with another TorchServe on the machine. ``start`` checks Java first (without it a request would
hang), then the model, rebuilds the .mar when an input changed, and waits until the worker is READY;
when the worker cannot load the model (a tampered archive, a bad card) it stops at once and shows
the log's error.

The functions here are also what the end-to-end tests start their servers with (tests/servers.py).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / ".run"
CONFIG = REPO / "config.properties"
MODEL_STORE = REPO / "model_store"
DEFAULT_MODEL = MODEL_STORE / "enhancer.pt"
MODEL_NAME = "enhancer"
JAVA_PACKAGE = "openjdk-17-jre-headless"
MODEL_COMMAND = "make train && make export"

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archive  # noqa: E402  (scripts/archive.py, beside this file)

# Lines of a worker that failed to load its model: TorchServe retries forever (with backoff) and
# never says "failed" for good, so the first of these means the start has failed.
_LOAD_FAILURES = (
    re.compile(r"Backend worker process died"),
    re.compile(r"Load model failed"),
    re.compile(r"Worker disconnected\. WORKER_STARTED"),
)
_ERROR_LINE = re.compile(r"MODEL_LOG - ((?:[\w.]+)?(?:Error|Exception)\b.*)$")
_DIED = "the worker died while loading the model (see the log)"
# The frontend's log can show the worker's death before the model log holds the worker's error
# line (both are written asynchronously): wait this long for that line before reporting without it.
_ERROR_LINE_GRACE_S = 5.0


class ServeError(Exception):
    """TorchServe cannot be started, or did not become ready; the message says what to do."""


# -- configuration -------------------------------------------------------------------------------


def read_properties(path: Path) -> dict[str, str]:
    """Parse a Java properties file of ``key=value`` lines (comments and ``\\`` escapes handled).

    Only what config.properties uses is supported: no line continuations, ``=`` as the separator.
    """
    values: dict[str, str] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = re.sub(r"\\(.)", r"\1", value.strip())
    return values


def escape_property(value: str) -> str:
    """The properties-file form of ``value`` (backslashes doubled)."""
    return value.replace("\\", "\\\\")


# Keys of config.properties given fresh values by ``write_private_config``.
PORT_KEYS = (
    "inference_address",
    "management_address",
    "metrics_address",
    "grpc_inference_port",
    "grpc_management_port",
    "initial_worker_port",
)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_private_config(
    path: Path, overrides: dict[str, str] | None = None, base: Path = CONFIG
) -> dict[str, int]:
    """Write ``base`` (the repository's config.properties) with free ports and ``overrides``.

    For a second TorchServe beside ``make run`` (tests, the benchmark): all five listeners and the
    worker get free ports; everything else (limits, token auth, allowed_urls, blacklist) stays as
    ``make run`` has it unless overridden. Lines of replaced keys are dropped, new values appended.

    Returns:
        The ports given, by config key (PORT_KEYS).
    """
    ports = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS)), strict=True))
    values = {
        "inference_address": f"http://127.0.0.1:{ports['inference_address']}",
        "management_address": f"http://127.0.0.1:{ports['management_address']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics_address']}",
        "grpc_inference_port": str(ports["grpc_inference_port"]),
        "grpc_management_port": str(ports["grpc_management_port"]),
        "initial_worker_port": str(ports["initial_worker_port"]),
        **(overrides or {}),
    }
    kept = []
    for line in Path(base).read_text().splitlines():
        key = line.partition("=")[0].strip()
        if not line.lstrip().startswith(("#", "!")) and key in values:
            continue
        kept.append(line)
    kept.append("# private overrides (scripts/serve.py write_private_config)")
    kept += [f"{key}={escape_property(value)}" for key, value in values.items()]
    Path(path).write_text("\n".join(kept) + "\n")
    return ports


# -- Java ------------------------------------------------------------------------------------------


def java_command() -> str:
    """The java TorchServe runs: ``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else ``java``."""
    java_home = os.environ.get("JAVA_HOME")
    return str(Path(java_home) / "bin" / "java") if java_home else "java"


def check_java() -> str:
    """Check that Java 17 or newer is installed, before anything waits on it.

    Returns:
        The version line, e.g. 'openjdk version "17.0.15" 2025-04-15'.

    Raises:
        ServeError: Java is missing or too old, with the package to install.
    """
    java = java_command()
    install = (
        f"TorchServe needs Java 17 or newer. On Debian or Ubuntu: apt-get install {JAVA_PACKAGE} "
        "(`make setup` installs it when run as root); elsewhere install a Java 17 runtime and "
        "put it on PATH or set JAVA_HOME."
    )
    if shutil.which(java) is None:
        raise ServeError(f"`{java}` not found. {install}")
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ServeError(f"`{java} -version` failed ({error}). {install}") from None
    text = (done.stderr or done.stdout).strip()
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0" is Java 8
        major = int(match.group(2))
    if major < 17:
        first = text.splitlines()[0] if text else "no version output"
        raise ServeError(f"found {first!r}. {install}")
    return text.splitlines()[0]


# -- a TorchServe instance in a folder -------------------------------------------------------------


@dataclass
class Instance:
    """Where one TorchServe lives: its run folder and the addresses from its config.

    Attributes:
        workdir: its run folder (key_file.json, logs/, tmp/ with the pid file and worker sockets).
        inference_url, management_url, metrics_url: base URLs, e.g. "http://127.0.0.1:8080".
        model_name: the model to wait for.
    """

    workdir: Path
    inference_url: str
    management_url: str
    metrics_url: str
    model_name: str = MODEL_NAME

    @classmethod
    def from_config(cls, workdir: Path, config: Path, model_name: str = MODEL_NAME) -> Instance:
        """The instance a config file describes (addresses default as in TorchServe)."""
        props = read_properties(config)
        return cls(
            workdir=Path(workdir),
            inference_url=props.get("inference_address", "http://127.0.0.1:8080").rstrip("/"),
            management_url=props.get("management_address", "http://127.0.0.1:8081").rstrip("/"),
            metrics_url=props.get("metrics_address", "http://127.0.0.1:8082").rstrip("/"),
            model_name=model_name,
        )

    @property
    def tmpdir(self) -> Path:
        return self.workdir / "tmp"

    @property
    def logdir(self) -> Path:
        return self.workdir / "logs"

    def env(self) -> dict[str, str]:
        """The environment TorchServe runs in: private temp folder (pid file, worker sockets)."""
        env = dict(os.environ)
        env["TMPDIR"] = str(self.tmpdir)  # torchserve's pid file: tempfile.gettempdir()
        env["TEMP"] = str(self.tmpdir)  # -Djava.io.tmpdir: the worker sockets .ts.sock.<port>
        env["LOG_LOCATION"] = str(self.logdir)
        env["METRICS_LOCATION"] = str(self.logdir)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def pid(self) -> int | None:
        """The frontend (JVM) pid from the pid file, if that process is alive."""
        try:
            pid = int((self.tmpdir / ".model_server.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def key(self, kind: str = "inference") -> str:
        """A key from key_file.json, read fresh (keys change at every start and on rotation).

        Args:
            kind: "inference", "management" or "API".

        Raises:
            ServeError: no key file (TorchServe is not running from this folder).
        """
        path = self.workdir / "key_file.json"
        try:
            keys = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ServeError(
                f"no key file at {path}: is TorchServe running from {self.workdir}?"
            ) from None
        return keys[kind]["key"]

    def get_json(self, url: str, kind: str = "management", timeout: float = 5.0) -> object:
        """GET a TorchServe URL with the right key and parse the JSON answer."""
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.key(kind)}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def model_status(self) -> dict:
        """The management API's description of the model (workers and their status)."""
        described = self.get_json(f"{self.management_url}/models/{self.model_name}")
        return described[0] if isinstance(described, list) else described

    def ready(self) -> bool:
        """Whether the model has a READY worker."""
        try:
            return any(w.get("status") == "READY" for w in self.model_status().get("workers", []))
        except (ServeError, OSError, ValueError, KeyError):
            return False

    def log_text(self, names: tuple[str, ...] = ("model_log.log", "ts_log.log")) -> str:
        """The logs, concatenated (missing files are skipped)."""
        parts = []
        for name in names:
            path = self.logdir / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the model and frontend logs and of TorchServe's console output."""
        tails = []
        for path in (
            self.logdir / "model_log.log",
            self.logdir / "ts_log.log",
            self.workdir / "torchserve.out",
        ):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                tails.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(tails) or f"(no logs in {self.workdir})"

    def load_error(self) -> str | None:
        """The error that keeps the worker from loading the model, once the logs show one."""
        text = self.log_text()
        if not any(pattern.search(text) for pattern in _LOAD_FAILURES):
            return None
        errors = [m.group(1).strip() for m in map(_ERROR_LINE.search, text.splitlines()) if m]
        return errors[-1] if errors else _DIED


def launch(instance: Instance, config: Path, model_store: Path, archives: str) -> None:
    """Run ``torchserve --start`` for ``instance`` (returns once the JVM is launched, not ready).

    Args:
        instance: where it runs; its folders are created.
        config: the config.properties to use.
        model_store: the folder holding the archives.
        archives: the ``--models`` value, e.g. "enhancer=enhancer.mar".

    Raises:
        ServeError: the launcher failed (the message holds its output).
    """
    for folder in (instance.workdir, instance.tmpdir, instance.logdir):
        folder.mkdir(parents=True, exist_ok=True)
    torchserve = shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"
    command = [
        torchserve,
        "--start",
        "--ts-config",
        str(Path(config).resolve()),
        "--model-store",
        str(Path(model_store).resolve()),
        "--models",
        archives,
        "--ncs",  # no config snapshots: the config file is the only source of settings
    ]
    out = instance.workdir / "torchserve.out"
    with open(out, "ab") as console:
        # the JVM inherits this file as its console: without it the JVM would write to our terminal
        done = subprocess.run(
            command,
            cwd=instance.workdir,
            env=instance.env(),
            stdout=console,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    if done.returncode != 0:
        raise ServeError(f"`torchserve --start` failed ({done.returncode}):\n{instance.log_tail()}")


def wait_ready(instance: Instance, timeout: float) -> float:
    """Wait until the model has a READY worker.

    Returns:
        Seconds it took.

    Raises:
        ServeError: the JVM exited, the worker cannot load the model (reported as soon as the log
            shows it), or ``timeout`` passed; the message holds the log's error and last lines.
    """
    started = time.monotonic()
    died_at = None
    while True:
        waited = time.monotonic() - started
        if instance.pid() is None:
            raise ServeError(f"TorchServe exited during start-up:\n{instance.log_tail()}")
        if instance.ready():
            return waited
        error = instance.load_error()
        if error == _DIED:
            died_at = waited if died_at is None else died_at
            if waited - died_at < _ERROR_LINE_GRACE_S:
                error = None  # the worker's own error line may not be in its log yet
        if error:
            raise ServeError(
                f"the worker cannot load model '{instance.model_name}': {error}\n"
                f"{instance.log_tail()}"
            )
        if waited > timeout:
            raise ServeError(f"no READY worker after {timeout:.0f} s:\n{instance.log_tail()}")
        time.sleep(0.25)


def stop(instance: Instance, timeout: float = 60.0) -> bool:
    """Stop the TorchServe running from ``instance.workdir`` and wait until its processes are gone.

    Returns:
        Whether one was running.
    """
    pid = instance.pid()
    if pid is None:
        return False
    workers = _children(pid)
    torchserve = shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"
    subprocess.run(
        [torchserve, "--stop"],
        cwd=instance.workdir,
        env=instance.env(),
        capture_output=True,
        timeout=60,
    )
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for child in [pid, *workers]:  # only this instance's processes, by pid, if still TorchServe's
        if alive(child) and _is_torchserve(child):
            os.kill(child, signal.SIGKILL)
    (instance.workdir / "key_file.json").unlink(missing_ok=True)
    return True


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _is_torchserve(pid: int) -> bool:
    """Whether ``pid`` is a TorchServe frontend or worker (not a process that reused the pid)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"org.pytorch.serve.ModelServer" in command or b"model_service_worker" in command


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the frontend's worker processes)."""
    try:
        import psutil  # a TorchServe dependency

        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - best effort: stop() also waits for the JVM itself
        return []


# -- the commands ----------------------------------------------------------------------------------


def run_instance() -> Instance:
    """The instance ``make run`` manages: .run/ with the repository's config."""
    return Instance.from_config(RUN_DIR, CONFIG)


def usage_text(instance: Instance) -> str:
    """How to call the running service."""
    url = f"{instance.inference_url}/predictions/{instance.model_name}"
    key = "$(.venv/bin/python scripts/serve.py key)"
    return "\n".join(
        [
            f"inference:  POST {url}",
            "key:        .venv/bin/python scripts/serve.py key   (from .run/key_file.json;",
            "            new at each start, expires after token_expiration_min; send it as",
            "            'Authorization: Bearer <key>')",
            "try:",
            f'  curl -H "Authorization: Bearer {key}" -T photo.jpg {url} -o photo_x2.jpg',
            f'  curl -H "Authorization: Bearer {key}" -F data=@photo.jpg -F scale=4 \\',
            f"       -F format=webp {url} -o photo_x4.webp",
            "logs:       .run/logs/ (model_log.log, ts_log.log)    stop: make stop",
        ]
    )


def cmd_start(args: argparse.Namespace) -> int:
    instance = run_instance()
    if instance.pid() is not None:
        state = "READY" if instance.ready() else "not READY (see `scripts/serve.py status`)"
        print(f"serve: TorchServe is already running from {instance.workdir}, {state}.")
        print("serve: to serve a new model or config: make stop, then make run")
        print(usage_text(instance))
        return 0
    print(f"serve: {check_java()}")
    model = args.model
    if not model.exists() or not model.with_suffix(".json").exists():
        raise ServeError(
            f"no model to serve: {model} and its card {model.with_suffix('.json').name} are "
            f"needed.\nThe default model is trained and exported by `{MODEL_COMMAND}` (README, "
            '"Train, export, evaluate"); or serve your own: '
            "scripts/serve.py start --model path/to/model.pt"
        )
    try:
        stale = archive.is_stale(MODEL_STORE / f"{MODEL_NAME}.mar", model, name=MODEL_NAME)
        mar = archive.build_archive(model, name=MODEL_NAME, export_path=MODEL_STORE)
    except archive.ArchiveError as error:
        raise ServeError(str(error)) from None
    digest = archive.file_sha256(mar)
    print(f"serve: archive {'built' if stale else 'up to date'}: {mar} (sha256 {digest[:16]}...)")
    launch(instance, CONFIG, MODEL_STORE, f"{MODEL_NAME}={mar.name}")
    print(f"serve: TorchServe starting from {instance.workdir}; waiting for a READY worker...")
    try:
        waited = wait_ready(instance, args.timeout)
    except ServeError:
        stop(instance)
        raise
    print(f"serve: '{MODEL_NAME}' READY after {waited:.1f} s")
    print(usage_text(instance))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    instance = run_instance()
    print(
        "serve: TorchServe stopped."
        if stop(instance)
        else f"serve: TorchServe is not running from {instance.workdir}."
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    instance = run_instance()
    pid = instance.pid()
    if pid is None:
        print(f"serve: TorchServe is not running from {instance.workdir}.")
        return 1
    try:
        described = instance.model_status()
    except (ServeError, OSError, ValueError) as error:
        print(f"serve: TorchServe runs (pid {pid}) but its management API did not answer: {error}")
        return 1
    workers = described.get("workers", [])
    print(
        f"serve: TorchServe runs (pid {pid}); model '{described.get('modelName')}' version "
        f"{described.get('modelVersion')}, queue {described.get('jobQueueStatus')}"
    )
    for worker in workers:
        print(f"  worker {worker.get('id')} pid {worker.get('pid')}: {worker.get('status')}")
    return 0 if any(w.get("status") == "READY" for w in workers) else 1


def cmd_key(args: argparse.Namespace) -> int:
    print(run_instance().key(args.kind))
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    """Enhance a generated photo through the running server, raw and multipart, and check sizes."""
    import numpy as np
    import requests
    from PIL import Image

    instance = run_instance()
    url = f"{instance.inference_url}/predictions/{instance.model_name}"
    y, x = np.mgrid[0:200, 0:300].astype(np.float32)
    rgb = np.stack([0.5 + 0.4 * np.sin(x / 40), 0.5 + 0.4 * np.cos(y / 30), (x + y) / 500 % 1], -1)
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buffer, "PNG")
    photo = buffer.getvalue()
    auth = {"Authorization": f"Bearer {instance.key()}"}
    cases = [
        (
            "raw, 2x, png",
            dict(data=photo, headers={**auth, "Content-Type": "application/octet-stream"}),
            2,
            "image/png",
        ),
        (
            "raw, 3x, jpeg",
            dict(data=photo, headers={**auth, "X-Enhance-Scale": "3", "X-Enhance-Format": "jpeg"}),
            3,
            "image/jpeg",
        ),
        (
            "multipart, 4x, webp",
            dict(
                files={"data": ("photo.png", photo)},
                data={"scale": "4", "format": "webp"},
                headers=auth,
            ),
            4,
            "image/webp",
        ),
    ]
    failed = 0
    for label, kwargs, scale, content_type in cases:
        started = time.perf_counter()
        response = requests.post(url, timeout=300, **kwargs)
        took = time.perf_counter() - started
        expected = (300 * scale, 200 * scale)
        if response.status_code != 200:
            print(f"FAIL {label}: {response.status_code} {response.text[:300]}")
            failed += 1
            continue
        size = Image.open(io.BytesIO(response.content)).size
        ok = size == expected and response.headers.get("Content-Type") == content_type
        failed += not ok
        print(
            f"{'PASS' if ok else 'FAIL'} {label}: {size[0]}x{size[1]} "
            f"{response.headers.get('Content-Type')} "
            f"(expected {expected[0]}x{expected[1]} {content_type}) in {took:.2f} s"
        )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "start", help="archive if stale, start TorchServe, wait until READY"
    )
    start.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        metavar="PT",
        help="TorchScript model with its card beside it (default: %(default)s)",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds to wait for a READY worker (default: %(default)s)",
    )
    start.set_defaults(run=cmd_start)
    commands.add_parser("stop", help="stop TorchServe").set_defaults(run=cmd_stop)
    commands.add_parser(
        "status", help="show TorchServe and its worker; exit 1 unless READY"
    ).set_defaults(run=cmd_status)
    key = commands.add_parser("key", help="print the current key (default: inference)")
    key.add_argument("--kind", choices=("inference", "management", "API"), default="inference")
    key.set_defaults(run=cmd_key)
    commands.add_parser(
        "smoke", help="enhance a generated photo through the running server"
    ).set_defaults(run=cmd_smoke)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ServeError as error:
        print(f"serve: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
