"""RELIABILITY.md section 6, bad and unusual inputs (I1-I7) through a real TorchServe and the page
in front of it (the suite's shared ``torchserve`` and ``page``); I9 is test_i9_admission.py.

Every row ends with the worker checked: the same process as before, READY, no restart in the log,
and a good request still answered (``assert_alive_and_same``). A worker never dies on bad input.
"""

from __future__ import annotations

import io
import random
import time

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from tests.helpers.calls import (
    assert_alive_and_same,
    photo_bytes,
    png_declaring,
    post_raw,
    worker,
)
from tests.helpers.images import animated, exif_block, photo_array, png_bytes, read_png, to_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]


def upload(url: str, data: bytes, name: str = "p.png", **fields) -> requests.Response:
    return requests.post(
        f"{url}/enhance",
        files={"image": (name, data)},
        data={key: str(value) for key, value in fields.items()},
        timeout=120,
    )


def worker_rss_mb(ts) -> float:
    return psutil.Process(worker(ts)["pid"]).memory_info().rss / 2**20


def best_of(times: int, send) -> tuple[requests.Response, float]:
    """The quickest of ``times`` sends (one slow scheduling slice on a loaded CPU is not the
    server's cost), and its response."""
    best = None
    for _ in range(times):
        started = time.perf_counter()
        response = send()
        took = time.perf_counter() - started
        if best is None or took < best[1]:
            best = (response, took)
    return best


# -- I1: decompression bombs ----------------------------------------------------------------------

BOMBS = {
    "png-4097x4097": (4097, 4097),
    "png-10000x10000": (10000, 10000),
    "png-20000x20000": (20000, 20000),
    "png-1x200000000": (1, 200_000_000),
}


def test_i1_declared_bombs_are_413_at_once_with_no_memory_spent(torchserve, page):
    pid = worker(torchserve)["pid"]
    rss = worker_rss_mb(torchserve)
    figures = []
    for name, (width, height) in BOMBS.items():
        data = png_declaring(width, height)
        pixels = f"{width}x{height} = {width * height:,} pixels; the limit is 16,777,216 pixels"
        direct, direct_s = best_of(3, lambda d=data: post_raw(torchserve, d))
        via_page, page_s = best_of(3, lambda d=data: upload(page.url, d))
        for response in (direct, via_page):
            assert response.status_code == 413, (name, response.text[:300])
            body = response.json()
            assert body["type"] == "PayloadTooLarge" and pixels in body["message"], body
        figures.append(f"{name} {direct_s * 1000:.0f}/{page_s * 1000:.0f} ms")
        assert direct_s < 0.2 and page_s < 0.2, figures
    grown = worker_rss_mb(torchserve) - rss
    print(f"I1 (TorchServe/page, best of 3): {', '.join(figures)}; worker RSS {grown:+.1f} MB")
    assert grown < 50
    assert_alive_and_same(torchserve, pid)


# -- I2: truncated and corrupt files --------------------------------------------------------------


def _bad_crc_png() -> bytes:
    data = bytearray(photo_bytes(40, 30))
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    return bytes(data)


def _jpeg_garbage_after_soi() -> bytes:
    data = photo_bytes(40, 30, "JPEG")
    return data[:4] + random.Random(2).randbytes(2000)  # SOI and the first marker, then garbage


