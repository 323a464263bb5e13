"""The page under gunicorn for end-to-end tests, started as ``python -m scripts.page start`` does,
on a free port, pointed at a test TorchServe (tests/helpers/servers.py) and its key file.

    page = start_page(torchserve, tmp_path / "page", MAX_UPLOAD_BYTES=1_000_000)
    try:
        requests.post(f"{page.url}/enhance", files={"image": ("p.png", png)})
    finally:
        stop_page(page)

Keyword arguments become ``FLASK_*`` settings of the app (frontend/__init__.py).
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from scripts.ops import page as page_script


@dataclass
class Page:
    """A gunicorn serving the page, started by ``start_page``."""

    url: str
    process: subprocess.Popen
    log: Path
    access_log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def answered(self, status: int) -> int:
        """How many uploads gunicorn's access log shows answered with ``status``."""
        text = self.access_log.read_text(errors="replace") if self.access_log.exists() else ""
        return text.count(f'"POST /enhance HTTP/1.1" {status} ')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_page(ts, workdir: Path, **config) -> Page:
    """Start the page under gunicorn for TorchServe ``ts`` as scripts.ops.page does; wait for it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    extra = {f"FLASK_{name}": str(value) for name, value in config.items()}
    env = page_script.page_env(
        ts.inference_url, ts.management_url, ts.workdir / "key_file.json", extra
    )
    log, access_log = workdir / "page.log", workdir / "page_access.log"
    command = page_script.gunicorn_command(
        "127.0.0.1", port, workers=2, error_log=log, access_log=access_log
    )
    process = page_script.launch(command, env, log)
    page = Page(f"http://127.0.0.1:{port}", process, log, access_log)
    try:
        page_script.wait_ready(page.url, process, None, 60, log)
    except BaseException:
        stop_page(page)
        raise
    return page


def stop_page(page: Page) -> None:
    page_script.stop_pid(page.process.pid)
    page.process.wait(30)


def multipart(
    image: bytes,
    boundary: str = "limit-test",
    options: list[tuple[str, bytes]] = (),
    options_first: bool = True,
) -> tuple[bytes, str]:
    """A multipart body with ``image`` as the file field "image" and ``options`` as fields, and its
    Content-Type."""
    file_part = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + b"\r\n"
    )
    fields = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value
        + b"\r\n"
        for name, value in options
    )
    parts = fields + file_part if options_first else file_part + fields
    return parts + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def predictions_logged(ts) -> int:
    """How many predictions TorchServe's access log has recorded: what reached the worker."""
    path = ts.workdir / "logs" / "access_log.log"
    return (
        path.read_text(errors="replace").count("POST /predictions/enhancer") if path.exists() else 0
    )
