"""Slow clients against the page (RELIABILITY.md R10): normal uploads' latency, alone and while
``slow`` connections dribble a request at one byte a second.

Half of the slow connections dribble their headers (classic slowloris), half send whole headers
and then dribble a multipart body that declares 100 KB. ``measure`` runs normal uploads for
``baseline_s`` alone, then for ``attack_s`` with the slow connections open, and reports each
phase's p50/p99 and how many slow connections the server closed, and when.

    .venv/bin/python -m scripts.ops.slowloris                          # the page of `make run`
    .venv/bin/python -m scripts.ops.slowloris --url http://127.0.0.1:5050 --slow 20 --attack 60

The page and TorchServe must be running; the image sent is a generated 64x64 PNG (at the page's
default 2x), so the figures measure the page, not the model.
"""

from __future__ import annotations

import argparse
import io
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

DEFAULT_URL = "http://127.0.0.1:5000"


@dataclass
class SlowOutcome:
    """One slow connection: what it dribbled, and when (seconds after it opened) it was closed."""

    mode: str
    sent: int = 0
    closed_after: float | None = None


@dataclass
class Report:
    baseline: list[float] = field(default_factory=list)
    attack: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    slow: list[SlowOutcome] = field(default_factory=list)

    @property
    def closed(self) -> list[SlowOutcome]:
        return [outcome for outcome in self.slow if outcome.closed_after is not None]

    def summary(self) -> str:
        lines = [
            f"baseline: {len(self.baseline)} uploads, p50 {percentile(self.baseline, 50):.3f} s, "
            f"p99 {percentile(self.baseline, 99):.3f} s",
            f"attack:   {len(self.attack)} uploads, p50 {percentile(self.attack, 50):.3f} s, "
            f"p99 {percentile(self.attack, 99):.3f} s, failed {len(self.failures)}"
            + (f" ({sorted(set(self.failures))})" if self.failures else ""),
        ]
        closed = self.closed
        if closed:
            times = sorted(outcome.closed_after for outcome in closed)
            lines.append(
                f"slow connections: {len(closed)} of {len(self.slow)} closed by the server, "
                f"after {times[0]:.1f}-{times[-1]:.1f} s"
            )
        else:
            lines.append(f"slow connections: none of {len(self.slow)} closed by the server")
        return "\n".join(lines)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def sample_png(side: int = 64) -> bytes:
    """A small generated photo-like PNG."""
    from PIL import Image

    image = Image.radial_gradient("L").resize((side, side)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def upload(url: str, image: bytes, timeout: float = 120.0) -> tuple[float, str]:
    """One normal upload to ``<url>/enhance``: (seconds, "ok" or what went wrong)."""
    started = time.monotonic()
    try:
        response = requests.post(
            f"{url}/enhance",
            files={"image": ("photo.png", image, "image/png")},
            data={"scale": "2"},
            timeout=timeout,
        )
        result = "ok" if response.status_code == 200 else str(response.status_code)
    except requests.RequestException as error:
        result = type(error).__name__
    return time.monotonic() - started, result


def _dribble(host: str, port: int, mode: str, rate: float, until: float, out: SlowOutcome):
    """Open one connection and send a request one byte per ``1 / rate`` s until ``until``."""
    boundary = "slowloris"
    if mode == "headers":
        head = f"POST /enhance HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
        tail = b"X-Padding: " + b"a" * 100_000
    else:
        head = (
            f"POST /enhance HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: 100000\r\n\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        tail = b"\x89PNG" + b"\0" * 99_000
    opened = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(head)
            sock.settimeout(1.0 / rate)
            for byte in tail:
                if time.monotonic() >= until:
                    return
                try:
                    if sock.recv(4096) == b"":  # the server closed it (perhaps after an answer)
                        out.closed_after = time.monotonic() - opened
                        return
                except TimeoutError:
                    pass
                sock.sendall(bytes([byte]))
                out.sent += 1
    except OSError:
        out.closed_after = time.monotonic() - opened


def _uploads(url: str, image: bytes, until: float, concurrency: int, report: Report, into):
    def loop():
        while time.monotonic() < until:
            seconds, result = upload(url, image)
            if result == "ok":
                into.append(seconds)
            else:
                report.failures.append(result)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def measure(
    url: str,
    image: bytes | None = None,
    *,
    slow: int = 20,
    rate: float = 1.0,
    baseline_s: float = 20.0,
    attack_s: float = 60.0,
    concurrency: int = 2,
) -> Report:
    """Normal uploads alone for ``baseline_s``, then for ``attack_s`` beside ``slow`` dribblers.

    ``concurrency`` uploads run at a time (the page sends 2). The slow connections open a second
    before the attack phase's uploads start, and are abandoned when it ends.
    """
    image = image if image is not None else sample_png()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    report = Report()
    upload(url, image)  # warm up: the first call pays for connections and the model's first run
    _uploads(url, image, time.monotonic() + baseline_s, concurrency, report, report.baseline)
    baseline_failures = len(report.failures)
    until = time.monotonic() + attack_s + 1.0
    report.slow = [SlowOutcome("headers" if i % 2 == 0 else "body") for i in range(slow)]
    threads = [
        threading.Thread(
            target=_dribble, args=(host, port, outcome.mode, rate, until, outcome), daemon=True
        )
        for outcome in report.slow
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    _uploads(url, image, until, concurrency, report, report.attack)
    for thread in threads:
        thread.join(timeout=5.0)
    report.failures = report.failures[baseline_failures:] + [
        f"baseline {failure}" for failure in report.failures[:baseline_failures]
    ]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.ops.slowloris",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="the page (default: %(default)s)")
    parser.add_argument("--slow", type=int, default=20, help="slow connections (default: 20)")
    parser.add_argument("--rate", type=float, default=1.0, help="their bytes/s (default: 1)")
    parser.add_argument("--baseline", type=float, default=20.0, metavar="S", help="default: 20")
    parser.add_argument("--attack", type=float, default=60.0, metavar="S", help="default: 60")
    parser.add_argument("--concurrency", type=int, default=2, help="normal uploads at a time")
    args = parser.parse_args(argv)
    report = measure(
        args.url.rstrip("/"),
        slow=args.slow,
        rate=args.rate,
        baseline_s=args.baseline,
        attack_s=args.attack,
        concurrency=args.concurrency,
    )
    print(report.summary())
    ratio = percentile(report.attack, 99) / percentile(report.baseline, 99)
    passed = ratio <= 2.0 and report.closed and not report.failures
    print(f"p99 under attack / baseline: {ratio:.2f} (pass mark 2); {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
