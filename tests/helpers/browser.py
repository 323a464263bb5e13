"""Headless Chromium for end-to-end tests of the page (a pytest plugin, loaded by
tests/conftest.py): the ``browser_context`` (module) and ``browser`` (a tab) fixtures, and ``drop``.

Playwright drives Debian's Chromium (``/usr/bin/chromium``; ``playwright install`` cannot download
a browser here) with a fresh profile; a tab fails its test on any script error or
Content-Security-Policy violation, and leaves a screenshot in ``artifacts/`` (git-ignored).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """Headless Chromium with a fresh profile, accepting downloads."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
            viewport={"width": 1000, "height": 900},
        )
        yield context
        context.close()


@pytest.fixture
def browser(browser_context, request):
    """A new tab; fails the test on any script error or Content-Security-Policy violation, and saves
    a screenshot of how the page ended to artifacts/<test name>.png."""
    tab = browser_context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if "Content Security Policy" in message.text
            else None
        ),
    )
    yield tab
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    finally:
        tab.close()
    assert problems == [], problems


def drop(tab, files: list[tuple[str, str, bytes]], pad: int = 0) -> None:
    """Drop files on the drop zone the way a browser does: a DataTransfer on dragover and drop.
    ``pad`` zero bytes are appended to each file inside the browser (for sizes too big to send)."""
    payload = [
        {"name": name, "type": kind, "data": base64.b64encode(data).decode()}
        for name, kind, data in files
    ]
    tab.evaluate(
        """([files, pad]) => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
                const parts = pad ? [bytes, new Uint8Array(pad)] : [bytes];
                transfer.items.add(new File(parts, f.name, { type: f.type }));
            }
            const zone = document.getElementById('dropzone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                const init = { bubbles: true, cancelable: true, dataTransfer: transfer };
                zone.dispatchEvent(new DragEvent(type, init));
            }
        }""",
        [payload, pad],
    )
