"""The page's routes through Flask's test client, with TorchServe imitated by a local HTTP stub.

The stub (``StubTorchServe``) speaks TorchServe's protocol as proven live on 0.12.0: inference and
management on separate ports, token authorization with keys in a key_file.json (a missing, wrong or
expired key is a 400 InvalidKeyException, /ping included), ``GET /token?type=...`` with the API key
rotating a key and rewriting the file, the handler's JSON errors, and the server's own failures
(queue full, worker died, hangs). Each test sets how it answers.

Covers RELIABILITY.md section 6 rows S3, S4, F1-F10 and R4 at the Flask level;
tests/test_browser_e2e.py repeats the ones that need real servers.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from enhancer.client import TorchServeClient
from enhancer.contract import ALLOWED_TEXT, sniff_format
from frontend import create_app
from frontend.ratelimit import RateLimiter
from frontend.security import FORM_ALLOWANCE, MIN_FORM_MEMORY_SIZE
from tests.helpers.images import padded

INVALID_KEY = {
    "code": 400,
    "type": "InvalidKeyException",
    "message": "Token Authorization failed. "
    "Token either incorrect, expired, or not provided correctly",
}
QUEUE_FULL = {
    "code": 503,
    "type": "ServiceUnavailableException",
    "message": 'Model "enhancer" has no worker to serve inference request. '
    "Please use scale workers API to add workers.",
}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


# -- a TorchServe imitation ------------------------------------------------------------------------


class StubTorchServe:
    """TorchServe's inference and management APIs, token authorization included, on free ports.

    Attributes:
        answer: how POST /predictions/enhancer answers: a callable (body, headers) -> (status,
            content type, bytes); the default enhances like the real handler (resize by the scale).
        predictions: (headers, body) of every prediction request that passed authorization.
        requests: (method, path) of every request on either port.
        rotations: how many keys /token rotated.
        workers: the worker statuses GET /models/enhancer reports.
    """

    def __init__(self, workdir: Path):
        self.key_file = Path(workdir) / "key_file.json"
        self.answer = enhance_like_handler
        self.predictions: list[tuple[dict, bytes]] = []
        self.requests: list[tuple[str, str]] = []
        self.rotations = 0
        self.workers = ["READY"]
        self.estimator: dict | None = None  # the worker's cost estimator, as describe_handle says
        self.described = 0  # GET /models/enhancer?customized=true answered
        self.listing: dict | None = None  # the served models, as describe_handle lists them
        self.expired: set[str] = set()
        self.release = threading.Event()  # ends hanging answers early at close()
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._ports: tuple[int, int] = (0, 0)
        self.start()

    # the server's life

    def start(self) -> None:
        """Start (again, on the same ports after ``stop``) with fresh keys, as TorchServe does."""
        self.keys = {kind: secrets.token_urlsafe(6) for kind in ("inference", "management", "API")}
        self.expired.clear()
        self._write_keys()
        self._servers = [
            self._serve(self._ports[0], "inference"),
            self._serve(self._ports[1], "management"),
        ]
        self._ports = (self._servers[0].server_port, self._servers[1].server_port)

    def stop(self) -> None:
        """Stop listening and delete the key file, as ``torchserve --stop`` does."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []
        self.key_file.unlink(missing_ok=True)

    def close(self) -> None:
        self.release.set()
        self.stop()

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self._ports[0]}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self._ports[1]}"

    def expire(self, kind: str = "inference") -> None:
        """Let the ``kind`` key expire: refused from now on, though the file still holds it."""
        self.expired.add(kind)

    def _write_keys(self) -> None:
        self.key_file.write_text(
            json.dumps(
                {
                    "management": {"key": self.keys["management"], "expiration time": "soon"},
                    "inference": {"key": self.keys["inference"], "expiration time": "soon"},
                    "API": {"key": self.keys["API"]},
                }
            )
        )

    def _serve(self, port: int, api: str) -> ThreadingHTTPServer:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub._handle(self, api)

            def do_POST(self):
                stub._handle(self, api)

            def do_OPTIONS(self):
                stub._handle(self, api)

            def log_message(self, *args):
                pass

        server = _QuietServer(("127.0.0.1", port), Handler)
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return server

    # the protocol

    def _authorized(self, handler, kind: str) -> bool:
        sent = handler.headers.get("Authorization", "")
        return sent == f"Bearer {self.keys[kind]}" and kind not in self.expired

    def _handle(self, handler: BaseHTTPRequestHandler, api: str) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append((handler.command, url.path))
        if api == "inference" and url.path == "/ping":
            if not self._authorized(handler, "inference"):
                return _send(handler, 400, "application/json", json.dumps(INVALID_KEY).encode())
            return _send(handler, 200, "application/json", b'{"status": "Healthy"}')
        if (
            api == "inference"
            and url.path.startswith("/predictions/")
            and handler.command == "POST"
        ):
            if not self._authorized(handler, "inference"):
                return _send(handler, 400, "application/json", json.dumps(INVALID_KEY).encode())
            if url.path != "/predictions/enhancer":
                return _send(
                    handler,
                    404,
                    "application/json",
                    b'{"code": 404, "type": "ModelNotFoundException"}',
                )
            with self._lock:
                self.predictions.append((dict(handler.headers), body))
            status, content_type, data, *extra = self.answer(body, handler.headers)
            return _send(handler, status, content_type, data, *extra)
        if api == "management" and url.path == "/models/enhancer":
            if not self._authorized(handler, "management"):
                return _send(handler, 400, "application/json", json.dumps(INVALID_KEY).encode())
            described = [
                {
                    "modelName": "enhancer",
                    "workers": [{"id": "9000", "status": s} for s in self.workers],
                }
            ]
            if parse_qs(url.query).get("customized") == ["true"]:
                with self._lock:
                    self.described += 1
                described[0]["customizedMetadata"] = {
                    "estimator": self.estimator,
                    **(self.listing or {}),
                }
            return _send(handler, 200, "application/json", json.dumps(described).encode())
        if api == "management" and url.path == "/token":
            if handler.headers.get("Authorization") != f"Bearer {self.keys['API']}":
                return _send(handler, 400, "application/json", json.dumps(INVALID_KEY).encode())
            kind = parse_qs(url.query).get("type", [""])[0]
            if kind not in ("inference", "management"):
                return _send(handler, 400, "application/json", b'{"code": 400}')
            with self._lock:
                self.keys[kind] = secrets.token_urlsafe(6)
                self.expired.discard(kind)
                self.rotations += 1
                self._write_keys()
            return _send(handler, 200, "application/json", b"\n")
        _send(
            handler, 404, "application/json", b'{"code": 404, "type": "ResourceNotFoundException"}'
        )


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a test that makes the stub drop a connection needs no traceback on stderr


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    content_type: str,
    data: bytes,
    length=None,
    headers: dict | None = None,
) -> None:
    """Answer; ``length`` declares another Content-Length than the data has (a cut-off answer);
    ``headers``: more response headers."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(data) if length is None else length))
    handler.end_headers()
    handler.wfile.write(data)


def enhance_like_handler(body: bytes, headers) -> tuple[int, str, bytes]:
    """What the real handler does, minus the model: resize by X-Enhance-Scale, encode as asked."""
    try:
        image = Image.open(io.BytesIO(body))
        image.load()
    except Exception:  # noqa: BLE001 - any undecodable input is a 400, as in the handler
        return (
            400,
            "application/json",
            b'{"code": 400, "type": "BadRequest", "message": "not a readable image"}',
        )
    scale = float(headers.get("X-Enhance-Scale", "2"))
    fmt = headers.get("X-Enhance-Format", "png")
    fmt = {"auto": "png", "jpg": "jpeg"}.get(fmt, fmt)
    out = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)))
    buffer = io.BytesIO()
    params = (
        {"quality": int(headers["X-Enhance-Quality"])}
        if "X-Enhance-Quality" in headers and fmt != "png"
        else {}
    )
    out.save(buffer, format=fmt.upper(), **params)
    return 200, CONTENT_TYPES[fmt], buffer.getvalue()


def answer_with(status: int, body: dict | bytes, content_type: str = "application/json"):
    """An ``answer`` that always sends ``status`` with ``body``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda _body, _headers: (status, content_type, data)


