"""End to end: a real TorchServe, the page under gunicorn, and headless Chromium driving it.

TorchServe serves the tiny scale-2 model (tests/helpers/servers.py); the page runs under gunicorn
exactly as ``python -m scripts.page start`` runs it, on a free port, pointed at that TorchServe and
its key file; and
Playwright drives Debian's Chromium (``/usr/bin/chromium``; ``playwright install`` cannot download a
browser here) with a fresh profile. Screenshots go to ``artifacts/`` (git-ignored).

Besides the browser tests, this file checks what only real servers can show: real photo sizes
through gunicorn, key expiry with ``token_expiration_min=0.1`` (S3), and TorchServe stopping and
starting again under a running page as a visitor sees it (F10's figures: tests/reliability/).
Firefox is not tested: no Firefox is installed on the CI machine.
"""

from __future__ import annotations

import base64
import io
import json
import re
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

from enhancer.contract import ALLOWED_TEXT
from scripts import page as page_cli
from scripts.ops import container
from scripts.ops import page as page_script
from scripts.ops import torchserve as serve
from tests.helpers.browser import drop
from tests.helpers.images import padded
from tests.helpers.pages import (
    Page,
    free_port,
    multipart,
    predictions_logged,
    start_page,
    stop_page,
)
from tests.helpers.servers import start_torchserve, stop_torchserve

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
ROTATED = "TorchServe inference key expired; rotated it through the management API"


# -- the page under gunicorn -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(torchserve, tmp_path_factory):
    """The page under gunicorn in front of the session's TorchServe."""
    page = start_page(torchserve, tmp_path_factory.mktemp("page"))
    yield page
    stop_page(page)


