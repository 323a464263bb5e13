"""End to end through a real TorchServe: the repository's handler, archive and config.properties.

Most tests share the session server (``torchserve`` fixture: the tiny scale-2 model, started once).
Three more servers start only where the config must differ: small limits (I9, the 413s), tampered
and damaged archives (S5, never become READY), and that is all; each costs a few seconds.

Every bad request is followed by a good one, and the worker must be the same process as before
(same pid, no "Retry worker" or "Worker died" in the log): a worker never dies on bad input.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import struct
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from scripts.ops import torchserve as serve
from tests.helpers.golden import GOLDEN, inputs
from tests.helpers.images import encode, photo_array
from tests.helpers.servers import (
    TorchServe,
    archive,
    launch_torchserve,
    start_torchserve,
    stop_torchserve,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 120  # seconds per request: generous, the CPU is shared; never asserted on
RESTART_MARKERS = ("Retry worker", "Worker died", "Backend worker process died")


# -- helpers --------------------------------------------------------------------------------------


def photo_bytes(width: int, height: int, fmt: str = "PNG", seed: int = 0, **params) -> bytes:
    return encode(Image.fromarray(photo_array(width, height, seed)), fmt, **params)


def post_raw(
    ts: TorchServe, data: bytes, headers: dict[str, str] | None = None, **options
) -> requests.Response:
    """A raw body (as ``curl -T``), options as ``X-Enhance-*`` headers."""
    sent = {**ts.auth(), "Content-Type": "application/octet-stream", **(headers or {})}
    sent.update({f"X-Enhance-{name.capitalize()}": str(value) for name, value in options.items()})
    return requests.post(ts.predictions_url, data=data, headers=sent, timeout=TIMEOUT)


def post_form(ts: TorchServe, data: bytes, **fields) -> requests.Response:
    """Multipart, the image in ``data`` and options as fields (as ``curl -F``)."""
    form = {name: str(value) for name, value in fields.items()}
    return requests.post(
        ts.predictions_url,
        files={"data": ("photo", data)},
        data=form,
        headers=ts.auth(),
        timeout=TIMEOUT,
    )


def decoded(response: requests.Response) -> Image.Image:
    assert response.status_code == 200, response.text[:500]
    return Image.open(io.BytesIO(response.content))


def worker(ts: TorchServe) -> dict:
    """The model's one worker as the management API describes it."""
    (only,) = ts.model_status()["workers"]
    return only