# -- images and uploads ----------------------------------------------------------------------------


def image_bytes(width: int = 40, height: int = 30, fmt: str = "PNG") -> bytes:
    """A small gradient image in ``fmt``."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def padded_png(size: int) -> bytes:
    """A valid 40x30 PNG of exactly ``size`` bytes, padded with incompressible bytes."""
    return padded(image_bytes(), size)


def padded_image(fmt: str, size: int) -> bytes:
    """A valid 40x30 PNG or JPEG of exactly ``size`` bytes, padded with incompressible bytes."""
    return padded(image_bytes(fmt="PNG" if fmt == "png" else "JPEG"), size)


BOUNDARY = "----enhancer-test-boundary"


def multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A multipart/form-data body of (field name, file name or None, value) parts."""
    out = io.BytesIO()
    for name, filename, value in parts:
        out.write(f"--{BOUNDARY}\r\n".encode())
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        if filename is not None:
            out.write(b"Content-Type: image/png\r\n")
        out.write(b"\r\n" + value + b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def post_multipart(client, body: bytes, **kwargs):
    return client.post(
        "/enhance", data=body, content_type=f"multipart/form-data; boundary={BOUNDARY}", **kwargs
    )


def upload(
    client,
    data: bytes,
    filename: str = "photo.png",
    content_type: str = "image/png",
    headers=None,
    **options,
):
    """POST /enhance with one file and option fields, as the page's FormData does."""
    form = {"image": (io.BytesIO(data), filename, content_type), **options}
    return client.post(
        "/enhance", data=form, content_type="multipart/form-data", headers=headers or {}
    )


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def stub(tmp_path):
    """A TorchServe imitation, stopped after the test."""
    server = StubTorchServe(tmp_path)
    yield server
    server.close()


@pytest.fixture
def make_app(stub):
    """Factory: make_app(**config overrides) -> a testing app pointed at the stub."""

    def make(**overrides):
        config = {
            "TESTING": True,
            "TORCHSERVE_URL": stub.inference_url,
            "TORCHSERVE_MANAGEMENT_URL": stub.management_url,
            "KEY_FILE": str(stub.key_file),
            "CONNECT_TIMEOUT": 2.0,
            "READ_TIMEOUT": 10.0,
            "STATUS_TIMEOUT": 2.0,
            "MAX_UPLOAD_BYTES": 200_000,
        }
        config.update(overrides)
        return create_app(config)

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def assert_error(response, status: int, kind: str | None = None) -> dict:
    """Check that the response is a JSON error {"code", "type", "message"} (a 413 may add
    "max_scale", a 503 the page's queue figures); return the body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    extra = {413: {"max_scale"}, 503: {"expected_wait", "limit", "in_flight"}}.get(status, set())
    assert set(body) - extra == {"code", "type", "message"}
    assert body["code"] == status
    if kind is not None:
        assert body["type"] == kind
    assert body["message"]
    return body


# -- the app factory and the page ------------------------------------------------------------------


def test_defaults_and_environment(monkeypatch):
    monkeypatch.setenv("FLASK_TORCHSERVE_URL", "http://127.0.0.1:18080")
    monkeypatch.setenv("FLASK_READ_TIMEOUT", "42")
    monkeypatch.setenv("FLASK_MAX_UPLOAD_BYTES", "1000")
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    app = create_app()
    assert app.config["TORCHSERVE_URL"] == "http://127.0.0.1:18080"
    assert app.config["READ_TIMEOUT"] == 42  # parsed as JSON
    assert app.config["MAX_UPLOAD_BYTES"] == 1000
    assert app.config["MAX_CONTENT_LENGTH"] == 1000 + FORM_ALLOWANCE
    assert app.config["KEY_FILE"].endswith(".run/key_file.json")
    assert app.config["MAX_FORM_PARTS"] <= 100
    assert MIN_FORM_MEMORY_SIZE <= app.config["MAX_FORM_MEMORY_SIZE"] <= 1024 * 1024
    assert not app.debug and not app.testing
    client = app.extensions["torchserve"]
    assert client.inference_url == "http://127.0.0.1:18080" and client.read_timeout == 42


def test_page_takes_formats_and_extensions_from_the_contract(client):
    from enhancer import contract

    html = client.get("/").get_data(as_text=True)
    (accept,) = re.findall(r'accept="([^"]+)"', html)
    for media, suffixes in contract.INPUT_MEDIA_TYPES.values():
        assert media in accept.split(",") and set(suffixes) <= set(accept.split(","))
    config = json.loads(
        re.search(r'<script type="application/json" id="page-config">(.*?)</script>', html, re.S)[1]
    )
    assert config["extensions"] == {
        contract.CONTENT_TYPES[fmt]: ext for fmt, ext in contract.FILE_EXTENSIONS.items()
    }
    assert config["extensions"]["image/avif"] == "avif"
    assert config["extensions"]["image/tiff"] == "tif"
    for name in contract.FORMATS:
        # TIFF is written by the API and the batch command; no browser can show it
        assert (f'value="{name}"' in html) == (name != "tiff"), name
    # the clean-up slider steps through the served denoise levels, starting at the default
    assert config["denoiseLevels"] == list(contract.DENOISE_LEVELS)
    (slider,) = re.findall(r'<input type="range" name="denoise"[^>]*>', html)
    assert f'max="{len(contract.DENOISE_LEVELS) - 1}"' in slider
    assert f'value="{contract.DENOISE_LEVELS.index(contract.DENOISE_DEFAULT)}"' in slider


def test_page_is_served_with_its_own_assets(client, stub):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)

    config = json.loads(
        re.search(r'<script type="application/json" id="page-config">(.*?)</script>', html, re.S)[1]
    )
    assert config["enhanceUrl"] == "/enhance" and config["healthUrl"] == "/health"
    assert config["maxBytes"] == 200_000
    # Every script is either a same-origin file or inert JSON data; no inline handlers or styles.
    for tag in re.findall(r"<script\b[^>]*>", html):
        same_origin = re.search(r'src="/static/[\w./-]+\.js"', tag)
        assert 'type="application/json"' in tag or same_origin, tag
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert not re.search(r"\sstyle\s*=", html), "inline style attribute"
    assert "http://" not in html and "https://" not in html, "no external (CDN) resources"
    # The browser never learns where TorchServe is.
    assert stub.inference_url not in html and stub.management_url not in html
    for port in ("8080", "8081", "8082"):
        assert port not in html

    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert {"/static/app.js", "/static/style.css", "/static/favicon.svg"} <= set(assets)
    # the zip library, vendored with its licence (no CDN, no build step)
    assert "/static/vendor/fflate-0.8.2.min.js" in assets
    assert client.get("/static/vendor/fflate-0.8.2.LICENSE").status_code == 200
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert served.mimetype == types[Path(asset).suffix], asset
        served.close()


def test_script_builds_no_markup_from_strings(client):
    response = client.get("/static/app.js")
    script = response.get_data(as_text=True)
    response.close()
    # File names and server messages reach the page only as text (F3): no HTML parsing from strings.
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ):
        assert sink not in script, sink
    assert "textContent" in script


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/health", "/enhance", "/nowhere"])
def test_security_headers_on_every_response(client, path):
    response = client.get(path)
    csp = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    response.close()


# -- enhancing -------------------------------------------------------------------------------------


def test_enhance_streams_the_result_from_torchserve(client, stub):
    photo = image_bytes(40, 30)
    response = upload(client, photo, scale="2")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "image/png"
    assert response.is_streamed
    data = response.get_data()
    assert int(response.headers["Content-Length"]) == len(data)
    assert Image.open(io.BytesIO(data)).size == (80, 60)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"

    [(headers, body)] = stub.predictions
    assert body == photo  # the raw image, not a multipart wrapper
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Authorization"] == f"Bearer {stub.keys['inference']}"
    assert headers["X-Enhance-Scale"] == "2"


def test_enhance_passes_the_options_on(client, stub):
    response = upload(
        client, image_bytes(20, 10), scale="3", format="WebP", quality="80", strength="0.5"
    )
    assert response.status_code == 200
    assert response.mimetype == "image/webp"
    assert Image.open(io.BytesIO(response.get_data())).size == (60, 30)
    [(headers, _)] = stub.predictions
    assert (headers["X-Enhance-Scale"], headers["X-Enhance-Format"]) == ("3", "webp")
    assert (headers["X-Enhance-Quality"], headers["X-Enhance-Strength"]) == ("80", "0.5")


def test_page_offers_auto_scale_level_enhance_first_metadata_and_compare(client):
    from enhancer import contract

    html = client.get("/").get_data(as_text=True)
    assert '<option value="auto">Auto' in html
    assert re.search(r'<select name="level"', html)
    for level in contract.LEVELS:
        assert f'<option value="{level}">' in html
    assert re.search(r'<input type="checkbox" name="enhance_first"[^>]*value="true"', html)
    for mode in contract.METADATA_MODES:
        assert f'value="{mode}"' in html
    assert re.search(r'<option value="strip-location" selected>', html)  # the API's default
    assert 'class="download-compare"' in html  # the download menu's side-by-side entry
    script = client.get("/static/app.js")
    assert "form.append('compare', 'true')" in script.get_data(as_text=True)
    script.close()


def test_new_options_go_on_and_the_scale_used_comes_back(client, stub):
    def answer(body, headers):
        status, content_type, data = enhance_like_handler(body, {"X-Enhance-Scale": "4"})
        return status, content_type, data, None, {"X-Enhance-Scale-Used": "4"}

    stub.answer = answer
    fields = {"level": "3", "enhance_first": "true", "compare": "true", "metadata": "strip"}
    response = upload(client, image_bytes(20, 10), scale="auto", **fields)
    assert response.status_code == 200
    assert response.headers["X-Enhance-Scale-Used"] == "4"
    assert Image.open(io.BytesIO(response.get_data())).size == (80, 40)
    [(headers, _)] = stub.predictions
    assert headers["X-Enhance-Scale"] == "auto"
    assert (headers["X-Enhance-Level"], headers["X-Enhance-Enhance-First"]) == ("3", "true")
    assert (headers["X-Enhance-Compare"], headers["X-Enhance-Metadata"]) == ("true", "strip")


LISTING = {
    "models": [
        {"name": "clean", "version": "2", "scale": 2, "default": True, "loaded": True,
         "quality": [{"track": "bicubic", "set": "set5", "scale": 2, "psnr": 37.2,
                      "ssim": 0.957, "bicubic_psnr": 33.67}]},
        {"name": "restore", "version": "2", "scale": 2, "default": True, "loaded": True,
         "quality": None},
        {"name": "Real_ESRGAN-x4", "version": "1", "scale": 4, "default": False,
         "loaded": False, "quality": None},
    ],
    "pair": True,
    "max_loaded": 2,
}  # fmt: skip


def test_the_model_listing_is_the_workers_and_is_kept_a_while(client, stub):
    stub.listing = LISTING
    response = client.get("/models")
    assert response.status_code == 200 and response.get_json() == LISTING
    assert client.get("/models").get_json() == LISTING
    assert stub.described == 1  # kept for MODELS_TTL
    html = client.get("/").get_data(as_text=True)
    assert re.search(r'<select name="model" id="opt-model"', html)  # filled in from /models
    assert '"modelsUrl": "/models"' in html


def test_the_model_listing_without_a_worker_list_is_empty_and_down_is_503(make_app, stub):
    assert make_app().test_client().get("/models").get_json()["models"] == []
    stub.stop()
    assert_error(make_app().test_client().get("/models"), 503)


def test_the_model_option_goes_on_as_typed_and_the_model_used_comes_back(client, stub):
    def answer(body, headers):
        status, content_type, data = enhance_like_handler(body, {"X-Enhance-Scale": "4"})
        return status, content_type, data, None, {"X-Enhance-Model": "Real_ESRGAN-x4"}

    stub.answer = answer
    response = upload(client, image_bytes(20, 10), model="Real_ESRGAN-x4", scale="4")
    assert response.status_code == 200
    assert response.headers["X-Enhance-Model"] == "Real_ESRGAN-x4"
    [(headers, _)] = stub.predictions
    assert headers["X-Enhance-Model"] == "Real_ESRGAN-x4"  # not lower-cased: names are exact
    body = assert_error(upload(client, image_bytes(), model="a b"), 400, "BadRequest")
    assert "model" in body["message"]


def test_empty_options_are_left_to_the_service(client, stub):
    response = upload(client, image_bytes(), scale="", format="", quality="")
    assert response.status_code == 200
    [(headers, _)] = stub.predictions
    assert not [name for name in headers if name.lower().startswith("x-enhance-")]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF"])
def test_every_accepted_format_goes_through(client, stub, fmt):
    data = image_bytes(fmt=fmt)
    assert sniff_format(data) == fmt
    response = upload(client, data, filename="x.bin", content_type="application/octet-stream")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(stub.predictions) == 1


@pytest.mark.parametrize(
    "form, message",
    [
        ({}, "No image"),
        ({"image": (io.BytesIO(b""), "empty.png", "image/png")}, "empty"),
        ({"image": [(io.BytesIO(b"a"), "a.png"), (io.BytesIO(b"b"), "b.png")]}, "one image"),
        ({"photo": (io.BytesIO(b"\x89PNG\r\n\x1a\n"), "p.png")}, "Unknown form field"),
        (
            {"image": (io.BytesIO(b"\x89PNG\r\n\x1a\n"), "p.png"), "colour": "red"},
            "Unknown form field",
        ),
        (
            {"image": (io.BytesIO(b"\x89PNG\r\n\x1a\n"), "p.png"), "scale": "2\r\nX-Evil: 1"},
            "Option 'scale'",
        ),
        (
            {"image": (io.BytesIO(b"\x89PNG\r\n\x1a\n"), "p.png"), "format": "p" * 40},
            "Option 'format'",
        ),
        (
            {"image": (io.BytesIO(b"\x89PNG\r\n\x1a\n"), "p.png"), "scale": ["2", "4"]},
            "more than once",
        ),
    ],
    ids=[
        "no-file",
        "empty-file",
        "two-files",
        "wrong-file-field",
        "unknown-field",
        "header-injection",
        "long-value",
        "option-twice",
    ],
)
def test_bad_uploads_are_400_and_never_forwarded(client, stub, form, message):
    response = client.post("/enhance", data=form, content_type="multipart/form-data")
    body = assert_error(response, 400, "BadRequest")
    assert message in body["message"]
    assert stub.predictions == []


@pytest.mark.parametrize(
    "data",
    [
        b"<!doctype html><html><script>alert(1)</script></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        b"%PDF-1.7\n" + b"0" * 100,
        b"8BPS\x00\x01" + b"\0" * 100,  # PSD: an image, but not one the service takes
        b"BMW 320i, 2004, good condition" + b" " * 40,  # starts like a BMP, is not one
        bytes(range(256)) * 4,
    ],
    ids=["html", "svg", "pdf", "psd", "bm-text", "binary"],
)
def test_content_is_sniffed_not_trusted(client, stub, data):
    # F4: HTML bytes declared as image/png under a .png name is still refused.
    response = upload(client, data, filename="photo.png", content_type="image/png")
    body = assert_error(response, 415, "UnsupportedMediaType")
    assert ALLOWED_TEXT in body["message"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert stub.predictions == []


def test_tiff_results_come_back_as_png_for_the_browser(client, stub):
    response = upload(
        client, image_bytes(fmt="TIFF"), filename="scan.tif", content_type="image/tiff"
    )
    assert response.status_code == 200
    [(headers, _)] = stub.predictions
    assert headers["X-Enhance-Format"] == "png"  # auto would be TIFF, which the page cannot show
    response = upload(client, image_bytes(), format="tif")
    assert_error(response, 400, "BadRequest")
    assert len(stub.predictions) == 1


@pytest.mark.parametrize(
    "data, filename, content_type",
    [
        (b"<!doctype html><html><script>alert(1)</script></html>", "IMG_0001.HEIC", "image/heic"),
        (b"8BPS\x00\x01" + b"\0" * 100, "scan.tif", "image/tiff"),
        (b"\x00\x00\x00\x18ftypcrx " + b"\0" * 100, "photo.avif", "image/avif"),
    ],
    ids=["html-as-heic", "psd-as-tiff", "camera-raw-as-avif"],
)
def test_new_formats_are_sniffed_too(client, stub, data, filename, content_type):
    response = upload(client, data, filename=filename, content_type=content_type)
    assert_error(response, 415, "UnsupportedMediaType")
    assert stub.predictions == []


# -- limits (F1, F2) -------------------------------------------------------------------------------


def test_upload_settings_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="MAX_UPLOAD_BYTES"):
        create_app({"TESTING": True, "MAX_CONTENT_LENGTH": 1000})
    with pytest.raises(ValueError, match="MAX_FORM_MEMORY_SIZE"):
        create_app({"TESTING": True, "MAX_FORM_MEMORY_SIZE": 64 * 1024})  # the 3.1.9 trap
    with pytest.raises(ValueError, match="MAX_UPLOAD_BYTES"):
        create_app({"TESTING": True, "MAX_UPLOAD_BYTES": 0})
    with pytest.raises(ValueError, match="BODY_MIN_RATE"):
        create_app({"TESTING": True, "BODY_MIN_RATE": 0})


def gunicorn_like(body: bytes, *, chunked: bool = False) -> Request:
    """The request as gunicorn hands it over: wsgi.input_terminated set; chunked: no length."""
    environ = EnvironBuilder(
        path="/enhance",
        method="POST",
        input_stream=io.BytesIO(body),
        content_length=None if chunked else len(body),
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
    ).get_environ()
    if chunked:
        environ.pop("CONTENT_LENGTH", None)
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input_terminated"] = True
    return Request(environ)  # a Request keeps the environ as is


MiB = 1024 * 1024


@pytest.mark.parametrize("fields", ["before", "after"])
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize(
    "size",
    [64 * 1024 - 1, 64 * 1024 + 1, 1_000_000, 10_000_000, 50 * MiB],
    ids=["64KiB-1", "64KiB+1", "1MB", "10MB", "50MiB"],
)
def test_real_photo_sizes_pass_up_to_the_limit(make_app, stub, size, fmt, fields):
    """Images of incompressible bytes up to the documented 50 MB go through, with the options
    before or after the file, through Flask's own request and as gunicorn hands it over."""
    client = make_app(MAX_UPLOAD_BYTES=50 * MiB).test_client()
    image = padded_image(fmt, size)
    assert len(image) == size
    options = [("scale", None, b"2"), ("format", None, b"png")]
    file_part = [("image", f"photo.{fmt}", image)]
    body = multipart(options + file_part if fields == "before" else file_part + options)
    for response in (
        post_multipart(client, body),
        client.open(gunicorn_like(body)),
    ):
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        assert Image.open(io.BytesIO(response.data)).size == (80, 60)
    assert len(stub.predictions) == 2
    assert all(sent == image for _, sent in stub.predictions)


def test_upload_limit_exact_plus_one_and_chunked(make_app, stub):
    limit = 200_000
    client = make_app(MAX_UPLOAD_BYTES=limit).test_client()
    fields = [("scale", None, b"2"), ("format", None, b"png")]

    # An image of exactly the limit, with its options, passes; under gunicorn too.
    at_limit = multipart(fields + [("image", "p.png", padded_png(limit))])
    assert len(at_limit) > limit  # the framing and fields come on top
    assert post_multipart(client, at_limit).status_code == 200
    assert client.open(gunicorn_like(at_limit)).status_code == 200
    assert len(stub.predictions) == 2

    # One byte more: refused by the image check, which names the image limit.
    over = multipart(fields + [("image", "p.png", padded_png(limit + 1))])
    for response in (post_multipart(client, over), client.open(gunicorn_like(over))):
        body = assert_error(response, 413, "PayloadTooLarge")
        assert "image is too large: 200,001 bytes" in body["message"]
        assert "200,000 bytes" in body["message"]

    # A body past the body limit (image + FORM_ALLOWANCE): refused before the form is parsed.
    huge = multipart([("image", "p.png", padded_png(limit + FORM_ALLOWANCE))])
    body = assert_error(post_multipart(client, huge), 413, "PayloadTooLarge")
    assert body["message"].startswith("The upload is too large (")
    assert "at most 0.191 MB per request" in body["message"]

    # Chunked, no Content-Length, twice the limit: what gunicorn hands over for Transfer-Encoding:
    # chunked (wsgi.input_terminated set, the body stream ends where the chunks end).
    chunked = multipart([("image", "p.png", padded_png(2 * limit + FORM_ALLOWANCE))])
    body = assert_error(client.open(gunicorn_like(chunked, chunked=True)), 413, "PayloadTooLarge")
    assert body["message"].startswith("The upload is too large:")

    assert len(stub.predictions) == 2  # no oversized upload reached TorchServe


def test_multipart_abuse_is_refused(make_app, stub):
    client = make_app(MAX_UPLOAD_BYTES=5 * 1024 * 1024).test_client()
    many_parts = multipart([("scale", None, b"")] * 2000 + [("image", "p.png", image_bytes())])
    big_field = multipart([("scale", None, b"1" * 1024 * 1024), ("image", "p.png", image_bytes())])
    just_over = multipart(
        [("scale", None, b"1" * (256 * 1024 + 1)), ("image", "p.png", image_bytes())]
    )
    tracemalloc.start()
    try:
        for body in (many_parts, big_field, just_over):
            message = assert_error(post_multipart(client, body), 413)["message"]
            # Not the image's fault, and the text says which limits apply.
            assert message.startswith("The form is too large: at most 16 parts"), message
            assert "256 KB" in message
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024  # RELIABILITY F2: memory growth under 20 MB
    # A field within werkzeug's limit but no option value: the option check's 400, not a 413.
    long_field = multipart([("scale", None, b"1" * 1000), ("image", "p.png", image_bytes())])
    assert_error(post_multipart(client, long_field), 400, "BadRequest")
    assert stub.predictions == []


def test_a_compressed_body_is_refused_not_decompressed_past_the_limits(client, stub):
    """RELIABILITY.md R7: the limits count the bytes that arrive, so a Content-Encoding is a 415."""
    import gzip

    body = gzip.compress(b"\0" * 5_000_000)  # 5 MB of zeros in about 5 KB
    response = client.post(
        "/enhance",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=x", "Content-Encoding": "gzip"},
    )
    message = assert_error(response, 415, "UnsupportedMediaType")["message"]
    assert "Content-Encoding 'gzip'" in message
    assert not stub.predictions


# -- file names (F3) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename",
    ["../../etc/passwd", "<script>alert(1)</script>.png", "é" * 5000 + ".png", 'a"; x=".png'],
    ids=["traversal", "script", "very-long", "quote"],
)
def test_file_names_are_never_used_or_reflected(client, stub, filename):
    ok = upload(client, image_bytes(), filename=filename)
    refused = upload(client, b"<html>not an image</html>", filename=filename)
    assert ok.status_code == 200 and refused.status_code == 415
    for response in (ok, refused):
        text = response.get_data().decode("latin-1")
        for piece in ("passwd", "<script>", "alert(1)", "éééé", 'x="'):
            assert piece not in text
        assert filename not in json.dumps(dict(response.headers))
    [(headers, body)] = stub.predictions
    assert body == image_bytes()
    assert filename not in json.dumps(headers)