def encoded(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


# -- in the browser --------------------------------------------------------------------------------


def test_drop_a_photo_compare_zoom_and_download(site, browser, photo, tmp_path):
    browser.goto(site.url)
    service = browser.locator("#service")
    service.filter(has_text="Service ready.").wait_for(timeout=30_000)
    assert service.get_attribute("data-state") == "ready"

    original = encoded(photo(300, 200))
    drop(browser, [("holiday photo.png", "image/png", original)])
    item = browser.locator("#queue li").first
    browser.locator("#queue li[data-state=done]").wait_for(timeout=60_000)

    assert item.locator(".name").text_content() == "holiday photo.png"
    # The clean-up slider (denoise) sent its default; this server runs one model, refused it, and
    # the page sent the photo again without it and turned the slider off, saying why.
    denoise = browser.locator("#opt-denoise")
    assert denoise.is_disabled()
    assert browser.locator("#denoise-value").text_content() == "not available"
    assert "runs one model" in browser.locator("#denoise-help").text_content()
    sizes = item.locator(".sizes").text_content()
    assert re.search(r"^300×200 px, .* → 600×400 px, .* PNG$", sizes), sizes
    assert item.locator(".status-text").text_content().startswith("Done in")
    after = item.locator("img.after")
    assert after.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [600, 400]
    assert item.locator("img.before").evaluate("img => img.complete && img.naturalWidth") == 300

    # The comparison slider is a range input: the keyboard moves it, and the clip follows.
    split = item.locator("input.split")
    split.focus()
    browser.keyboard.press("Home")
    assert split.input_value() == "0"
    assert after.evaluate("img => getComputedStyle(img).clipPath") == "inset(0px 0px 0px 0%)"
    for _ in range(3):
        browser.keyboard.press("ArrowRight")
    assert split.input_value() == "3"
    assert after.evaluate("img => getComputedStyle(img).clipPath") == "inset(0px 0px 0px 3%)"

    # Zoom by keyboard: 100% shows one output pixel per CSS pixel, 200% overflows and scrolls.
    zoom = item.locator("button.zoom")
    zoom.focus()
    browser.keyboard.press("Enter")
    assert zoom.text_content() == "Zoom: 100%"
    stage = item.locator(".stage")
    assert stage.evaluate("el => el.getBoundingClientRect().width") == pytest.approx(600, abs=1)
    browser.keyboard.press("Enter")
    assert zoom.text_content() == "Zoom: 200%"
    viewport = item.locator(".viewport")
    assert viewport.evaluate("el => el.scrollWidth > el.clientWidth")
    viewport.focus()
    browser.keyboard.press("ArrowRight")
    browser.wait_for_function(
        "el => el.scrollLeft > 0", arg=viewport.element_handle(), timeout=5_000
    )
    browser.keyboard.press("-")
    browser.keyboard.press("-")
    assert zoom.text_content() == "Zoom: fit"
    split.fill("50")  # for the screenshot

    with browser.expect_download() as download_info:
        item.locator("a.download").click()
    download = download_info.value
    assert download.suggested_filename == "holiday_photo-x2.png"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with Image.open(saved) as result:
        assert result.format == "PNG"
        assert result.size == (600, 400)

    # The download menu's side-by-side image: plain resize | result, each 600 x 400, labelled
    with browser.expect_download() as download_info:
        item.locator("button.download-compare").click()
    download = download_info.value
    assert download.suggested_filename == "holiday_photo-x2-compare.png"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with Image.open(saved) as both:
        assert both.size == (2 * 600 + 6, 400 + 24)


def noisy_photo(width: int, height: int, seed: int, amplitude: int) -> Image.Image:
    """Gradients plus strong per-pixel noise: a photo that does not compress away."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    pixels = base + rng.integers(-amplitude, amplitude + 1, base.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_real_size_photos_are_all_enhanced(site, browser):
    """Photos of several hundred KB to several MB, dropped together, all come back enhanced."""
    photos = [
        ("phone.jpg", "image/jpeg", encoded(noisy_photo(1200, 900, 1, 40), "JPEG", quality=92)),
        ("scan.png", "image/png", encoded(noisy_photo(900, 700, 2, 60))),
        ("small.jpg", "image/jpeg", encoded(noisy_photo(800, 600, 3, 50), "JPEG", quality=90)),
        ("big.png", "image/png", encoded(noisy_photo(1100, 800, 4, 90))),
    ]
    sizes = sorted(len(data) for _, _, data in photos)
    assert sizes[0] > 200_000 and sizes[-1] > 2_000_000, sizes  # real sizes, not toy ones
    browser.goto(site.url)
    browser.locator("#service").filter(has_text="Service ready.").wait_for(timeout=30_000)
    drop(browser, photos)
    done = browser.locator("#queue li[data-state=done]")
    done.nth(len(photos) - 1).wait_for(timeout=240_000)
    assert browser.locator("#queue li[data-state=error]").count() == 0
    for k, (name, _, data) in enumerate(photos):
        item = browser.locator("#queue li").nth(k)
        assert item.locator(".name").text_content() == name
        with Image.open(io.BytesIO(data)) as original:
            want = [2 * original.width, 2 * original.height]
        after = item.locator("img.after")
        assert after.evaluate("img => [img.naturalWidth, img.naturalHeight]") == want


def test_errors_say_what_went_wrong(site, browser):
    browser.goto(site.url)
    hostile = '<img src=x onerror="window.hacked=1">.png'
    drop(browser, [(hostile, "image/png", b"<!doctype html><html><body>not a photo</body></html>")])
    drop(browser, [("huge.png", "image/png", b"\x89PNG\r\n\x1a\n")], pad=50 * 1024 * 1024)
    failed = browser.locator("#queue li[data-state=error]")
    failed.nth(1).wait_for(timeout=30_000)
    not_image, too_large = failed.nth(0), failed.nth(1)

    message = not_image.locator(".error").text_content()
    assert message.startswith("Not an image: This file is not an image the service can read")
    assert ALLOWED_TEXT in message
    assert not not_image.locator(".retry").is_visible()  # the same file would fail again
    # The hostile name is shown as text; nothing it contains ran or became an element.
    assert not_image.locator(".name").text_content() == hostile
    assert browser.evaluate(
        "() => window.hacked === undefined && !document.querySelector('#queue img[src=x]')"
    )

    assert (
        too_large.locator(".error")
        .text_content()
        .startswith("Too large: The file is 50.0 MB; the limit is 50 MB.")
    )
    assert not too_large.locator(".retry").is_visible()  # no point trying the same file again


@pytest.fixture(scope="module")
def small_budget(tmp_path_factory):
    """A TorchServe whose worker admits about 1 s of estimated work per request, its page, and a
    photo size whose scale-8 request that worker's own calibration puts well over the budget (a
    fixed size would be admitted on a fast enough machine)."""
    from enhancer.admission import Throughput, work
    from enhancer.card import ModelCard
    from enhancer.settings import EnhancerSettings
    from tests.helpers.tiny_models import tiny_sr

    model = tiny_sr(tmp_path_factory.mktemp("budget-model"))
    ts = start_torchserve(
        model,
        tmp_path_factory.mktemp("budget-ts"),
        model_config={"handler": {"time_budget_share": 1 / 300}},  # of responseTimeout 300 s
    )
    found = re.search(
        r"calibrated on a \d+x\d+ noise image: ([\d.]+) model MP/s, ([\d.]+) output MP/s "
        r"for the rest, on (\w+)",
        ts.log_text(),
    )
    throughput = Throughput(1e-6 / float(found[1]), 1e-6 / float(found[2]), found[3])
    card = ModelCard.load(model.with_suffix(".json"))
    tile = EnhancerSettings().openvino_tile if found[3] == "openvino" else card.tile
    cap = EnhancerSettings().max_output_pixels
    width, height = 400, 300
    # under heavy load the calibration is slow: shrink until scale 2 fits well inside the budget
    # (scale 8 is at least 16 times the work of scale 2), then grow until scale 8 is well over it
    while throughput.seconds(work(width, height, 2.0, card, tile)) > 0.4 and width > 40:
        width, height = width - 40, height - 30
    while throughput.seconds(work(width, height, 8.0, card, tile)) < 3.0 and (
        (width + 40) * (height + 30) * 64 <= cap
    ):
        width, height = width + 40, height + 30
    page = start_page(ts, tmp_path_factory.mktemp("budget-page"))
    yield page, (width, height)
    stop_page(page)
    stop_torchserve(ts)


def test_too_much_work_shows_the_estimate_and_offers_the_scale_that_fits(
    small_budget, browser, photo
):
    page, (width, height) = small_budget
    browser.goto(page.url)
    browser.locator("#opt-scale").select_option("8")
    drop(browser, [("big job.png", "image/png", encoded(photo(width, height)))])
    item = browser.locator("#queue li").first
    browser.locator("#queue li[data-state=error]").wait_for(timeout=60_000)
    message = item.locator(".error").text_content()
    start = f"Too large: too much work: {width}x{height} at scale 8 needs about"
    assert message.startswith(start), message
    assert "over the time budget of 1 s per request" in message
    best = float(re.search(r"the largest scale that fits this image is ([\d.]+)", message)[1])
    retry = item.locator(".retry")
    assert retry.text_content() == f"Try at {best:g}×"
    retry.click()
    browser.locator("#queue li[data-state=done]").wait_for(timeout=60_000)
    after = item.locator("img.after")
    want = [round(best * width), round(best * height)]
    assert after.evaluate("img => [img.naturalWidth, img.naturalHeight]") == want
    assert retry.text_content() == "Try again"  # the next failure offers the plain retry again


def test_over_the_rate_limit_the_page_waits_and_retries(torchserve, browser, photo, tmp_path):
    """A page that allows one upload at once per worker and 6 a minute: of 3 photos dropped
    together, at least one is answered 429; the page waits its Retry-After and sends it again."""
    page = start_page(torchserve, tmp_path / "page", RATE_LIMIT_PER_MINUTE=6, RATE_LIMIT_BURST=1)
    try:
        browser.goto(page.url)
        browser.locator("#service").filter(has_text="Service ready.").wait_for(timeout=30_000)
        images = [encoded(photo(40, 30, seed=k)) for k in range(3)]
        drop(browser, [(f"p{k}.png", "image/png", data) for k, data in enumerate(images)])
        browser.locator("#queue li[data-state=done]").nth(2).wait_for(timeout=120_000)
        assert browser.locator("#queue li[data-state=error]").count() == 0
        assert page.answered(429) >= 1 and page.answered(200) == 3
    finally:
        stop_page(page)


def test_pick_by_keyboard_and_download_all_as_zip(site, browser, photo, tmp_path):
    # Turn on file-chooser interception now: expect_file_chooser() turns it on without waiting for
    # the browser, and a key press sent right after can open the picker before it took effect.
    browser.on("filechooser", lambda chooser: None)
    browser.goto(site.url)
    browser.select_option("#opt-scale", "3")
    browser.select_option("#opt-format", "jpeg")
    assert browser.locator("#opt-quality").is_enabled()

    # The drop zone is a button: Tab to it, Enter opens the file picker.
    browser.locator("#dropzone").focus()
    with browser.expect_file_chooser() as chooser_info:
        browser.keyboard.press("Enter")
    chooser = chooser_info.value
    assert chooser.is_multiple()
    chooser.set_files(
        [
            {"name": "a.png", "mimeType": "image/png", "buffer": encoded(photo(40, 30, seed=1))},
            {
                "name": "b.jpg",
                "mimeType": "image/jpeg",
                "buffer": encoded(photo(50, 20, seed=2), "JPEG"),
            },
            {"name": "a.png", "mimeType": "image/png", "buffer": encoded(photo(10, 10, seed=3))},
        ]
    )
    browser.wait_for_function(
        "() => document.querySelectorAll('#queue li[data-state=done]').length === 3", timeout=60_000
    )
    download_all = browser.locator("#download-all")
    assert download_all.is_enabled()
    download_all.focus()
    with browser.expect_download() as download_info:
        browser.keyboard.press("Enter")
    download = download_info.value
    assert download.suggested_filename == "enhanced-photos.zip"
    saved = tmp_path / "all.zip"
    download.save_as(saved)

    with zipfile.ZipFile(saved) as archive:
        assert archive.testzip() is None  # every CRC-32 is right (fflate, vendored)
        assert archive.namelist() == ["a-x3.jpg", "b-x3.jpg", "a-x3-2.jpg"]
        sizes = []
        for name in archive.namelist():
            with Image.open(io.BytesIO(archive.read(name))) as image:
                assert image.format == "JPEG"
                sizes.append(image.size)
    assert sizes == [(120, 90), (150, 60), (30, 30)]


def test_paste_an_image_then_clear_the_list(site, browser, photo):
    browser.goto(site.url)
    assert browser.locator("#queue-empty").is_visible()
    pasted = base64.b64encode(encoded(photo(32, 24))).decode()
    browser.evaluate(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], 'image.png', { type: 'image/png' }));
            const init = { clipboardData: transfer, bubbles: true, cancelable: true };
            document.body.dispatchEvent(new ClipboardEvent('paste', init));
        }""",
        pasted,
    )
    done = browser.locator("#queue li[data-state=done]")
    done.wait_for(timeout=60_000)
    assert re.search(r"^32×24 px, .* → 64×48 px, ", done.locator(".sizes").text_content())
    drop(browser, [("notes.txt", "text/plain", b"just some text")])
    browser.locator("#queue li[data-state=error]").wait_for(timeout=30_000)
    assert browser.locator("#queue li").count() == 2

    browser.locator("#clear-done").click()
    assert browser.locator("#queue li").count() == 0
    assert browser.locator("#queue-empty").is_visible()
    assert browser.locator("#download-all").is_disabled()