CORRUPT = {
    "half-jpeg": lambda: (lambda d: d[: len(d) // 2])(photo_bytes(120, 90, "JPEG")),
    "0-bytes": lambda: b"",
    "1-byte": lambda: b"\x89",
    "random-1mb": lambda: random.Random(1).randbytes(1_000_000),
    "png-bad-crc": _bad_crc_png,
    "jpeg-garbage-after-soi": _jpeg_garbage_after_soi,
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_i2_corrupt_files_are_400_never_5xx(torchserve, page, name):
    """TorchServe's handler answers 400; the page answers 400 too, or 415 when the leading bytes are
    no known format at all (it refuses those itself, before TorchServe)."""
    pid = worker(torchserve)["pid"]
    data = CORRUPT[name]()
    direct, via_page = post_raw(torchserve, data), upload(page.url, data)
    assert direct.status_code in (400, 422), (name, direct.status_code, direct.text)
    assert via_page.status_code in (400, 415, 422), (name, via_page.status_code, via_page.text)
    for response in (direct, via_page):
        assert response.json()["code"] == response.status_code
    assert_alive_and_same(torchserve, pid)


# -- I3: formats outside the allow-list, and spoofed ones -----------------------------------------

REFUSED = {
    "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "EPS"),
    "psd": (b"8BPS\x00\x01" + b"\x00" * 40, "PSD"),
    "pdf": (b"%PDF-1.7\n1 0 obj << >> endobj\n%%EOF\n", "PDF"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
    "html-as-png": (b"<!DOCTYPE html><html><body><script>x()</script></body></html>", "HTML"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_i3_formats_outside_the_allow_list_are_415(torchserve, page, name):
    pid = worker(torchserve)["pid"]
    data, words = REFUSED[name]
    raw = post_raw(torchserve, data)
    spoofed = requests.post(
        f"{page.url}/enhance", files={"image": ("photo.png", data, "image/png")}, timeout=60
    )
    for response in (raw, spoofed):
        assert response.status_code == 415, (name, response.text[:300])
        assert response.json()["type"] == "UnsupportedMediaType"
    assert words in raw.json()["message"], raw.json()  # the page's own refusal names the list
    assert "PNG, JPEG" in spoofed.json()["message"], spoofed.json()
    assert_alive_and_same(torchserve, pid)


@pytest.mark.parametrize("fmt", ["TIFF", "GIF", "BMP"])
def test_i3_the_other_allowed_formats_are_enhanced(page, fmt):
    image = Image.fromarray(photo_array(20, 14, 1))
    data = to_bytes(image.convert("P") if fmt == "GIF" else image, fmt)
    response = upload(page.url, data, name=f"p.{fmt.lower()}")
    assert response.status_code == 200, response.text[:300]
    assert Image.open(io.BytesIO(response.content)).size == (40, 28)


# -- I4: EXIF orientation -------------------------------------------------------------------------


def test_i4_exif_orientation_is_applied_and_not_kept(page):
    data = to_bytes(Image.fromarray(photo_array(40, 20, 2)), "JPEG", quality=95, exif=exif_block(6))
    for scale in (2, 3):
        response = upload(page.url, data, name="p.jpg", scale=scale)
        assert response.status_code == 200, response.text[:300]
        out = Image.open(io.BytesIO(response.content))
        assert out.size == (20 * scale, 40 * scale)
        assert out.getexif().get(0x0112, 1) == 1  # no orientation left to apply twice


# -- I5: animated images --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"], ids=["gif", "apng", "webp"])
def test_i5_animated_images_are_refused_quickly(torchserve, page, fmt):
    pid = worker(torchserve)["pid"]
    data = animated(fmt, frames=5, size=(40, 30))
    single = to_bytes(Image.fromarray(photo_array(40, 30, 0)), fmt)
    _, single_s = best_of(3, lambda: upload(page.url, single))
    response, took = best_of(3, lambda: upload(page.url, data))
    assert response.status_code == 415, response.text[:300]
    assert "animated" in response.json()["message"]
    assert "5 frames" in response.json()["message"]
    assert took <= max(single_s, 0.2), (took, single_s)  # within the single-frame budget
    assert_alive_and_same(torchserve, pid)


# -- I6: the mode matrix --------------------------------------------------------------------------


def _image(mode: str) -> Image.Image:
    rgb = Image.fromarray(photo_array(24, 16, 4))
    if mode == "P+transparency":
        image = rgb.convert("P")
        image.info["transparency"] = 0
        return image
    if mode == "RGBA":
        image = rgb.convert("RGBA")
        image.putalpha(Image.linear_gradient("L").resize((24, 16)))
        return image
    if mode == "LA":
        return rgb.convert("LA")
    return rgb.convert(mode)


MODES = ["1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "CMYK", "I", "F"]
ALPHA = {"LA", "P+transparency", "RGBA"}
# documented refusals: floating-point pixels (no image format we write holds them)
REFUSED_MODES = {"F": "images in Pillow mode F are not supported"}


@pytest.mark.parametrize("mode", MODES)
def test_i6_every_mode_is_enhanced_with_its_alpha_kept(page, mode):
    image = _image(mode)
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode in ("F", "I") else "PNG"
    data = to_bytes(image, fmt)
    response = upload(page.url, data, name=f"p.{fmt.lower()}", format="png")
    if mode in REFUSED_MODES:
        assert response.status_code == 415, (mode, response.text[:300])
        assert REFUSED_MODES[mode] in response.json()["message"]
        return
    assert response.status_code == 200, (mode, response.text[:300])
    out = Image.open(io.BytesIO(response.content))
    assert out.size == (48, 32)
    assert ("A" in out.getbands() or "transparency" in out.info) == (mode in ALPHA), out.mode


def test_i6_16_bit_gray_ramp_and_rgb_keep_their_range(page):
    ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (12, 1))
    response = upload(page.url, to_bytes(Image.fromarray(ramp)), format="png")
    assert response.status_code == 200, response.text[:300]
    out = read_png(response.content)[..., 0].astype(float)
    assert out.shape == (24, 64)
    assert abs(out.mean() - ramp.mean()) <= 0.05 * ramp.mean()  # not clamped to 255
    rgb16 = (np.random.default_rng(5).integers(0, 65536, (10, 14, 3))).astype(np.uint16)
    response = upload(page.url, png_bytes(rgb16), format="png")
    assert response.status_code == 200, response.text[:300]
    out = read_png(response.content)
    assert out.shape == (20, 28, 3) and out.dtype == np.uint16


# -- I7: degenerate sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 7), (1, 4096), (4096, 1)])
def test_i7_degenerate_sizes_are_enhanced_or_refused_never_5xx(torchserve, page, size):
    pid = worker(torchserve)["pid"]
    data = to_bytes(Image.fromarray(photo_array(*size, 6)))
    for response in (post_raw(torchserve, data), upload(page.url, data)):
        assert response.status_code in (200, 422), (size, response.text[:300])
        if response.status_code == 200:
            assert Image.open(io.BytesIO(response.content)).size == (2 * size[0], 2 * size[1])
    assert_alive_and_same(torchserve, pid)
