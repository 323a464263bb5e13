"""Ray Serve serves what TorchServe serves: same pixels, headers and error statuses (issue 12.5).

The server is started the way a user starts it, ``python -m scripts.ray_serve``, as a subprocess:
a local single-node Ray cluster limited to 2 CPUs, 2 replicas of 1 CPU each, on a free loopback
port, with a private session folder, serving exactly the model the session's TorchServe serves
(the .pt and card taken out of its archive). One cluster for the module; it is stopped with
``python -m scripts.ray_serve stop``, which must end it cleanly.

What "the same" means: as tests/test_triton_parity.py says (same size, mode, content type and
pixels within 1/255; the same status and error ``type``), plus the ``X-Enhance-*`` headers and
the ICC profile and EXIF of the output. The unit tests at the end check the request reading
(query string, size limit) on starlette requests made in memory, without a cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers.images import (
    animated,
    encode,
    exif_block,
    photo_array,
    png_header,
    srgb_profile,
)

pytestmark = pytest.mark.ray

pytest.importorskip("ray.serve", reason="needs the ray extra: scripts/setup.sh ray")

TIMEOUT = 120  # seconds per request: generous on a shared 2-core machine; never asserted on
START_TIMEOUT = 300


# -- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayServer:
    """``python -m scripts.ray_serve`` running in its own process group."""

    process: subprocess.Popen
    workdir: Path
    port: int

    @property
    def predictions_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predictions/enhancer"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "ray_serve.pid"

    def log_text(self) -> str:
        log = self.workdir / "ray.log"
        return log.read_text(errors="replace") if log.exists() else ""


def start_ray(model_pt: Path, workdir: Path, *extra: str) -> RayServer:
    """Start the server; return once it printed READY (or fail with its log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # Ray's session folder holds Unix sockets (at most 107 bytes a path): a short private one
    (workdir / "tmp").symlink_to(tempfile.mkdtemp(prefix="enh-ray-", dir="/tmp"))
    port = free_port()
    env = dict(os.environ, RAY_DEDUP_LOGS="0")  # every replica's log line, for the batch test
    command = [
        sys.executable, "-m", "scripts.ray_serve", "--model", str(model_pt), "--device", "cpu",
        "--port", str(port), "--num-cpus", "2", "--replicas", "2",
        "--temp-dir", str((workdir / "tmp").resolve()),
        "--pid-file", str(workdir / "ray_serve.pid"), *extra,
    ]  # fmt: skip
    with open(workdir / "ray.log", "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
            start_new_session=True,  # its own group: Ray's processes stop with it
        )  # fmt: skip
    server = RayServer(process, workdir, port)
    deadline = time.monotonic() + START_TIMEOUT
    while "READY after" not in server.log_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_ray(server)
            tail = server.log_text()[-4000:]
            pytest.fail(f"Ray did not start (exit {process.returncode}):\n{tail}")
        time.sleep(0.5)
    return server


def stop_ray(server: RayServer) -> subprocess.CompletedProcess:
    """``python -m scripts.ray_serve stop`` (make ray-stop); SIGKILL the group if that fails."""
    stopped = subprocess.run(
        [sys.executable, "-m", "scripts.ray_serve", "stop", "--pid-file", str(server.pid_file)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)  # our own process group only
        server.process.wait(10)
    shutil.rmtree((server.workdir / "tmp").resolve(), ignore_errors=True)
    return stopped


@pytest.fixture(scope="module")
def served_model(torchserve, tmp_path_factory) -> Path:
    """The .pt and card that TorchServe serves, taken out of its archive."""
    directory = tmp_path_factory.mktemp("ray-model")
    with zipfile.ZipFile(torchserve.mar) as archive:
        for name in ("enhancer.pt", "enhancer.json"):
            (directory / name).write_bytes(archive.read(name))
    return directory / "enhancer.pt"


@pytest.fixture(scope="module")
def ray_server(served_model, tmp_path_factory):
    server = start_ray(served_model, tmp_path_factory.mktemp("ray"))
    yield server
    stopped = stop_ray(server)
    assert stopped.returncode == 0 and "ray: stopped" in stopped.stdout, stopped
    assert server.process.returncode == 0, server.log_text()[-3000:]
    assert not server.pid_file.exists()


# -- sending ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    data: bytes
    content_type: str
    error_type: str | None
    headers: dict[str, str]


def answer(response: requests.Response) -> Answer:
    content_type = response.headers.get("Content-Type", "").split(";")[0]
    error_type = response.json().get("type") if response.status_code != 200 else None
    enhance = {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("x-enh")}
    return Answer(response.status_code, response.content, content_type, error_type, enhance)


def multipart(url: str, data: bytes, options: dict, headers: dict | None = None) -> Answer:
    """The image in ``data`` and options as fields, as the page and ``curl -F`` send."""
    response = requests.post(
        url,
        files={"data": ("upload", data)},
        data={name: str(value) for name, value in options.items()},
        headers=headers,
        timeout=TIMEOUT,
    )
    return answer(response)


def raw_with_headers(url: str, data: bytes, options: dict) -> Answer:
    """The image as the body (``curl -T``), options as ``X-Enhance-*`` headers."""
    from enhancer.contract import option_header

    headers = {option_header(name): str(value) for name, value in options.items()}
    return answer(requests.put(url, data=data, headers=headers, timeout=TIMEOUT))


def raw_with_query(url: str, data: bytes, options: dict) -> Answer:
    """The image as the body, options in the query string (Ray only; TorchServe ignores it)."""
    return answer(requests.put(url, data=data, params=options, timeout=TIMEOUT))


def via_torchserve(ts, data: bytes, options: dict) -> Answer:
    return multipart(ts.predictions_url, data, options, headers=ts.auth())


def pixels(data: bytes) -> tuple[str, tuple[int, int], np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, image.size, np.asarray(image).astype(np.int64)


def metadata(data: bytes) -> tuple[bytes | None, bytes]:
    with Image.open(io.BytesIO(data)) as image:
        return image.info.get("icc_profile"), image.getexif().tobytes()


def assert_same_image(expected: Answer, got: Answer, label: str) -> None:
    assert expected.status == got.status == 200, (label, expected, got.data[:300])
    assert expected.content_type == got.content_type, label
    assert expected.headers == got.headers, label
    e_mode, e_size, e_pixels = pixels(expected.data)
    g_mode, g_size, g_pixels = pixels(got.data)
    assert (e_mode, e_size) == (g_mode, g_size), label
    worst = int(np.abs(e_pixels - g_pixels).max())
    assert worst <= 1, f"{label}: pixels differ by {worst}/255"
    assert metadata(expected.data) == metadata(got.data), label


# -- the cases ----------------------------------------------------------------------------------


def photo(width: int, height: int, mode: str = "RGB", fmt: str = "PNG", **params) -> bytes:
    image = Image.fromarray(photo_array(width, height, seed=width * height))
    if mode == "RGBA":
        alpha = np.linspace(0, 255, width * height).reshape(height, width).astype(np.uint8)
        image.putalpha(Image.fromarray(alpha))
    else:
        image = image.convert(mode)
    return encode(image, fmt, **params)


def camera_jpeg() -> bytes:
    """An odd-size JPEG with an ICC profile and EXIF (camera make), which outputs must keep."""
    return photo(
        41, 29, fmt="JPEG", quality=90, icc_profile=srgb_profile(), exif=exif_block(make="RayCam")
    )


CASES = {
    "rgb-png-41x29 (defaults)": (lambda: photo(41, 29), {}),
    "rgb-png-41x29 x3": (lambda: photo(41, 29), {"scale": "3", "format": "png"}),
    "rgba-png-33x21 x2.5 strength": (
        lambda: photo(33, 21, "RGBA"),
        {"scale": "2.5", "strength": "0.5"},
    ),
    "gray-png-25x37 x4": (lambda: photo(25, 37, "L"), {"scale": "4"}),
    "camera-jpeg-41x29 webp": (camera_jpeg, {"format": "webp", "quality": "80"}),
    "camera-jpeg-41x29 auto": (camera_jpeg, {"scale": "auto"}),
}


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(CASES))
def test_outputs_match_torchserve(torchserve, ray_server, name):
    """Every way of sending options gives TorchServe's answer: pixels, headers, metadata."""
    make, options = CASES[name]
    data = make()
    expected = via_torchserve(torchserve, data, options)
    url = ray_server.predictions_url
    assert_same_image(expected, multipart(url, data, options), f"{name} multipart")
    assert_same_image(expected, raw_with_headers(url, data, options), f"{name} headers")
    assert_same_image(expected, raw_with_query(url, data, options), f"{name} query")


@pytest.mark.e2e
def test_output_matches_the_engine_in_process(served_model, ray_server):
    """The replica's answer is the engine's own, run here on the same model and settings."""
    from enhancer.engine import Enhancer
    from enhancer.settings import EnhancerSettings
    from scripts.ops.serving import load_model_config

    settings = EnhancerSettings.from_model_config(load_model_config())
    engine = Enhancer.load(served_model, device="cpu", settings=settings)
    data, options = photo(43, 27), {"scale": "2", "format": "png"}
    result = engine.enhance(data, options)
    local = Answer(200, result.data, result.content_type, None, {})
    got = raw_with_query(ray_server.predictions_url, data, options)
    got.headers = {}
    assert_same_image(local, got, "in-process engine vs Ray")
    assert pixels(got.data)[1] == (86, 54)


def bad_inputs() -> dict[str, tuple[bytes, dict, int, str]]:
    """name -> (image, options, the status DESIGN.md 4 promises, the error type)."""
    jpeg = photo(64, 48, fmt="JPEG")
    rng = np.random.default_rng(5)
    return {
        "garbage": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), {}, 400, "BadRequest"),
        "empty": (b"", {}, 400, "BadRequest"),
        "truncated-jpeg": (jpeg[: len(jpeg) * 6 // 10], {}, 400, "BadRequest"),
        "animated-gif": (animated("GIF"), {}, 415, "UnsupportedMediaType"),
        "html": (b"<!DOCTYPE html><html><body><img src=x></body></html>", {}, 415,
                 "UnsupportedMediaType"),
        "huge-header": (png_header(20000, 20000), {}, 413, "PayloadTooLarge"),
        "output-too-large": (encode(Image.new("RGB", (1100, 1100), (90, 120, 30)), "PNG"),
                             {"scale": "8"}, 413, "PayloadTooLarge"),
        "unknown-option": (photo(20, 10), {"colour": "red"}, 400, "BadRequest"),
        "scale-9": (photo(20, 10), {"scale": "9"}, 400, "BadRequest"),
        "scale-not-a-number": (photo(20, 10), {"scale": "big"}, 400, "BadRequest"),
        "format-gif": (photo(20, 10), {"format": "gif"}, 400, "BadRequest"),
    }  # fmt: skip


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(bad_inputs()))
def test_bad_inputs_get_torchserves_status(torchserve, ray_server, name):
    data, options, status, kind = bad_inputs()[name]
    expected = via_torchserve(torchserve, data, options)
    got = multipart(ray_server.predictions_url, data, options)
    assert expected.status == status, (name, expected.status, expected.data[:300])
    assert got.status == status, (name, got.status, got.data[:300])
    assert expected.error_type == got.error_type == kind, name
    assert got.content_type == "application/json"
    body = got.data.decode()
    assert set(json.loads(body)) >= {"code", "type", "message"}
    if name != "empty":  # TorchServe sends an empty body as no field at all: another message
        assert got.data == expected.data, name  # the same JSON body, message included


@pytest.mark.e2e
def test_ping_unknown_model_and_method(ray_server):
    base = ray_server.predictions_url.rsplit("/predictions/", 1)[0]
    assert requests.get(f"{base}/ping", timeout=TIMEOUT).json() == {"status": "Healthy"}
    missing = requests.post(f"{base}/predictions/other", data=b"x", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json()["type"] == "ModelNotFoundException"
    get = requests.get(ray_server.predictions_url, timeout=TIMEOUT)
    assert get.status_code == 405


@pytest.mark.e2e
def test_concurrent_requests_are_batched_and_keep_their_own_answers(ray_server):
    """Good and bad uploads at once: each its own answer, and some shared an engine call."""
    good, bad = photo(96, 64), b"GIF89a but not really"
    jobs = [(good, {"scale": "4"}) if i % 2 == 0 else (bad, {}) for i in range(12)]
    # Ray forwards the replicas' log lines a moment late: wait until earlier tests' lines are in
    before, quiet_since = ray_server.log_text(), time.monotonic()
    waiting_until = quiet_since + 15
    while time.monotonic() - quiet_since < 2 and time.monotonic() < waiting_until:
        time.sleep(0.25)
        now = ray_server.log_text()
        if now != before:
            before, quiet_since = now, time.monotonic()
    barrier = threading.Barrier(len(jobs))

    def send(job):
        barrier.wait(TIMEOUT)
        return raw_with_query(ray_server.predictions_url, *job)

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(send, jobs))
    for (data, _), got in zip(jobs, answers, strict=True):
        if data is good:
            assert got.status == 200 and pixels(got.data)[1] == (384, 256)
        else:
            assert got.status == 400 and got.error_type == "BadRequest"
    deadline = time.monotonic() + 30  # Ray forwards the replicas' log lines a moment later
    while True:
        new = ray_server.log_text()[len(before) :]
        sizes = [int(n) for n in re.findall(r"(\d+) request\(s\) in one engine call", new)]
        replicas = set(re.findall(r"ServeReplica:enhancer:enhancer pid=(\d+)\).*engine call", new))
        if sum(sizes) >= len(jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sum(sizes) == len(jobs), new[-3000:]
    assert max(sizes) > 1, f"no two requests shared an engine call: {sizes}"
    assert len(replicas) == 2, f"the requests did not reach both replicas: {replicas}"


# -- reading requests (no cluster) --------------------------------------------------------------


def request(body: bytes, query: str = "", headers: dict | None = None):
    """A starlette Request over ``body``, as the Ray proxy hands one to a replica."""
    from starlette.requests import Request

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "method": "PUT",
        "path": "/predictions/enhancer",
        "query_string": query.encode(),
        "headers": raw,
    }
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def read(body: bytes, query: str = "", headers: dict | None = None, limit: int = 1000):
    from enhancer.serving.ray_serve import read_request

    return asyncio.run(read_request(request(body, query, headers), limit))


def test_query_headers_and_body_become_the_handlers_fields():
    image, options = read(b"\x89PNG...", "scale=4&format=webp", {"X-Enhance-Quality": "80"})
    assert image == b"\x89PNG..." and options == {"scale": "4", "format": "webp", "quality": "80"}


def test_request_reading_refuses_what_torchserve_refuses():
    from enhancer.errors import BadRequest, OptionError, PayloadTooLarge

    with pytest.raises(PayloadTooLarge, match="the limit is 1,000 bytes"):
        read(bytes(1001))
    with pytest.raises(OptionError, match="'colour': unknown query parameter"):
        read(b"image", "colour=red")
    with pytest.raises(BadRequest, match="given twice"):
        read(b"image", "scale=2", {"X-Enhance-Scale": "3"})
    with pytest.raises(BadRequest, match="given twice"):
        read(b"image", "scale=2&scale=3")
    with pytest.raises(BadRequest, match="empty image"):
        read(b"")