def test_uploads_never_touch_the_disk(client, stub, monkeypatch):
    def no_temp_files(*args, **kwargs):
        raise AssertionError("an upload was spooled to a temporary file")

    # werkzeug's default puts every uploaded file in a SpooledTemporaryFile (on disk past 500 KB).
    for name in (
        "werkzeug.formparser.SpooledTemporaryFile",
        "tempfile.TemporaryFile",
        "tempfile.NamedTemporaryFile",
    ):
        monkeypatch.setattr(name, no_temp_files)
    photo = padded_png(150_000)
    response = upload(client, photo)
    assert response.status_code == 200
    assert stub.predictions[0][1] == photo


# -- cross-site requests (F6) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 403),
        ({"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:8081"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "http://localhost"}, 200),
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}, 200),
        ({}, 200),  # curl and scripts: no browser, no visitor to abuse
    ],
)
def test_cross_site_posts_are_refused(client, stub, headers, status):
    response = upload(client, image_bytes(), headers=headers)
    assert response.status_code == status
    if status == 403:
        assert_error(response, 403, "Forbidden")
        assert stub.predictions == []
    else:
        assert len(stub.predictions) == 1


# -- backend failures (F7, F9, F10, R4) ------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, status, kind, retry_after",
    [
        (
            answer_with(
                400,
                {"code": 400, "type": "BadRequest", "message": "option 'scale': 9 is out of range"},
            ),
            400,
            "BadRequest",
            False,
        ),
        (
            answer_with(
                413,
                {"code": 413, "type": "PayloadTooLarge", "message": "image too large: 9000x9000"},
            ),
            413,
            "PayloadTooLarge",
            False,
        ),
        (answer_with(413, b"", "text/plain"), 413, "PayloadTooLarge", False),  # Netty's own 413
        (
            answer_with(
                415, {"code": 415, "type": "UnsupportedMediaType", "message": "animated images"}
            ),
            415,
            "UnsupportedMediaType",
            False,
        ),
        (
            answer_with(
                500, {"code": 500, "type": "InternalServerException", "message": "Worker died."}
            ),
            502,
            "WorkerDied",
            False,
        ),
        (
            answer_with(
                507, {"code": 507, "type": "InternalServerException", "message": "Worker died."}
            ),
            502,
            "WorkerDied",
            False,
        ),
        (answer_with(503, QUEUE_FULL), 503, "ServiceBusy", True),
        (
            answer_with(
                503, {"code": 503, "type": "ServiceBusy", "message": "busy: this image needs"}
            ),
            503,
            "ServiceBusy",
            True,
        ),
        (
            answer_with(
                503,
                {"code": 503, "type": "InternalServerException", "message": "Prediction failed"},
            ),
            502,
            "BadGateway",
            False,
        ),
        (
            answer_with(
                507, {"code": 507, "type": "InsufficientStorage", "message": "out of memory"}
            ),
            503,
            "ServiceBusy",
            True,
        ),
        (
            answer_with(
                507, {"code": 507, "type": "InternalServerException", "message": "Out of resources"}
            ),
            503,
            "ServiceBusy",
            True,
        ),
        (answer_with(200, b"<html>oops</html>", "text/html"), 502, "BadGateway", False),
        (
            answer_with(
                502, b'Traceback (most recent call last):\n  File "/srv/x.py"', "text/plain"
            ),
            502,
            "BadGateway",
            False,
        ),
    ],
    ids=[
        "400",
        "413",
        "413-empty",
        "415",
        "500-worker-died",
        "507-worker-killed",
        "503-queue-full",
        "503-batch-busy",
        "503-prediction-failed",
        "507",
        "507-out-of-resources",
        "200-not-an-image",
        "502-traceback",
    ],
)
def test_torchserve_answers_map_to_clear_errors(client, stub, answer, status, kind, retry_after):
    stub.answer = answer
    response = upload(client, image_bytes())
    body = assert_error(response, status, kind)
    assert ("Retry-After" in response.headers) == retry_after
    text = response.get_data(as_text=True)
    for leak in (
        "Traceback",
        'File "',
        "/srv/",
        str(stub.key_file.parent),
        stub.keys["inference"],
        "127.0.0.1",
    ):
        assert leak not in text
    sent = answer(b"", {})[2]
    if status in (400, 413, 415) and sent.startswith(b"{"):
        assert body["message"] == json.loads(sent)["message"]  # the handler's own words
    # A worker that died is given the image once more (enhancement is idempotent), never a third
    # time: the image itself may be what kills it. Nothing else is sent twice.
    assert len(stub.predictions) == (2 if kind == "WorkerDied" else 1)
    if kind == "WorkerDied":
        assert "died on this image twice" in body["message"]
        assert "the image itself is the likely cause" in body["message"]
    if status == 503:
        assert "memory" in body["message"] or "busy" in body["message"]


