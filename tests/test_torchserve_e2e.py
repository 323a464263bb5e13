"""End to end through a real TorchServe: the repository's handler, archive and config.properties.

Most tests share the session server (``torchserve`` fixture: the tiny scale-2 model, started once).
Three more servers start only where the config must differ: small limits (I9, the 413s), tampered
and damaged archives (S5, never become READY), and that is all; each costs a few seconds.

Every bad request is followed by a good one, and the worker must be the same process as before
(same pid, no "Retry worker" or "Worker died" in the log): a worker never dies on bad input.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers.calls import (
    TIMEOUT,
    assert_alive_and_same,
    decoded,
    photo_bytes,
    post_form,
    post_raw,
    worker,
)
from tests.helpers.golden import GOLDEN, inputs
from tests.helpers.images import encode
from tests.helpers.servers import (
    start_torchserve,
    stop_torchserve,
)

pytestmark = pytest.mark.e2e


# -- helpers --------------------------------------------------------------------------------------


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


BAD_REQUESTS = [
    # (id, how to send, status, type, words the message must hold); the bad images themselves
    # (RELIABILITY.md I1-I3, I5) are tests/reliability/test_inputs.py's
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
