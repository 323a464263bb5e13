"""TorchServe and Triton give the same answers: same pixels, same error classes (DESIGN.md 11).

Triton is started the way a user starts it, ``python -m scripts.triton_serve``, as a subprocess on
loopback ports with a private temporary folder and *without* LD_LIBRARY_PATH, so the start command's
own libpython fix-up is what lets Triton's Python stub start. It serves exactly the model TorchServe
serves: the .pt and card are taken out of the session TorchServe's archive (tests.helpers.servers).

What "the same" means, and why:
- PNG outputs: the same size, mode and pixels within 1/255 of full scale per channel (alpha
  included). Both servers run one engine on the same CPU, so the pixels are normally identical; the
  1/255 allows a float rounding difference should the two ever group tiles into model calls
  differently (TorchServe and Triton batch concurrent requests independently). Measured here:
  every output, lossy ones included, was byte-identical.
- JPEG and WebP outputs: the same size, mode and content type, and decoded pixels within 1/255
  too. The encoders are the same Pillow build with the same quality defaults, fed the pixels the PNG
  cases show to be equal, so anything more than that would mean the two paths encode differently
  (another quality, chroma subsampling or metadata), which is what this test exists to catch.
- Errors: the class is the HTTP status: TorchServe's response status vs the binding's ``status``
  output (errors are outputs on Triton; enhancer.serving.triton says why), and both must be the
  status the API promises (DESIGN.md 4); the JSON bodies carry the same ``type``.
"""

from __future__ import annotations

import concurrent.futures
import io
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from scripts.ops import triton as triton_ops
from scripts.ops import triton_client
from tests.helpers.images import (
    animated,
    encode,
    photo_array,
    png_bytes,
    png_header,
    webp_ending_in_nul,
)
from tests.helpers.triton import TIMEOUT, TritonProcess, start_triton

pytestmark = [pytest.mark.e2e, pytest.mark.triton]

tritonclient_http = pytest.importorskip("tritonclient.http", reason="needs the triton extra")
pytest.importorskip("pytriton", reason="needs the triton extra")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served_model(torchserve, tmp_path_factory) -> Path:
    """The .pt and card that TorchServe serves, taken out of its archive."""
    directory = tmp_path_factory.mktemp("triton-model")
    with zipfile.ZipFile(torchserve.mar) as archive:
        for name in ("enhancer.pt", "enhancer.json"):
            (directory / name).write_bytes(archive.read(name))
    return directory / "enhancer.pt"