def test_a_worker_that_died_once_is_retried_and_the_upload_succeeds(client, stub, caplog):
    died = answer_with(
        500, {"code": 500, "type": "InternalServerException", "message": "Worker died."}
    )
    answers = [died, enhance_like_handler]
    stub.answer = lambda body, headers: answers.pop(0)(body, headers)
    response = upload(client, image_bytes(), scale="2")
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.data)).size == (80, 60)
    assert len(stub.predictions) == 2
    assert "worker died during a request; sending it once more" in caplog.text


def test_out_of_memory_is_not_called_a_worker_death(client, stub):
    stub.answer = answer_with(
        507, {"code": 507, "type": "InsufficientStorage", "message": "out of memory on cuda"}
    )
    body = assert_error(upload(client, image_bytes()), 503, "ServiceBusy")
    assert "ran out of memory" in body["message"] and "died" not in body["message"]
    assert len(stub.predictions) == 1


def test_too_much_work_passes_the_largest_scale_that_fits_to_the_page(client, stub):
    refused = {
        "code": 413,
        "type": "PayloadTooLarge",
        "message": "too much work: ... the largest scale that fits this image is 2.5",
        "max_scale": 2.5,
    }
    stub.answer = answer_with(413, refused)
    body = assert_error(upload(client, image_bytes(), scale="8"), 413, "PayloadTooLarge")
    assert body["max_scale"] == 2.5
    assert body["message"] == refused["message"]


