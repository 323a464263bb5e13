"""TorchServe serving the enhancer from a run folder: start, wait until READY, stop, inspect.

TorchServe runs with a ``config.properties`` and a model store, from a run folder (``.run/`` for
``make run``): its key file (``key_file.json``, fresh keys at each start), its logs (``logs/``), its
pid file and worker sockets (``tmp/``, through TMPDIR and TEMP) all live there, so it never collides
with another TorchServe on the machine. Every call to it goes through ``enhancer.client``, which
rotates an expired key: readiness, ``status`` and the container's health check keep working past
``token_expiration_min``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from enhancer.client import TorchServeClient, TorchServeError, worker_statuses
from enhancer.contract import MODEL_NAME, option_header
from scripts.ops import archive
from scripts.ops.paths import CONFIG, DEFAULT_MODEL, MODEL_STORE, RUN_DIR, restore_beside
from scripts.ops.processes import alive, children, runs
from scripts.ops.properties import read_properties

JAVA_PACKAGE = "openjdk-17-jre-headless"
MODEL_COMMAND = "make train && make export"

# Lines of a worker that failed to load its model: TorchServe retries forever (with backoff) and
# never says "failed" for good, so the first of these means the start has failed.
_LOAD_FAILURES = (
    re.compile(r"Backend worker process died"),
    re.compile(r"Load model failed"),
    re.compile(r"Worker disconnected\. WORKER_STARTED"),
)
# The frontend could not even unpack an archive (a damaged zip): the model never gets a worker.
_FRONTEND_FAILURE = re.compile(r"Failed to load model: (\S+)\s*\n(\S+(?:Exception|Error)\b.*)")
_ERROR_LINE = re.compile(r"MODEL_LOG - ((?:[\w.]+)?(?:Error|Exception)\b.*)$")
_DIED = "the worker died while loading the model (see the log)"
# The frontend's log can show the worker's death before the model log holds the worker's error
# line (both are written asynchronously): wait this long for that line before reporting without it.
_ERROR_LINE_GRACE_S = 5.0


class ServeError(Exception):
    """TorchServe cannot be started, or did not become ready; the message says what to do."""


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

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    @cached_property
    def client(self) -> TorchServeClient:
        """The client for this instance's APIs and key file (it rotates expired keys)."""
        return TorchServeClient(
            self.inference_url,
            self.management_url,
            self.model_name,
            self.key_file,
            status_timeout=5.0,
            read_timeout=300.0,
        )

    def key(self, kind: str = "inference") -> str:
        """The current key of ``kind`` ("inference", "management" or "API") from the key file.

        Raises:
            ServeError: no key file (TorchServe is not running from this folder).
        """
        try:
            return self.client.keys.get(kind)
        except TorchServeError:
            raise ServeError(
                f"no key file at {self.key_file}: is TorchServe running from {self.workdir}?"
            ) from None

    def model_status(self) -> dict:
        """The management API's description of the model (workers and their status).

        Raises:
            ServeError: TorchServe did not answer, or refused even a rotated key.
        """
        try:
            return self.client.model_status()
        except TorchServeError as error:
            raise ServeError(error.message) from None

    def ready(self) -> bool:
        """Whether the model has a READY worker (an expired key is rotated, not taken as "no")."""
        return self.client.ready()

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
        frontend = _FRONTEND_FAILURE.search(text)
        if frontend:
            mar, error = (group.strip() for group in frontend.groups())
            if "zip" in error.lower():
                return f"the archive {mar} is damaged: TorchServe cannot unpack it ({error})"
            return f"TorchServe cannot load {mar}: {error}"
        if not any(pattern.search(text) for pattern in _LOAD_FAILURES):
            return None
        errors = [m.group(1).strip() for m in map(_ERROR_LINE.search, text.splitlines()) if m]
        return errors[-1] if errors else _DIED


_TORCHSERVE_MARKERS = ("org.pytorch.serve.ModelServer", "model_service_worker")


def verify_archives(model_store: Path, archives: str) -> None:
    """Check each archive of a ``--models`` value before TorchServe is started on it.

    Raises:
        ServeError: an archive is damaged (``archive.verify_archive``: its recorded sha256, a
            member's CRC or its manifest), naming the file.
    """
    for entry in archives.split(","):
        name = entry.partition("=")[2] or entry
        try:
            archive.verify_archive(Path(model_store) / name)
        except archive.ArchiveDamaged as error:
            raise ServeError(str(error)) from None


def launch(
    instance: Instance, config: Path, model_store: Path, archives: str, *, verify: bool = True
) -> None:
    """Run ``torchserve --start`` for ``instance`` (returns once the JVM is launched, not ready).

    Args:
        instance: where it runs; its folders are created.
        config: the config.properties to use.
        model_store: the folder holding the archives.
        archives: the ``--models`` value, e.g. "enhancer=enhancer.mar".
        verify: check the archives first (``verify_archives``); tests turn it off to show that
            the worker refuses a damaged archive by itself.

    Raises:
        ServeError: a damaged archive, or the launcher failed (the message holds its output).
    """
    if verify:
        verify_archives(model_store, archives)
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
    workers = children(pid)
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
        if alive(child) and runs(child, *_TORCHSERVE_MARKERS):
            os.kill(child, signal.SIGKILL)
    (instance.workdir / "key_file.json").unlink(missing_ok=True)
    return True