MiB = 1024 * 1024


@pytest.mark.parametrize("fields", ["before", "after"])
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_real_photo_sizes_through_gunicorn(site, photo, fmt, fields):
    """Incompressible images from 64 KiB to the documented 50 MB reach TorchServe and come back
    enhanced, with the option fields before or after the file (the defect of werkzeug's form
    memory limit applied to file parts, which refused most real photos over 64 KiB)."""
    for size in (64 * 1024 - 1, 64 * 1024 + 1, 1_000_000, 10_000_000, 50 * MiB):
        image = padded(encoded(photo(40, 30), fmt.upper()), size)
        assert len(image) == size
        options = [("scale", b"2"), ("format", b"png")]
        body, content_type = multipart(image, options=options, options_first=fields == "before")
        response = requests.post(
            f"{site.url}/enhance", data=body, headers={"Content-Type": content_type}, timeout=120
        )
        assert response.status_code == 200, (size, response.text[:300])
        assert Image.open(io.BytesIO(response.content)).size == (80, 60)


def test_page_routes_through_gunicorn(site):
    assert requests.get(f"{site.url}/console", timeout=10).status_code == 404
    for path in ("/metrics", "/models/enhancer", "/ping", "/predictions/enhancer", "/token"):
        assert requests.get(f"{site.url}{path}", timeout=10).status_code == 404
    # /models is the page's own listing of the served models, not TorchServe's management API
    listed = requests.get(f"{site.url}/models", timeout=10).json()
    assert [m["name"] for m in listed["models"]] == ["enhancer"] and listed["pair"] is False
    response = requests.get(site.url, timeout=10)
    assert response.headers["Server"].startswith("gunicorn")  # not the development server
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    health = requests.get(f"{site.url}/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"torchserve": "ready", "model": "READY"}
    cross_site = requests.post(
        f"{site.url}/enhance",
        files={"image": ("p.png", b"\x89PNG\r\n\x1a\n")},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        timeout=10,
    )
    assert cross_site.status_code == 403


# -- keys that expire, a TorchServe that restarts (S3, F10) ----------------------------------------


@pytest.fixture(scope="module")
def short_keys(tmp_path_factory):
    """A TorchServe whose keys expire after 6 s, and a page in front of it."""
    from tests.helpers.tiny_models import tiny_sr

    model = tiny_sr(tmp_path_factory.mktemp("short-keys-model"))
    started = time.monotonic()
    ts = start_torchserve(
        model, tmp_path_factory.mktemp("short-keys-ts"), properties={"token_expiration_min": "0.1"}
    )
    page = start_page(ts, tmp_path_factory.mktemp("short-keys-page"))
    yield ts, page, started
    stop_page(page)
    stop_torchserve(ts)


def test_expiring_keys_never_reach_the_user(short_keys, photo):
    ts, page, started = short_keys
    image = encoded(photo(24, 16))
    statuses = []
    begin = time.monotonic()

    # 30 uploads over about 20 s, from two clients at once, across three or more key lifetimes.
    def client(offset: float):
        with requests.Session() as session:
            for n in range(15):
                time.sleep(max(0.0, begin + offset + n * 1.33 - time.monotonic()))
                response = session.post(
                    f"{page.url}/enhance",
                    files={"image": ("p.png", image)},
                    data={"scale": "2"},
                    timeout=60,
                )
                statuses.append(
                    (
                        response.status_code,
                        response.text[:200] if response.status_code != 200 else "",
                    )
                )

    threads = [threading.Thread(target=client, args=(offset,)) for offset in (0.0, 0.67)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    lifetime = time.monotonic() - started
    assert statuses == [(200, "")] * 30

    rotations = page.log_text().count(ROTATED)
    # Every rotation follows an expiry (one per 6 s at most), and at least two expiries happened.
    assert 2 <= rotations <= lifetime / 6 + 1, (rotations, lifetime)


def test_status_and_health_check_rotate_expired_keys(short_keys, monkeypatch, tmp_path):
    """``python -m scripts.serve status`` (and ``smoke``) and the container's health check still
    say ready after the keys have expired: they rotate them, as the page does (enhancer.client)."""
    ts, page, started = short_keys
    where = ["--run-dir", str(ts.workdir), "--config", str(ts.workdir / "config.properties")]
    old = json.loads((ts.workdir / "key_file.json").read_text())
    time.sleep(max(0.0, started + 7.0 - time.monotonic()))  # past one 6-second key life
    time.sleep(6.5)  # and past the life of any key the page rotated meanwhile
    status = subprocess.run(
        [sys.executable, "-m", "scripts.serve", *where, "status"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    assert ": READY" in status.stdout
    new = json.loads((ts.workdir / "key_file.json").read_text())
    assert new["management"]["key"] != old["management"]["key"], "rotated, not re-read"
    time.sleep(6.5)
    smoke = subprocess.run(
        [sys.executable, "-m", "scripts.serve", *where, "smoke"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert smoke.stdout.count("PASS") == 3
    time.sleep(6.5)
    instance = serve.Instance.from_config(ts.workdir, ts.workdir / "config.properties")
    mode_file = tmp_path / "container.json"
    port = int(page.url.rsplit(":", 1)[1])
    mode_file.write_text(json.dumps({"mode": "serve", "page_port": port}))
    monkeypatch.setattr(container, "MODE_FILE", mode_file)
    monkeypatch.setattr(container.serve, "run_instance", lambda: instance)
    assert container.health() == 0


def test_torchserve_down_and_back_under_a_running_page(short_keys, photo, browser):
    ts, page, _ = short_keys
    image = encoded(photo(24, 16))
    pid = page.process.pid
    instance = serve.Instance.from_config(ts.workdir, ts.workdir / "config.properties")
    serve.stop(instance)

    for _ in range(5):
        begun = time.monotonic()
        response = requests.post(
            f"{page.url}/enhance", files={"image": ("p.png", image)}, timeout=30
        )
        assert response.status_code == 503
        assert response.json()["type"] == "ServiceUnavailable"
        assert time.monotonic() - begun < 3.0
    assert requests.get(f"{page.url}/health", timeout=10).json()["torchserve"] == "down"

    # What a visitor sees meanwhile.
    browser.goto(page.url)
    browser.locator("#service[data-state=down]").wait_for(timeout=30_000)
    assert browser.locator("#service").text_content().startswith("Service down:")
    drop(browser, [("p.png", "image/png", image)])
    browser.locator("#queue li[data-state=error]").wait_for(timeout=30_000)
    message = browser.locator("#queue .error").text_content()
    assert message == "Service down: The enhancement service is not running."

    serve.launch(
        instance, ts.workdir / "config.properties", ts.mar.parent, f"enhancer={ts.mar.name}"
    )
    serve.wait_ready(instance, 120)
    restarted = time.monotonic()
    statuses = []
    while len(statuses) < 5 and time.monotonic() - restarted < 60:
        response = requests.post(
            f"{page.url}/enhance", files={"image": ("p.png", image)}, timeout=60
        )
        statuses.append(response.status_code)
    assert statuses == [200] * 5
    assert page.process.poll() is None and page.process.pid == pid  # the same page, not restarted

    browser.locator("#queue .retry").click()
    browser.locator("#queue li[data-state=done]").wait_for(timeout=60_000)
    browser.locator("#service[data-state=ready]").wait_for(timeout=30_000)


def test_page_script_start_status_stop(tmp_path, monkeypatch, torchserve):
    """python -m scripts.page start|status|stop, in a scratch run folder."""
    monkeypatch.setattr(page_script, "STATE_FILE", tmp_path / "page.json")
    monkeypatch.setattr(page_script, "LOG_DIR", tmp_path / "logs")
    monkeypatch.setattr(
        page_script,
        "run_instance",
        lambda: serve.Instance(
            torchserve.workdir,
            torchserve.inference_url,
            torchserve.management_url,
            torchserve.metrics_url,
        ),
    )
    port = free_port()
    assert page_cli.main(["start", "--port", str(port), "--workers", "1"]) == 0
    try:
        assert page_cli.main(["start", "--port", str(port)]) == 0  # already running: no second one
        assert page_cli.main(["status"]) == 0
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.json() == {"torchserve": "ready", "model": "READY"}
    finally:
        assert page_cli.main(["stop"]) == 0
    assert page_cli.main(["status"]) == 1
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=5)


# -- busy, said honestly: the page's queue (frontend/queue.py) -------------------------------------

QUEUED = 4  # uploads in flight when the late one comes


@dataclass
class QueueSizes:
    """Photos sized by the session worker's own calibration (its published estimator): ``small``
    (about ``small_s`` seconds each at 2x) and ``late`` (about ``late_s`` at 4x), and the page's
    read timeout ``limit``: the late photo fits it alone, with room, but not behind QUEUED small
    ones while at least half of their work is still ahead."""

    small: tuple[int, int]
    small_s: float
    late: tuple[int, int]
    late_s: float
    limit: float


@pytest.fixture(scope="module")
def slow_torchserve(tmp_path_factory):
    """TorchServe serving a slowed-down stand-in model (tests.helpers.tiny_models.slow_sr), so
    that photos within the caps take seconds on any machine: the tiny session model finishes
    the largest allowed photo too fast for a queue to form on an idle worker."""
    from tests.helpers.tiny_models import slow_sr

    model_pt = slow_sr(tmp_path_factory.mktemp("slow-model"), width=96)
    ts = start_torchserve(model_pt, tmp_path_factory.mktemp("slow-ts"))
    yield ts
    stop_torchserve(ts)


@pytest.fixture(scope="module")
def queue_sizes(slow_torchserve) -> QueueSizes:
    from enhancer.admission import Estimator
    from enhancer.client import TorchServeClient

    torchserve = slow_torchserve
    client = TorchServeClient(
        torchserve.inference_url,
        torchserve.management_url,
        key_file=torchserve.workdir / "key_file.json",
        status_timeout=60,
    )
    described, workers = client.describe_costs()
    assert described is not None and workers == 1
    estimator = Estimator.from_json(described)

    def grow(scale: str, seconds: float, cap: int) -> tuple[tuple[int, int], float]:
        width, height = 160, 120
        while (cost := estimator.request_seconds(width, height, {"scale": scale})) < seconds:
            assert width * height * float(scale) ** 2 * 1.21 <= cap, (
                f"the slowed stand-in finishes {seconds:.0f} s photos past the caps"
            )
            width, height = int(width * 1.1), int(height * 1.1)
        return (width, height), cost

    cap = estimator.max_output_pixels // 2
    small, small_s = grow("2", 3.0, cap)
    late, late_s = grow("4", 2 * QUEUED * small_s, cap)  # the limit: 2.5x the queue's work
    return QueueSizes(small, small_s, late, late_s, limit=late_s + QUEUED * small_s / 2)


def test_uploads_queue_with_their_places_and_a_late_one_is_busy_at_once(
    slow_torchserve, queue_sizes, photo, tmp_path
):
    """QUEUED photos sent at once through the page (gunicorn, 2 processes) to the real worker take
    places 1..QUEUED with expected waits; a late photo that fits the page's read timeout alone but
    not behind them is answered 503 ServiceBusy at once, saying its expected wait and the limit,
    and never reaches TorchServe; the queued ones are all enhanced."""
    sizes = queue_sizes
    torchserve = slow_torchserve
    page = start_page(
        torchserve, tmp_path / "page", READ_TIMEOUT=round(sizes.limit, 1), RATE_LIMIT_PER_MINUTE=0
    )
    try:
        check_the_queue(torchserve, page, sizes, photo)
    finally:
        stop_page(page)


def check_the_queue(ts, page: Page, sizes: QueueSizes, photo) -> None:
    small = [encoded(photo(*sizes.small, seed=k)) for k in range(QUEUED)]
    late = encoded(photo(*sizes.late, seed=9))
    answers: dict[int, requests.Response] = {}

    def send(k: int) -> None:
        answers[k] = requests.post(
            f"{page.url}/enhance",
            files={"image": ("p.png", small[k], "image/png")},
            data={"scale": "2"},
            headers={"X-Queue-Ticket": f"small-ticket-{k}"},
            timeout=sizes.limit + 60,
        )

    threads = [threading.Thread(target=send, args=(k,)) for k in range(QUEUED)]
    logged = predictions_logged(ts)
    try:
        started = time.monotonic()
        for thread in threads:
            thread.start()
        deadline = started + 60
        while time.monotonic() < deadline:
            state = requests.get(f"{page.url}/queue", timeout=10).json()
            if state["in_flight"] == QUEUED:
                break
            time.sleep(0.05)
        assert state["in_flight"] == QUEUED, state
        registered = time.monotonic() - started
        places = {}
        for k in range(QUEUED):
            mine = requests.get(
                f"{page.url}/queue", params={"ticket": f"small-ticket-{k}"}, timeout=10
            ).json()["ticket"]
            places[mine["place"]] = mine
        assert sorted(places) == list(range(1, QUEUED + 1))
        assert places[QUEUED]["of"] == QUEUED and not places[QUEUED]["running"]
        assert places[QUEUED]["wait"] > places[1]["wait"]

        sent = time.monotonic()
        refused = requests.post(
            f"{page.url}/enhance",
            files={"image": ("late.png", late, "image/png")},
            data={"scale": "4"},
            timeout=60,
        )
        took = time.monotonic() - sent
    finally:
        for thread in threads:
            thread.join(sizes.limit + 90)
    context = f"sizes {sizes}, {registered:.1f} s to queue them, refused in {took:.1f} s"
    assert refused.status_code == 503, (refused.text[:300], context)
    assert took < 5, context
    body = refused.json()
    assert body["type"] == "ServiceBusy" and body["limit"] == round(sizes.limit, 1)
    assert body["expected_wait"] > body["limit"] and body["in_flight"] == QUEUED
    assert f"{QUEUED} photos ahead of it" in body["message"]
    assert f"the page waits at most {sizes.limit:.0f} s" in body["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert [answers[k].status_code for k in range(QUEUED)] == [200] * QUEUED, context
    assert page.answered(200) == QUEUED and page.answered(503) == 1
    deadline = time.monotonic() + 10  # the access log is written as each answer goes out
    while predictions_logged(ts) - logged < QUEUED and time.monotonic() < deadline:
        time.sleep(0.1)
    assert predictions_logged(ts) - logged == QUEUED  # the late one never reached TorchServe
    assert "answered busy at once" in page.log_text()
    assert requests.get(f"{page.url}/queue", timeout=10).json()["in_flight"] == 0


def test_the_page_shows_each_uploads_place_and_expected_wait(
    slow_torchserve, queue_sizes, browser, photo, tmp_path
):
    page = start_page(slow_torchserve, tmp_path / "page", READ_TIMEOUT=round(queue_sizes.limit, 1))
    try:
        browser.goto(page.url)
        browser.locator("#service").filter(has_text="Service ready.").wait_for(timeout=30_000)
        browser.select_option("#opt-scale", "2")
        images = [encoded(photo(*queue_sizes.small, seed=k)) for k in range(3)]
        drop(browser, [(f"p{k}.png", "image/png", data) for k, data in enumerate(images)])
        # the third waits in the browser (two are sent at a time) and says so
        browser.locator("#queue li .status-text", has_text="Waiting to upload").wait_for(
            timeout=30_000
        )
        # the second sent waits behind the first in the service's queue, and says how long
        browser.locator(
            "#queue li .status-text",
            has_text=re.compile(r"^Place 2 of 2 in the queue · result in about \d+ s$"),
        ).wait_for(timeout=60_000)
        browser.locator("#queue li[data-state=done]").nth(2).wait_for(timeout=300_000)
        assert browser.locator("#queue li[data-state=error]").count() == 0
    finally:
        stop_page(page)