def test_unexpected_errors_tell_nothing(client, stub, monkeypatch):
    def broken(self, data, options):
        raise RuntimeError("secret detail at /etc/enhancer/config")

    monkeypatch.setattr(TorchServeClient, "enhance", broken)
    response = upload(client, image_bytes())
    body = assert_error(response, 500, "InternalServerError")
    assert "secret" not in body["message"] and "/etc/" not in response.get_data(as_text=True)


def test_backend_hang_is_a_504_within_the_read_timeout(make_app, stub):
    read_timeout = 1.5
    client = make_app(READ_TIMEOUT=read_timeout).test_client()

    def hang(body, headers):
        stub.release.wait(30)
        return 200, "image/png", image_bytes()

    stub.answer = hang
    started = time.monotonic()
    response = upload(client, image_bytes())
    took = time.monotonic() - started
    body = assert_error(response, 504, "GatewayTimeout")
    assert "1.5 seconds" in body["message"]
    assert read_timeout <= took < read_timeout + 1.0, took


def test_torchserve_down_then_back_without_restarting_flask(client, stub):
    assert upload(client, image_bytes()).status_code == 200
    keys = stub.key_file.read_text()
    stub.stop()
    for attempt in range(6):
        if attempt == 3:
            stub.key_file.write_text(keys)  # a crash leaves the key file behind: connection refused
        started = time.monotonic()
        response = upload(client, image_bytes())
        assert_error(response, 503, "ServiceUnavailable")
        assert time.monotonic() - started < 3.0  # refused at once, not a timeout
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["torchserve"] == "down"

    stub.start()  # same ports, new keys in a new key file, as a restarted TorchServe
    for _ in range(5):
        assert upload(client, image_bytes()).status_code == 200
    assert client.get("/health").status_code == 200
    assert stub.rotations == 0  # the new key came from the file, no rotation needed