def run_instance() -> Instance:
    """The instance ``make run`` manages: .run/ with the repository's config."""
    return Instance.from_config(RUN_DIR, CONFIG)


def start(
    instance: Instance,
    model: Path = DEFAULT_MODEL,
    *,
    config: Path = CONFIG,
    timeout: float = 300.0,
    log: Callable[[str], None] = print,
) -> Path:
    """Check Java and the model, build the archive if stale, start TorchServe, wait until READY.

    What ``python -m scripts.serve start`` and the container do (the container with its own
    ``config``). On failure TorchServe is stopped again.

    Returns:
        The archive served.

    Raises:
        ServeError: no Java, no model, an archive that cannot be built, or no READY worker.
    """
    log(check_java())
    model = Path(model)
    if not model.exists() or not model.with_suffix(".json").exists():
        raise ServeError(
            f"no model to serve: {model} and its card {model.with_suffix('.json').name} are "
            f"needed.\nThe default model is trained and exported by `{MODEL_COMMAND}` (README, "
            '"Train, export, evaluate"); or serve your own: '
            "python -m scripts.serve start --model path/to/model.pt"
        )
    restore = restore_beside(model)
    if restore is not None:
        log(f"serving the clean/restore pair: {model.name} and {restore.name} (the denoise option)")
    built = MODEL_STORE / f"{MODEL_NAME}.mar"
    if built.exists() and archive.sidecar(built).exists():
        # a damaged archive is reported, not silently rebuilt: something corrupted it
        verify_archives(MODEL_STORE, built.name)
    try:
        stale = archive.is_stale(built, model, name=MODEL_NAME, restore=restore)
        mar = archive.build_archive(
            model, name=MODEL_NAME, export_path=MODEL_STORE, restore=restore
        )
    except archive.ArchiveError as error:
        raise ServeError(str(error)) from None
    digest = archive.file_sha256(mar)
    log(f"archive {'built' if stale else 'up to date'}: {mar} (sha256 {digest[:16]}...)")
    launch(instance, config, MODEL_STORE, f"{MODEL_NAME}={mar.name}")
    log(f"TorchServe starting from {instance.workdir}; waiting for a READY worker...")
    try:
        waited = wait_ready(instance, timeout)
    except ServeError:
        stop(instance)
        raise
    log(f"'{MODEL_NAME}' READY after {waited:.1f} s")
    return mar


def status_lines(instance: Instance) -> tuple[bool, list[str]]:
    """Whether the model has a READY worker, and lines that say how TorchServe and it are."""
    pid = instance.pid()
    if pid is None:
        return False, [f"TorchServe is not running from {instance.workdir}."]
    try:
        described = instance.model_status()
    except ServeError as error:
        return False, [
            f"TorchServe runs (pid {pid}) but its management API did not answer: {error}"
        ]
    lines = [
        f"TorchServe runs (pid {pid}); model '{described.get('modelName')}' version "
        f"{described.get('modelVersion')}, queue {described.get('jobQueueStatus')}"
    ]
    for worker in described.get("workers", []):
        lines.append(f"  worker {worker.get('id')} pid {worker.get('pid')}: {worker.get('status')}")
    return "READY" in worker_statuses(described), lines


def usage_text(instance: Instance) -> str:
    """How to call the running service."""
    url = f"{instance.inference_url}/predictions/{instance.model_name}"
    key = "$(.venv/bin/python -m scripts.serve key)"
    return "\n".join(
        [
            f"inference:  POST {url}",
            "key:        .venv/bin/python -m scripts.serve key   (from .run/key_file.json;",
            "            new at each start, expires after token_expiration_min; send it as",
            "            'Authorization: Bearer <key>')",
            "try:",
            f'  curl -H "Authorization: Bearer {key}" -T photo.jpg {url} -o photo_x2.jpg',
            f'  curl -H "Authorization: Bearer {key}" -F data=@photo.jpg -F scale=4 \\',
            f"       -F format=webp {url} -o photo_x4.webp",
            "logs:       .run/logs/ (model_log.log, ts_log.log)    stop: make stop",
        ]
    )


def smoke(instance: Instance) -> int:
    """Enhance a generated photo through the running server, raw and multipart, and check sizes."""
    import numpy as np
    from PIL import Image

    url = f"{instance.inference_url}/predictions/{instance.model_name}"
    y, x = np.mgrid[0:200, 0:300].astype(np.float32)
    rgb = np.stack([0.5 + 0.4 * np.sin(x / 40), 0.5 + 0.4 * np.cos(y / 30), (x + y) / 500 % 1], -1)
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buffer, "PNG")
    photo = buffer.getvalue()
    raw = {"Content-Type": "application/octet-stream"}
    cases = [
        (
            "raw, 2x, png",
            dict(data=photo, headers=raw),
            2,
            "image/png",
        ),
        (
            "raw, 3x, jpeg",
            dict(
                data=photo,
                headers={**raw, option_header("scale"): "3", option_header("format"): "jpeg"},
            ),
            3,
            "image/jpeg",
        ),
        (
            "multipart, 4x, webp",
            dict(
                files={"data": ("photo.png", photo)},
                data={"scale": "4", "format": "webp"},
            ),
            4,
            "image/webp",
        ),
    ]
    failed = 0
    for label, kwargs, scale, content_type in cases:
        started = time.perf_counter()
        try:
            response = instance.client.call("POST", url, "inference", **kwargs)
        except TorchServeError as error:
            print(f"FAIL {label}: {error}")
            failed += 1
            continue
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
