"""Triton Inference Server through PyTriton: the libpython detail, socket paths, loading the engine
and waiting for the model (``scripts.triton_serve`` runs it; the adapter itself is
``enhancer.serving.triton``; the settings it shares with TorchServe are ``scripts.ops.serving``).

libpython: PyTriton runs models through Triton's Python backend stub, which links the *system*
``libpython3.X.so.1.0``. When this interpreter is another build (pyenv, a python:3.x Docker image)
its own library directory must come first on LD_LIBRARY_PATH, or the stub dies at start with
errors such as "'_thread.RLock' object has no attribute '_recursion_count'". ``use_own_libpython``
sets that before starting Triton; PyTriton hands ``os.environ`` to tritonserver, which hands it to
the stub, so no re-exec of this process is needed.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from enhancer.catalog import find_models
from enhancer.contract import MODEL_NAME
from enhancer.engine import Enhancer, configure_cpu_threads, native_beside
from enhancer.settings import EnhancerSettings
from scripts.ops.paths import face_beside, restore_beside

logger = logging.getLogger(__name__)


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
    restore = restore_beside(model)  # a restore.pt beside it: the clean/restore pair (denoise)
    if restore is not None:
        logger.info("serving the clean/restore pair: %s and %s", model.name, restore.name)
    face = face_beside(model)  # a face.pt beside it: the face path (faces option)
    native = native_beside(model)  # an enhancer4.pt beside it: the native 4x path (passes.py)
    # every other model with its card in the folder (or one level down): the ``model`` option
    extras = find_models(
        model.parent, skip=[model, *([restore] if restore else []), *([native] if native else [])]
    )
    return Enhancer.load(
        model,
        device=device,
        settings=settings,
        restore_path=restore,
        face_path=face,
        extra_models=extras,
        native_path=native,
    )


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