def test_queue_full_is_503_with_retry_after_then_recovers(make_app, stub):
    client = make_app(RETRY_AFTER=7).test_client()
    stub.answer = answer_with(503, QUEUE_FULL)
    for _ in range(3):
        response = upload(client, image_bytes())
        assert_error(response, 503, "ServiceBusy")
        assert response.headers["Retry-After"] == "7"
    stub.answer = enhance_like_handler
    assert all(upload(client, image_bytes()).status_code == 200 for _ in range(5))


def test_connection_dropped_mid_request_is_502(client, stub):
    def drop(body, headers):
        raise ConnectionAbortedError  # the stub's handler thread dies: the socket closes unanswered

    stub.answer = drop
    assert_error(upload(client, image_bytes()), 502, "BadGateway")
    assert len(stub.predictions) == 1


def test_a_result_cut_off_midway_is_not_passed_off_as_complete(client, stub):
    png = image_bytes(80, 60)
    stub.answer = lambda body, headers: (200, "image/png", png[:100], len(png))
    # The page has sent its status line when the body breaks off: it breaks its own answer off too
    # (the server drops the connection), rather than end a truncated image as if complete.
    with pytest.raises(Exception, match="IncompleteRead"):
        upload(client, image_bytes()).get_data()


# -- token authorization (S3) ----------------------------------------------------------------------


def test_expired_key_is_rotated_once_and_the_upload_succeeds(client, stub, caplog):
    caplog.set_level("INFO", logger="enhancer")
    assert upload(client, image_bytes()).status_code == 200
    old = stub.keys["inference"]
    stub.expire("inference")

    assert upload(client, image_bytes()).status_code == 200
    assert stub.rotations == 1 and stub.keys["inference"] != old
    assert json.loads(stub.key_file.read_text())["inference"]["key"] == stub.keys["inference"]
    assert [r.message for r in caplog.records].count(
        "TorchServe inference key expired; rotated it through the management API"
    ) == 1
    # The expired request and its retry; then the next upload goes straight through.
    assert upload(client, image_bytes()).status_code == 200
    assert len(stub.predictions) == 3 and stub.rotations == 1


def test_a_replaced_key_file_is_used_without_rotating(client, stub, caplog):
    caplog.set_level("INFO", logger="enhancer")
    assert upload(client, image_bytes()).status_code == 200
    # Another worker rotated the key (or TorchServe restarted): the file holds a new key already.
    stub.keys["inference"] = "newkey01"
    stub._write_keys()
    assert upload(client, image_bytes()).status_code == 200
    assert stub.rotations == 0


def test_concurrent_requests_on_an_expired_key_rotate_it_once(app, stub):
    assert upload(app.test_client(), image_bytes()).status_code == 200
    stub.expire("inference")
    statuses = []

    def one():
        statuses.append(upload(app.test_client(), image_bytes()).status_code)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200] * 6
    assert stub.rotations == 1


def test_key_that_cannot_be_renewed_is_a_503(client, stub):
    stub.expire("inference")
    stub.keys["API"] = "changed!"  # the file's API key no longer works either
    body = assert_error(upload(client, image_bytes()), 503, "ServiceUnavailable")
    assert "key" in body["message"]
    assert stub.predictions == []


def test_no_key_file_means_service_down(client, stub):
    stub.key_file.unlink()
    body = assert_error(upload(client, image_bytes()), 503, "ServiceUnavailable")
    assert str(stub.key_file) not in body["message"]
    assert stub.requests == []