@pytest.fixture(scope="module")
def triton(served_model, tmp_path_factory):
    server = start_triton(served_model, tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()


# -- sending ------------------------------------------------------------------------------------


@dataclass
class Answer:
    """One server's answer, reduced to what the two can be compared on."""

    status: int
    data: bytes
    content_type: str
    error_type: str | None
    scale_used: str | None = None


def via_torchserve(ts, data: bytes, options: dict) -> Answer:
    """Multipart, the image in ``data`` and options as fields, as the page and ``curl -F`` send."""
    response = requests.post(
        ts.predictions_url,
        files={"data": ("upload", data)},
        data={name: str(value) for name, value in options.items()},
        headers=ts.auth(),
        timeout=TIMEOUT,
    )
    content_type = response.headers.get("Content-Type", "").split(";")[0]
    error_type = None
    if response.status_code != 200:
        error_type = response.json().get("type")
    scale_used = response.headers.get("X-Enhance-Scale-Used")
    return Answer(response.status_code, response.content, content_type, error_type, scale_used)


def via_triton(server: TritonProcess, data: bytes, options: dict) -> Answer:
    """Through the example client's own functions (scripts.triton_client)."""
    client = server.client()
    try:
        (reply,) = triton_client.enhance(client, [data], [options], timeout=TIMEOUT)
    finally:
        client.close()
    error_type = reply.error["type"] if reply.error else None
    scale_used = reply.headers.get("X-Enhance-Scale-Used")
    return Answer(reply.status, reply.data, reply.content_type, error_type, scale_used)


def pixels(data: bytes) -> tuple[str, tuple[int, int], np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, image.size, np.asarray(image).astype(np.int64)


def assert_same_image(ts: Answer, tr: Answer, label: str) -> None:
    assert ts.status == tr.status == 200, (label, ts, tr.error_type)
    assert ts.content_type == tr.content_type, label
    ts_mode, ts_size, ts_pixels = pixels(ts.data)
    tr_mode, tr_size, tr_pixels = pixels(tr.data)
    assert (ts_mode, ts_size) == (tr_mode, tr_size), label
    full_scale = 65535 if ts_pixels.max() > 255 or ts_mode.startswith("I") else 255
    worst = int(np.abs(ts_pixels - tr_pixels).max())
    assert worst <= full_scale // 255, f"{label}: pixels differ by {worst}/{full_scale}"


# -- the cases ----------------------------------------------------------------------------------


def photo(width: int, height: int, mode: str = "RGB", fmt: str = "PNG", **params) -> bytes:
    image = Image.fromarray(photo_array(width, height, seed=width * height))
    if mode == "RGBA":
        alpha = np.linspace(0, 255, width * height).reshape(height, width).astype(np.uint8)
        image.putalpha(Image.fromarray(alpha))
    else:
        image = image.convert(mode)
    return encode(image, fmt, **params)


def gray16(width: int = 21, height: int = 13) -> bytes:
    """A 16-bit gray PNG ramp (written by hand: tests/helpers/images.py), which must stay 16-bit."""
    ramp = np.linspace(0, 65535, width * height).reshape(height, width).astype(np.uint16)
    return png_bytes(ramp)


IMAGES = {
    "rgb-png-40x30": lambda: photo(40, 30),
    "rgb-jpeg-64x48": lambda: photo(64, 48, fmt="JPEG", quality=90),
    "rgba-png-33x21": lambda: photo(33, 21, "RGBA"),
    "gray-png-25x37": lambda: photo(25, 37, "L"),
    "gray16-png-21x13": gray16,
    "webp-nul-tail": webp_ending_in_nul,
    "rgb-png-1x1": lambda: photo(1, 1),
}

PNG_OPTIONS = [
    {},  # 2x, format auto: PNG for every PNG input
    {"scale": "2", "format": "png"},
    {"scale": "4", "format": "png"},
    {"scale": "3", "format": "png"},
    {"scale": "1", "format": "png"},
    {"scale": "2.5", "format": "png", "strength": "0.5"},
]
LOSSY_OPTIONS = [
    {"format": "webp"},
    {"format": "jpeg", "quality": "85"},
    {"scale": "4", "format": "webp", "quality": "80"},
    {"scale": "3", "format": "jpeg"},
]


def label(name: str, options: dict) -> str:
    return f"{name} {options or '(defaults)'}"


@pytest.mark.parametrize("name", list(IMAGES))
def test_png_outputs_have_the_same_pixels(torchserve, triton, name):
    data = IMAGES[name]()
    for options in PNG_OPTIONS:
        if name != "rgb-png-40x30" and options.get("strength"):
            continue  # one image is enough for strength; keeps the test short
        ts, tr = via_torchserve(torchserve, data, options), via_triton(triton, data, options)
        assert_same_image(ts, tr, label(name, options))


def test_auto_scale_level_and_compare_agree(torchserve, triton):
    data = IMAGES["rgb-png-40x30"]()
    for options in (
        {"scale": "auto", "format": "png"},
        {"level": "2", "enhance_first": "true", "format": "png"},
        {"scale": "1.5", "compare": "true", "metadata": "strip", "format": "png"},
    ):
        ts, tr = via_torchserve(torchserve, data, options), via_triton(triton, data, options)
        assert_same_image(ts, tr, label("rgb-png-40x30", options))
        asked = options.get("scale", "2")
        expected = "8" if asked == "auto" else asked  # auto: a 30 px short side gets 8x
        assert ts.scale_used == tr.scale_used == expected


@pytest.mark.parametrize(
    "name", ["rgb-png-40x30", "rgb-jpeg-64x48", "rgba-png-33x21", "gray-png-25x37"]
)
def test_lossy_outputs_decode_to_the_same_pixels(torchserve, triton, name):
    data = IMAGES[name]()
    for options in LOSSY_OPTIONS:
        ts, tr = via_torchserve(torchserve, data, options), via_triton(triton, data, options)
        assert_same_image(ts, tr, label(name, options))


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
        "quality-0": (photo(20, 10), {"format": "jpeg", "quality": "0"}, 400, "BadRequest"),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_bad_inputs_get_the_same_error_class(torchserve, triton, name):
    data, options, status, kind = bad_inputs()[name]
    ts, tr = via_torchserve(torchserve, data, options), via_triton(triton, data, options)
    assert ts.status == status, (name, ts.status, ts.data[:300])
    assert tr.status == status, (name, tr.status, tr.error_type)
    assert ts.error_type == tr.error_type == kind, name
    assert tr.data == b"" and tr.content_type == ""


# -- Triton-side behaviour -----------------------------------------------------------------------


def metric(text: str, name: str, model: str = "enhancer") -> float:
    match = re.search(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} not in the metrics"
    return float(match.group(1))


def test_batch_mates_keep_their_own_answers_and_batches_form(triton):
    """Concurrent good and bad uploads: each gets its own answer, and Triton batched some of them.

    PyTriton fails a whole batch when the callable raises; errors as outputs are what keep a bad
    upload from failing the good ones the dynamic batcher put beside it.
    """
    good, bad = photo(96, 64), b"GIF89a but not really"
    jobs = [(good, {"scale": "4"}) if i % 2 == 0 else (bad, {}) for i in range(12)]
    before = triton.metrics()
    barrier = threading.Barrier(len(jobs))

    def send(job):
        barrier.wait(TIMEOUT)
        return via_triton(triton, *job)

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(send, jobs))
    after = triton.metrics()
    for (data, _), answer in zip(jobs, answers, strict=True):
        if data is good:
            assert answer.status == 200 and pixels(answer.data)[1] == (384, 256)
        else:
            assert answer.status == 400 and answer.error_type == "BadRequest"
    requests_done = metric(after, "nv_inference_count") - metric(before, "nv_inference_count")
    executions = metric(after, "nv_inference_exec_count") - metric(
        before, "nv_inference_exec_count"
    )
    assert requests_done == len(jobs)
    assert executions < requests_done, "no two requests ever shared a model execution"


def test_one_request_with_several_rows(triton):
    """A client may send a batch in one request; each row is answered on its own."""
    client = triton.client()
    try:
        replies = triton_client.enhance(
            client, [photo(20, 10), b"nope", photo(8, 8, "L")],
            [{"scale": "3"}, {}, {"format": "webp"}], timeout=TIMEOUT,
        )  # fmt: skip
    finally:
        client.close()
    assert [reply.status for reply in replies] == [200, 400, 200]
    assert (replies[0].width, replies[0].height) == (60, 30)
    assert replies[2].content_type == "image/webp"


def test_malformed_requests_are_400s_and_harm_no_one(triton):
    """Triton's own input checks answer 400; what it lets through is answered per row."""
    from tritonclient.utils import InferenceServerException

    client = triton.client()
    try:
        wrong_type = tritonclient_http.InferInput("image", [1, 1], "INT32")
        wrong_type.set_data_from_numpy(np.array([[1]], dtype=np.int32))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("enhancer", [wrong_type])
        assert raised.value.status() == "400" and "BYTES" in raised.value.message()
        # only the optional input: Triton passes it on, the binding answers it without raising
        options = tritonclient_http.InferInput("options", [1, 1], "BYTES")
        options.set_data_from_numpy(np.array([[b"{}"]], dtype=np.object_))
        result = client.infer("enhancer", [options])
        reply = triton_client.parse_reply(result)
        assert reply.status == 400 and "input 'image' is missing" in reply.error["message"]
    finally:
        client.close()
    assert via_triton(triton, photo(10, 10), {}).status == 200


def test_full_queue_is_refused_at_once_with_503(served_model, tmp_path):
    """As TorchServe answers 503 when its job queue is full, Triton rejects past --queue-size."""
    server = start_triton(
        served_model, tmp_path / "small-queue", "--queue-size", "1", "--max-batch-size", "1"
    )
    try:
        heavy = photo(128, 128)  # slow enough that all 8 arrive while the first one runs
        barrier = threading.Barrier(8)

        def send(_):
            from tritonclient.utils import InferenceServerException

            client = server.client()
            barrier.wait(TIMEOUT)
            try:
                (reply,) = triton_client.enhance(client, [heavy], [{"scale": "2"}], timeout=TIMEOUT)
                return reply.status, ""
            except InferenceServerException as error:
                return int(error.status()), error.message()
            finally:
                client.close()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(send, range(8)))
    finally:
        server.stop()
    statuses = [status for status, _ in outcomes]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1, outcomes
    assert statuses.count(503) >= 1, "8 concurrent requests for 1 worker and 1 queue slot"
    assert all("Exceeds maximum queue size" in text for status, text in outcomes if status == 503)