def assert_alive_and_same(ts: TorchServe, pid: int) -> None:
    """A good request succeeds and the worker is the one from before, never restarted."""
    response = post_raw(ts, photo_bytes(24, 16))
    assert decoded(response).size == (48, 32)
    now = worker(ts)
    assert now["status"] == "READY" and now["pid"] == pid, now
    log = ts.log_text()
    assert not [marker for marker in RESTART_MARKERS if marker in log]


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG start (signature, IHDR with its CRC) declaring ``width`` x ``height``."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def animated_gif() -> bytes:
    frames = [Image.fromarray(photo_array(20, 20, seed)).convert("P") for seed in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def listening_sockets(pid: int) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """The TCP sockets process ``pid`` listens on, from /proc (what ``ss -ltnp`` shows for it)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            host, port = fields[1].split(":")
            raw = bytes.fromhex(host)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((ipaddress.ip_address(words), int(port, 16)))
    return found


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


@pytest.fixture(scope="module")
def worker_pid(torchserve) -> int:
    """The session worker's pid when this module started; bad requests must not change it."""
    return worker(torchserve)["pid"]


# -- good requests --------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4, 3, 2.5, 1])
def test_raw_body_reaches_exact_size(torchserve, worker_pid, scale):
    """Raw body, scale as a header: the output is exactly round(scale * size), as a PNG."""
    response = post_raw(torchserve, photo_bytes(37, 23), scale=scale)
    image = decoded(response)
    assert image.size == (round(scale * 37), round(scale * 23))
    assert response.headers["Content-Type"] == "image/png"
    assert image.format == "PNG"


@pytest.mark.parametrize(
    ("input_format", "requested", "expected"),
    [
        ("PNG", "png", "PNG"),
        ("PNG", "jpeg", "JPEG"),
        ("PNG", "jpg", "JPEG"),
        ("PNG", "webp", "WEBP"),
        ("JPEG", "auto", "JPEG"),
        ("WEBP", "auto", "WEBP"),
        ("PNG", "auto", "PNG"),
        ("GIF", "auto", "PNG"),
        ("BMP", "auto", "PNG"),
    ],
)
@pytest.mark.parametrize("scale", [2, 4])
def test_multipart_every_format(torchserve, input_format, requested, expected, scale):
    """Multipart with scale and format fields: every output format, and auto for every input."""
    response = post_form(
        torchserve, photo_bytes(30, 20, input_format), scale=scale, format=requested
    )
    image = decoded(response)
    assert image.format == expected
    assert image.size == (30 * scale, 20 * scale)
    assert response.headers["Content-Type"] == Image.MIME[expected]


def test_option_headers(torchserve):
    """Every option as a header, names in any case, on a raw body."""
    response = post_raw(
        torchserve,
        photo_bytes(40, 30, "JPEG"),
        headers={"x-enhance-scale": "3", "X-ENHANCE-FORMAT": "webp"},
        quality=60,
        tile=64,
        strength=0.5,
    )
    image = decoded(response)
    assert (image.format, image.size) == ("WEBP", (120, 90))
    assert response.headers["Content-Type"] == "image/webp"


def test_auto_scale_level_compare_and_metadata_through_torchserve(torchserve):
    """The new options as a hyphenated header and as fields; the chosen scale comes back."""
    exif = Image.Exif()
    exif.get_ifd(0x8825)[2] = (52.0, 31.0, 12.5)  # a GPS position
    exif[0x010F] = "TestCam"
    data = photo_bytes(40, 30, "JPEG", exif=exif.tobytes())
    response = post_raw(
        torchserve,
        data,
        headers={"X-Enhance-Enhance-First": "true", "X-Enhance-Scale": "auto"},
        level=2,
    )
    image = decoded(response)
    assert response.headers["X-Enhance-Scale-Used"] == "8"  # 30 px short side: 8x is 240
    assert image.size == (320, 240)
    assert image.getexif()[0x010F] == "TestCam" and not image.getexif().get_ifd(0x8825)
    both = post_form(torchserve, data, scale=2, compare="true", metadata="strip")
    image = decoded(both)
    assert image.size == (2 * 80 + 3, 60 + 14) and not image.getexif()
    assert both.headers["X-Enhance-Scale-Used"] == "2"
    bad = post_form(torchserve, data, level=5)
    assert bad.status_code == 400 and "'level'" in bad.json()["message"]


def test_quality_changes_lossy_output(torchserve):
    low = post_form(torchserve, photo_bytes(64, 48), format="jpeg", quality=10)
    high = post_form(torchserve, photo_bytes(64, 48), format="jpeg", quality=95)
    assert decoded(low).size == decoded(high).size == (128, 96)
    assert len(low.content) < len(high.content)


def test_query_string_is_not_passed_to_the_handler(torchserve):
    """TorchServe drops the query string (the README says so): ?scale=4 is still the default 2x."""
    url = f"{torchserve.predictions_url}?scale=4&format=jpeg"
    response = requests.post(
        url, data=photo_bytes(20, 10), headers=torchserve.auth(), timeout=TIMEOUT
    )
    image = decoded(response)
    assert (image.format, image.size) == ("PNG", (40, 20))


def test_concurrent_batch_with_one_bad_request(torchserve, worker_pid):
    """Requests batched together (batchSize 4): the bad one gets its own 400, the others 200."""
    model_log = torchserve.workdir / "logs" / "model_log.log"
    log_before = model_log.stat().st_size
    with ThreadPoolExecutor(5) as pool:
        # a slower request first keeps the worker busy, so the next four queue up and are batched
        blocker = pool.submit(post_raw, torchserve, photo_bytes(200, 150), scale=4)
        time.sleep(0.5)
        sizes = [(31, 17), (20, 20), (45, 12)]
        good = [
            pool.submit(post_raw, torchserve, photo_bytes(w, h, seed=i))
            for i, (w, h) in enumerate(sizes)
        ]
        bad = pool.submit(post_raw, torchserve, photo_bytes(20, 20), scale=20)
        assert decoded(blocker.result()).size == (800, 600)
        for future, (w, h) in zip(good, sizes, strict=True):
            assert decoded(future.result()).size == (2 * w, 2 * h)
        refused = bad.result()
    assert refused.status_code == 400
    assert "option 'scale'" in refused.json()["message"]
    with open(model_log, "rb") as log:
        log.seek(log_before)
        lines = log.read().decode(errors="replace").splitlines()
    batches = [
        int(line.split(" request(s) enhanced")[0].rsplit(" ", 1)[1])
        for line in lines
        if " request(s) enhanced" in line
    ]
    assert max(batches) >= 2, f"the queued requests were never batched: {batches}"
    assert_alive_and_same(torchserve, worker_pid)


# -- bad requests ---------------------------------------------------------------------------------


def _truncated_jpeg() -> bytes:
    data = photo_bytes(120, 90, "JPEG")
    return data[: len(data) // 2]


BAD_REQUESTS = [
    # (id, how to send, status, type, words the message must hold)
    (
        "garbage",
        lambda ts: post_raw(ts, np.random.default_rng(1).bytes(5000)),
        400,
        "BadRequest",
        "not a readable image",
    ),
    ("truncated-jpeg", lambda ts: post_raw(ts, _truncated_jpeg()), 400, "BadRequest", "truncated"),
    (
        "png-4097x4097",
        lambda ts: post_raw(ts, png_declaring(4097, 4097)),
        413,
        "PayloadTooLarge",
        "4097x4097 = 16,785,409 pixels; the limit is 16,777,216 pixels",
    ),
    (
        "png-20000x20000",
        lambda ts: post_raw(ts, png_declaring(20000, 20000)),
        413,
        "PayloadTooLarge",
        "20000x20000 = 400,000,000 pixels; the limit is 16,777,216 pixels",
    ),
    (
        "png-1x200000000",
        lambda ts: post_raw(ts, png_declaring(1, 200_000_000)),
        413,
        "PayloadTooLarge",
        "1x200000000 = 200,000,000 pixels; the limit is 16,777,216 pixels",
    ),
    (
        "output-too-large",
        lambda ts: post_raw(ts, photo_bytes(2000, 2000), scale=8),
        413,
        "PayloadTooLarge",
        "output image too large",
    ),
    (
        "unknown-field",
        lambda ts: post_form(ts, photo_bytes(20, 20), colour="red"),
        400,
        "BadRequest",
        "'colour'",
    ),
    (
        "unknown-header",
        lambda ts: post_raw(ts, photo_bytes(20, 20), headers={"X-Enhance-Colour": "red"}),
        400,
        "BadRequest",
        "X-Enhance-Colour",
    ),
    (
        "scale-9",
        lambda ts: post_raw(ts, photo_bytes(20, 20), scale=9),
        400,
        "BadRequest",
        "use 1 to 8",
    ),
    (
        "scale-text",
        lambda ts: post_form(ts, photo_bytes(20, 20), scale="big"),
        400,
        "BadRequest",
        "'big' is not a number",
    ),
    (
        "format-gif",
        lambda ts: post_form(ts, photo_bytes(20, 20), format="gif"),
        400,
        "BadRequest",
        "option 'format'",
    ),
    (
        "animated-gif",
        lambda ts: post_raw(ts, animated_gif()),
        415,
        "UnsupportedMediaType",
        "animated",
    ),
    (
        "html",
        lambda ts: post_raw(ts, b"<!DOCTYPE html><html><body><script>x()</script></body></html>"),
        415,
        "UnsupportedMediaType",
        "HTML",
    ),
    (
        "psd",
        lambda ts: post_raw(ts, b"8BPS\x00\x01" + b"\x00" * 40),
        415,
        "UnsupportedMediaType",
        "PSD",
    ),
    ("empty-body", lambda ts: post_raw(ts, b""), 400, "BadRequest", "empty image"),
    (
        "no-image-field",
        lambda ts: requests.post(
            ts.predictions_url, files={"scale": (None, "2")}, headers=ts.auth(), timeout=TIMEOUT
        ),
        400,
        "BadRequest",
        "no image",
    ),
]


@pytest.mark.parametrize(
    ("send", "status", "kind", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request_is_refused_and_worker_lives(torchserve, worker_pid, send, status, kind, words):
    response = send(torchserve)
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == status and body["type"] == kind
    assert words in body["message"], body["message"]
    assert_alive_and_same(torchserve, worker_pid)


# -- security (RELIABILITY.md section 6) -----------------------------------------------------------


def test_s1_every_port_on_loopback_and_no_model_registration(torchserve):
    """S1: all five listeners on 127.0.0.1 only, none in the worker; POST /models is a 405."""
    jvm = torchserve.pid()
    sockets = listening_sockets(jvm)
    expected = {
        torchserve.ports[key]
        for key in (
            "inference_address",
            "management_address",
            "metrics_address",
            "grpc_inference_port",
            "grpc_management_port",
        )
    }
    assert {port for _, port in sockets} == expected, sockets
    assert all(is_loopback(address) for address, _ in sockets), sockets
    assert listening_sockets(worker(torchserve)["pid"]) == []

    response = requests.post(
        f"{torchserve.management_url}/models",
        params={"url": "http://127.0.0.1:9/evil.mar"},
        headers={"Authorization": f"Bearer {torchserve.key('management')}"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 405
    assert response.json()["type"] == "MethodNotAllowedException"
    log = torchserve.log_text()
    assert "can access any URL" not in log
    assert "Model API enabled: false" in log


@pytest.mark.parametrize("where", ["ping", "predictions", "management"])
def test_s2_token_required_everywhere(torchserve, where):
    """S2: no or a wrong token is a 400 InvalidKeyException, /ping included; the right one works."""
    if where == "management":
        url, right = f"{torchserve.management_url}/models", torchserve.key("management")
    else:
        url, right = f"{torchserve.inference_url}/ping", torchserve.key()
    call = requests.get
    kwargs: dict = {}
    if where == "predictions":
        url, call, kwargs = torchserve.predictions_url, requests.post, {"data": photo_bytes(10, 10)}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": right}):
        response = call(url, headers=headers, timeout=TIMEOUT, **kwargs)
        assert response.status_code == 400, response.text
        assert response.json()["type"] == "InvalidKeyException"
    response = call(url, headers={"Authorization": f"Bearer {right}"}, timeout=TIMEOUT, **kwargs)
    assert response.status_code == 200, response.text[:300]


def test_metrics_need_no_token_so_the_port_stays_local(torchserve):
    """The prometheus metrics answer without a token (why metrics_address must stay on loopback)."""
    post_raw(torchserve, photo_bytes(10, 10))
    response = requests.get(f"{torchserve.metrics_url}/metrics", timeout=TIMEOUT)
    assert response.status_code == 200
    assert "ts_inference_requests_total" in response.text


def test_the_worker_imports_the_package_shipped_in_the_archive(torchserve):
    """TorchServe imports ``enhancer`` from the unpacked .mar, not from the development install."""
    (line,) = {
        line.split("engine package: ", 1)[1].strip()
        for line in torchserve.log_text().splitlines()
        if "engine package: " in line
    }
    served = Path(line)
    assert served.name == "enhancer" and (served / "engine.py").is_file()
    assert served.resolve() != (Path(__file__).parents[1] / "handlers" / "enhancer").resolve()
    assert (served.parent / "MAR-INF" / "MANIFEST.json").is_file(), "the unpacked archive"
    assert (served.parent / "enhancer_handler.py").is_file()


def test_served_outputs_are_byte_identical_to_the_recorded_engine(tmp_path):
    """The golden requests of the tiny scale-2 model, served from the archive (helpers/golden).
    The hashes were recorded on TorchScript, so this server runs it (the OpenVINO backend, the
    default on CPU, is held to 1/255 of it by tests/test_backends.py)."""
    from tests.helpers.tiny_models import tiny_sr

    model_pt = tiny_sr(tmp_path / "model")
    server = start_torchserve(
        model_pt, tmp_path / "ts", model_config={"handler": {"backend": "torchscript"}}
    )
    try:
        images = inputs()
        changed = {}
        for (model, name, options), digest in GOLDEN.items():
            if model != "sr":  # this server serves tiny_sr
                continue
            response = post_raw(server, images[name], **dict(options))
            assert response.status_code == 200, response.text[:300]
            if hashlib.sha256(response.content).hexdigest() != digest:
                changed[(name, options)] = hashlib.sha256(response.content).hexdigest()
        assert not changed, changed
    finally:
        stop_torchserve(server)


def test_worker_uses_every_core(torchserve):
    """TorchServe does not set OMP_NUM_THREADS for the worker; the handler uses all cores itself."""
    environ = Path(f"/proc/{worker(torchserve)['pid']}/environ").read_bytes().split(b"\0")
    assert not [entry for entry in environ if entry.startswith(b"OMP_NUM_THREADS=")]
    assert f"CPU inference with {len(os.sched_getaffinity(0))} threads" in torchserve.log_text()


def _rezip(good: Path, target: Path, member: str, change) -> Path:
    """A valid zip holding ``good``'s members, with ``member``'s bytes passed through ``change``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            out.writestr(info, change(data) if info.filename == member else data)
    return target


def _flip_middle(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    return bytes(flipped)


def test_s5_tampered_model_is_refused_before_start_and_by_the_worker(tmp_path, sr_model):
    """S5: a .mar whose weights changed (a valid zip) is refused by the check before the start,
    naming the member; skipping that check, the worker refuses it (its manifest, then the card)."""
    good = archive.build_archive(sr_model, export_path=tmp_path / "good", store=True)
    tampered = _rezip(good, tmp_path / "store" / "enhancer.mar", sr_model.name, _flip_middle)
    started = time.monotonic()
    with pytest.raises(serve.ServeError, match="member enhancer.pt differs from its sha256"):
        launch_torchserve(tampered, tmp_path / "ts", timeout=120)
    assert time.monotonic() - started < 20
    with pytest.raises(serve.ServeError) as caught:
        launch_torchserve(tampered, tmp_path / "ts2", timeout=120, verify=False)
    message = str(caught.value)
    assert "cannot load model 'enhancer'" in message
    assert "ArchiveDamagedError: the archive is damaged: enhancer.pt has sha256" in message
    assert "no READY worker after" not in message  # reported from the log, not by the timeout


def test_s5_an_edited_handler_inside_the_archive_refuses_the_worker_start(tmp_path, sr_model):
    """A handler changed inside the .mar (the red team's case: it used to start and run)."""
    good = archive.build_archive(sr_model, export_path=tmp_path / "good", store=True)
    edited = _rezip(
        good,
        tmp_path / "store" / "enhancer.mar",
        "enhancer_handler.py",
        lambda data: data + b"\nprint('edited')\n",
    )
    started = time.monotonic()
    with pytest.raises(serve.ServeError) as caught:
        launch_torchserve(edited, tmp_path / "ts", timeout=120, verify=False)
    assert "the archive is damaged: enhancer_handler.py has sha256" in str(caught.value)
    assert time.monotonic() - started < 60  # the 20 s of the issue, with room for a loaded CPU


@pytest.mark.parametrize("verify", [True, False])
def test_s5_one_flipped_byte_in_the_mar_fails_the_start_saying_it_is_damaged(
    tmp_path, sr_model, verify
):
    """One flipped byte in a built (compressed) .mar: refused before the start by its recorded
    sha256; without that check, TorchServe cannot unpack it and the start fails at once saying so
    (it used to wait for a READY worker until the timeout)."""
    mar = archive.build_archive(sr_model, export_path=tmp_path / "store")
    data = bytearray(mar.read_bytes())
    data[len(data) // 2] ^= 0x01
    mar.write_bytes(bytes(data))
    started = time.monotonic()
    with pytest.raises(serve.ServeError, match="enhancer.mar is damaged") as caught:
        launch_torchserve(mar, tmp_path / "ts", timeout=120, verify=verify)
    took = time.monotonic() - started
    assert took < (1 if verify else 20), (took, str(caught.value)[:300])


# -- limits (a server of its own: small max_request_size and max_output_bytes) ---------------------


@pytest.fixture(scope="module")
def small_limits(tmp_path_factory, sr_model):
    """A server with max_request_size 300,000 B, max_output_bytes 100,000 B, a secret in its env."""
    os.environ["ENHANCER_TEST_SECRET"] = "must-not-reach-the-worker"
    try:
        ts = start_torchserve(
            sr_model,
            tmp_path_factory.mktemp("ts-limits"),
            properties={"max_request_size": "300000"},
            model_config={"handler": {"max_output_bytes": 100_000}},
        )
    finally:
        del os.environ["ENHANCER_TEST_SECRET"]
    yield ts
    stop_torchserve(ts)


def test_i9_output_over_max_output_bytes_is_a_413_not_a_dead_worker(small_limits):
    pid = worker(small_limits)["pid"]
    noise = Image.fromarray(
        np.random.default_rng(2).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    )
    response = post_raw(small_limits, encode(noise, "PNG"), scale=2)
    assert response.status_code == 413
    body = response.json()
    assert body["type"] == "PayloadTooLarge"
    assert "the limit is 100,000 bytes" in body["message"]
    assert "Message size exceed limit" not in small_limits.log_text()
    assert_alive_and_same(small_limits, pid)


def test_request_over_max_request_size_is_refused_by_torchserve(small_limits):
    """Netty answers 413 with an empty body before the handler sees anything."""
    pid = worker(small_limits)["pid"]
    response = post_raw(small_limits, np.random.default_rng(3).bytes(300_001))
    assert response.status_code == 413
    assert response.content == b""
    assert_alive_and_same(small_limits, pid)


def test_s7_secrets_in_the_environment_do_not_reach_the_worker(small_limits):
    environ = Path(f"/proc/{worker(small_limits)['pid']}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0] for entry in environ}
    assert b"PATH" in names
    assert b"ENHANCER_TEST_SECRET" not in names