def test_a_broken_key_file_is_a_503_logged_once(client, stub, caplog):
    caplog.set_level("INFO", logger="enhancer")
    stub.key_file.write_text('{"inference": {"ke')  # as if caught half written, and left so
    for _ in range(3):
        assert_error(upload(client, image_bytes()), 503, "ServiceUnavailable")
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "key file" in r.message]
    assert len(warnings) == 1
    stub._write_keys()
    assert upload(client, image_bytes()).status_code == 200
    assert any("is back" in r.message for r in caplog.records)


# -- health ----------------------------------------------------------------------------------------


def test_health_ready(client, stub):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"torchserve": "ready", "model": "READY"}
    assert ("GET", "/ping") in stub.requests and ("GET", "/models/enhancer") in stub.requests


@pytest.mark.parametrize("workers, model", [(["UNLOADING"], "UNLOADING"), ([], "NO_WORKERS")])
def test_health_model_not_ready(client, stub, workers, model):
    stub.workers = workers
    response = client.get("/health")
    assert response.status_code == 503
    report = response.get_json()
    assert report["torchserve"] == "ready" and report["model"] == model and report["message"]


def test_health_model_not_loaded(make_app, stub):
    response = make_app(MODEL_NAME="other").test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["model"] == "NOT_LOADED"


def test_health_rotates_expired_keys(client, stub):
    stub.expire("inference")
    stub.expire("management")
    assert client.get("/health").status_code == 200
    assert stub.rotations == 2


def test_health_without_management_api(make_app, stub):
    response = make_app(TORCHSERVE_MANAGEMENT_URL="").test_client().get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"torchserve": "ready", "model": "unknown"}
    assert all(path != "/models/enhancer" for _, path in stub.requests)


# -- no way through to TorchServe's other APIs (S4), no debugger (F8) ------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS", "PUT", "DELETE"])
@pytest.mark.parametrize(
    "path",
    [
        "/metrics",
        "/models",
        "/models/enhancer",
        "/token",
        "/ping",
        "/predictions/enhancer",
        "/api-description",
        "/console",
        "/static/../key_file.json",
        "/static/%2e%2e/__init__.py",
    ],
)
def test_no_route_to_torchserve_or_a_debugger(client, stub, method, path):
    response = client.open(path, method=method)
    if (path, method) == ("/models", "GET"):
        # the page's own listing of the models (the worker's description, reduced to the
        # listing's fields), not TorchServe's management API passed through
        assert set(response.get_json()) == {"models", "pair", "max_loaded"}
        assert stub.requests == [("GET", "/models/enhancer")]
        return
    if method == "OPTIONS" and response.status_code == 200:
        assert response.get_data() == b""  # Flask's automatic OPTIONS answer: the Allow header only
    else:
        assert response.status_code in (404, 405), (method, path, response.status_code)
    assert stub.requests == []


def test_only_the_documented_routes_exist(app):
    rules = {
        (rule.rule, tuple(sorted(rule.methods - {"HEAD", "OPTIONS"})))
        for rule in app.url_map.iter_rules()
    }
    assert rules == {
        ("/", ("GET",)),
        ("/enhance", ("POST",)),
        ("/health", ("GET",)),
        ("/models", ("GET",)),
        ("/queue", ("GET",)),
        ("/static/<path:filename>", ("GET",)),
    }


def test_method_not_allowed_is_json(client):
    response = client.get("/enhance")
    assert_error(response, 405, "MethodNotAllowed")
    assert "POST" in response.headers["Allow"]


def test_production_server_runs_no_debugger(monkeypatch, tmp_path):
    from scripts.ops import page

    monkeypatch.setenv("FLASK_DEBUG", "1")
    env = page.page_env("http://127.0.0.1:1", "http://127.0.0.1:2", tmp_path / "key_file.json")
    assert "FLASK_DEBUG" not in env
    command = page.gunicorn_command(
        "127.0.0.1", 5000, error_log=tmp_path / "e", access_log=tmp_path / "a"
    )
    assert (
        command[:3] == [sys.executable, "-m", "gunicorn"] and command[-1] == "frontend:create_app()"
    )
    # gevent: a slow client holds a greenlet, not one of a few threads (R10); headers must arrive
    # within the keep-alive seconds, under that worker's deadline.
    assert command[command.index("--worker-class") + 1] == "gevent"
    assert int(command[command.index("--keep-alive") + 1]) == page.KEEP_ALIVE <= 10
    # gunicorn's worker timeout stays above the app's read timeout, so a slow enhancement ends with
    # the app's 504, not with gunicorn killing the worker.
    assert int(command[command.index("--timeout") + 1]) > page.APP_READ_TIMEOUT
    assert not {"--reload", "--debug", "run"} & set(command)


# -- slow clients and the rate limit (RELIABILITY.md R10, F6) --------------------------------------


class _Dribble(io.RawIOBase):
    """A request body that arrives ``piece`` bytes every ``interval`` seconds."""

    def __init__(self, body: bytes, piece: int, interval: float):
        self.body, self.piece, self.interval = body, piece, interval
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        time.sleep(self.interval)
        self.reads += 1
        size = min(len(buffer), self.piece)
        data, self.body = self.body[:size], self.body[size:]
        buffer[: len(data)] = data
        return len(data)


def gunicorn_like_from(body: bytes, stream) -> Request:
    """``gunicorn_like(body)`` with its body read from ``stream`` instead."""
    request = gunicorn_like(body)
    request.environ["wsgi.input"] = stream
    return request


def test_a_dribbled_body_is_a_408_that_closes_the_connection(make_app, stub):
    client = make_app(BODY_GRACE=0.2, BODY_MIN_RATE=100_000).test_client()
    body = multipart([("image", "a.png", image_bytes())])
    dribble = _Dribble(body, piece=10, interval=0.05)
    started = time.monotonic()
    response = client.open(gunicorn_like_from(body, dribble))
    assert time.monotonic() - started < 2.0
    body = assert_error(response, 408, "RequestTimeout")
    assert "too slow" in body["message"]
    assert response.headers["Connection"] == "close"
    assert dribble.reads < 20 and not stub.predictions