def test_example_client_checks_and_fails_cleanly(triton, tmp_path):
    source = tmp_path / "photo.jpg"
    source.write_bytes(photo(50, 30, fmt="JPEG"))
    script = ["-m", "scripts.triton_client"]
    out = tmp_path / "out.webp"
    done = subprocess.run(
        [sys.executable, *script, str(source), "-o", str(out), "--scale", "3",
         "--url", triton.url, "--check"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS: enhancer 150x90 image/webp" in done.stdout
    assert pixels(out.read_bytes())[1] == (150, 90)
    refused = subprocess.run(
        [sys.executable, *script, str(source), "--scale", "9", "--url", triton.url, "--check"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "FAIL: enhancer: 400 BadRequest: option 'scale'" in refused.stderr


def test_start_command_fixed_libpython_by_itself(triton):
    """The server was started without LD_LIBRARY_PATH; where this Python needs it, it set it."""
    needed = triton_ops.python_library_path({})
    log = triton.log_text()
    if needed is not None:
        assert f"LD_LIBRARY_PATH for Triton's Python stub: {needed}" in log
    assert "READY after" in log and "127.0.0.1" in log


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (zombies excluded), read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def test_sigterm_stops_triton_and_everything_it_started(triton):
    """Last in this file: stop as Docker/Kubernetes do, and leave no process of the group behind."""
    group = triton.process.pid
    scratch = (triton.workdir / "tmp").resolve()
    assert list(scratch.glob("enhancer-triton-*")), "the running server's workspace"
    assert triton.stop(clean=False) == 0, triton.log_text()[-3000:]
    time.sleep(1)
    left = group_members(group)
    assert left == [], f"processes left in the group: {left}"
    assert not list(scratch.glob("enhancer-triton-*")), "workspace not removed"
    shutil.rmtree(scratch, ignore_errors=True)