def test_uploads_at_real_speeds_are_not_paced_out(make_app, stub):
    client = make_app(BODY_GRACE=0.5, BODY_MIN_RATE=10_000, MAX_UPLOAD_BYTES=1_000_000)
    body = multipart([("image", "a.png", padded_png(300_000))])
    dribble = _Dribble(body, piece=64 * 1024, interval=0.01)  # about 6.5 MB/s
    response = client.test_client().open(gunicorn_like_from(body, dribble))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_rate_limit_is_429_with_retry_after_per_client(make_app, stub):
    client = make_app(RATE_LIMIT_PER_MINUTE=6, RATE_LIMIT_BURST=2).test_client()
    for _ in range(2):
        assert upload(client, image_bytes()).status_code == 200
    response = upload(client, image_bytes())
    body = assert_error(response, 429, "TooManyRequests")
    assert 1 <= int(response.headers["Retry-After"]) <= 10
    assert f"in {response.headers['Retry-After']} s" in body["message"]
    assert len(stub.predictions) == 2  # the refused one never reached TorchServe
    # another address has its own budget
    other = client.post(
        "/enhance",
        data={"image": (io.BytesIO(image_bytes()), "p.png", "image/png")},
        content_type="multipart/form-data",
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert other.status_code == 200
    # the page, /health and the static files are never limited
    assert client.get("/").status_code == 200


def test_the_default_rate_limit_lets_a_user_drop_20_photos(make_app, stub):
    client = make_app().test_client()
    responses = [upload(client, image_bytes()).status_code for _ in range(20)]
    assert responses == [200] * 20


def test_rate_limit_off_and_settings_checked(make_app, stub):
    client = make_app(RATE_LIMIT_PER_MINUTE=0, RATE_LIMIT_BURST=1).test_client()
    assert all(upload(client, image_bytes()).status_code == 200 for _ in range(5))
    with pytest.raises(ValueError, match="rate limit"):
        make_app(RATE_LIMIT_BURST=0)


def test_rate_limiter_refills_and_forgets():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=3, max_clients=2, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire("a") == 1  # one a second
    now[0] += 0.5
    assert limiter.acquire("a") == 1
    now[0] += 0.6
    assert limiter.acquire("a") == 0
    for client in ("b", "c", "d"):
        assert limiter.acquire(client) == 0
    assert len(limiter._buckets) <= 2
    threads_ok = []
    shared = RateLimiter(per_minute=1, burst=50)

    def take():
        threads_ok.append(sum(shared.acquire("x") == 0 for _ in range(20)))

    workers = [threading.Thread(target=take) for _ in range(5)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sum(threads_ok) == 50  # exactly the burst, across threads


# -- the page's queue: place, expected wait, busy at once (frontend/queue.py) ---------------------

# A worker's estimator as its describe_handle publishes it (enhancer.admission.Estimator.to_json),
# with a throughput made up for the test: the estimates follow from it, not from this machine.
ESTIMATOR_CARD = {
    "name": "stand-in",
    "version": "test",
    "scale": 2,
    "multiple": 1,
    "tile": 32,
    "overlap": 4,
    "dtypes": ["float32"],
    "sha256": "0" * 64,
    "dynamic": True,
}


def stand_in_estimator(model_seconds_per_pixel: float) -> dict:
    from enhancer.admission import Estimator, Throughput
    from enhancer.card import ModelCard

    card = ModelCard.from_dict(ESTIMATOR_CARD)
    throughput = Throughput(model_seconds_per_pixel, 0.0, "torchscript", "cpu")
    return Estimator(throughput, card, 32, budget=1000.0).to_json()


def slowed(stub):
    """Make the stub's worker slow: each prediction waits until the test releases it."""
    gate = threading.Event()

    def answer(body, headers):
        gate.wait(60)
        return enhance_like_handler(body, headers)

    stub.answer = answer
    return gate


def test_an_upload_that_would_wait_past_the_read_timeout_is_busy_at_once(make_app, stub):
    """Two uploads of about 40 s each (by the worker's published estimator) are in flight on a
    slowed worker; the page waits at most 100 s, so a third, expected to wait about 120 s, is
    answered 503 ServiceBusy at once, saying the expected wait and the limit, with Retry-After.
    The browser's tickets show the places and expected waits meanwhile."""
    from enhancer.admission import Estimator

    data = image_bytes(40, 30)
    estimator = stand_in_estimator(1.0)
    each = Estimator.from_json(estimator).request_seconds(40, 30, {"scale": "2"})
    stub.estimator = stand_in_estimator(40.0 / each)  # about 40 s per upload
    app = make_app(READ_TIMEOUT=100.0)
    gate = slowed(stub)
    answers = {}

    def send(ticket):
        answers[ticket] = upload(
            app.test_client(), data, scale="2", headers={"X-Queue-Ticket": ticket}
        )

    threads = []
    try:
        for ticket in ("first-ticket", "second-ticket"):
            threads.append(threading.Thread(target=send, args=(ticket,)))
            threads[-1].start()
            deadline = time.monotonic() + 30
            while len(stub.predictions) < len(threads) and time.monotonic() < deadline:
                time.sleep(0.02)
        assert len(stub.predictions) == 2

        client = app.test_client()
        state = client.get("/queue?ticket=second-ticket").get_json()
        assert state["in_flight"] == 2 and state["limit"] == 100.0
        assert 60 < state["work_ahead"] <= 80  # what a new upload waits before its turn
        mine = state["ticket"]
        assert mine["place"] == 2 and mine["of"] == 2 and not mine["running"]
        assert 60 < mine["wait"] <= 80 and mine["estimate"] == pytest.approx(40, abs=0.1)
        first = client.get("/queue?ticket=first-ticket").get_json()["ticket"]
        assert first["place"] == 1 and first["running"] and 20 < first["wait"] <= 40
        assert client.get("/queue?ticket=nobody-here").get_json()["ticket"] is None

        started = time.monotonic()
        refused = upload(client, data, scale="2", headers={"X-Queue-Ticket": "third-ticket"})
        assert time.monotonic() - started < 5  # at once, not after 100 s
        body = assert_error(refused, 503, "ServiceBusy")
        assert 100 < body["expected_wait"] <= 120 and body["limit"] == 100.0
        assert body["in_flight"] == 2
        assert f"would wait about {body['expected_wait']:.0f} s" in body["message"]
        assert "the page waits at most 100 s" in body["message"]
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 20
        assert f"Try again in {retry_after} s." in body["message"]
        assert len(stub.predictions) == 2  # never sent to TorchServe
        assert client.get("/queue").get_json()["in_flight"] == 2  # the refused one took no place
    finally:
        gate.set()
        for thread in threads:
            thread.join(60)
    assert [answers[t].status_code for t in ("first-ticket", "second-ticket")] == [200, 200]
    after = app.test_client().get("/queue").get_json()
    assert after["in_flight"] == 0 and after["work_ahead"] == 0
    assert upload(app.test_client(), data, scale="2").status_code == 200
    assert stub.described == 1  # the estimator is asked for once and kept


def test_without_an_estimator_uploads_are_never_refused_and_places_still_show(make_app, stub):
    """A worker that publishes no estimator (admission by cost off): the page cannot price, so
    it refuses nothing itself; it still counts places."""
    app = make_app(READ_TIMEOUT=1.0)
    gate = slowed(stub)
    thread = threading.Thread(
        target=upload,
        args=(app.test_client(), image_bytes()),
        kwargs={"headers": {"X-Queue-Ticket": "only-ticket"}},
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not stub.predictions and time.monotonic() < deadline:
            time.sleep(0.02)
        state = app.test_client().get("/queue?ticket=only-ticket").get_json()
        assert state["work_ahead"] is None
        assert state["ticket"] == {
            "place": 1,
            "of": 1,
            "running": True,
            "wait": None,
            "estimate": None,
        }
    finally:
        gate.set()
        thread.join(30)


def test_a_bad_ticket_is_replaced_and_the_queue_file_sits_beside_the_key_file(make_app, stub):
    app = make_app()
    response = upload(app.test_client(), image_bytes(), headers={"X-Queue-Ticket": "<script>"})
    assert response.status_code == 200
    queue_file = stub.key_file.parent / "page_queue.json"
    assert json.loads(queue_file.read_text())["tickets"] == []
