"""What makes the page safe to put on a network: content sniffing, headers, origin checks.

- Uploads are identified by their first bytes (``enhancer.contract.sniff_format``), never by their
  name or declared type.
- Every response carries a strict Content-Security-Policy (no inline script, no plugins, no framing)
  and ``X-Content-Type-Options: nosniff``.
- Cross-site POSTs are refused: the page has no cookies to steal, but a foreign site could still
  make its visitors' browsers burn the server's compute.
"""

from __future__ import annotations

import contextlib
import io
import time
from typing import IO
from urllib.parse import urlsplit

from flask import Request, current_app
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream, get_input_stream

# img-src allows blob: (results and previews are object URLs) and data: (nothing else needs it, but
# Chromium and Firefox render some built-in controls with data: images). No inline script or style.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}


def cross_site(request: Request) -> bool:
    """Whether a request comes from another site's page (by Sec-Fetch-Site, else by Origin).

    Requests without either header (curl, scripts) are not cross-site: they carry no visitor's
    browser with them.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        # "none": the user typed the URL or used a bookmark; same-site would be another port or
        # subdomain, which is another application.
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    if origin == "null":  # sandboxed frames, file: pages, some redirects
        return True
    return urlsplit(origin).netloc.lower() != request.host.lower()


# werkzeug's multipart parser reads the body in pieces of this size (MultiPartParser's default
# buffer_size) and applies MAX_FORM_MEMORY_SIZE to its whole buffer, file parts included: a piece
# plus the few bytes it holds back when a piece ends near a line break must fit, or an ordinary
# photo is refused as too large. (Seen with werkzeug 3.1.8 and 3.1.9 and a 64 KiB setting: most
# real JPEGs and PNGs over 64 KiB got a 413.) Fields must stay small, so the setting is bounded
# from below here and from above by the option check in views.py.
PARSER_READ_SIZE = 64 * 1024
MIN_FORM_MEMORY_SIZE = 2 * PARSER_READ_SIZE
# Multipart framing, the file name and the option fields, on top of the image itself.
FORM_ALLOWANCE = 64 * 1024


def check_upload_limits(config) -> None:
    """Validate the upload settings and derive the body limit (MAX_CONTENT_LENGTH) from them.

    MAX_UPLOAD_BYTES is the one size users are told: the largest image. The body may be larger by
    FORM_ALLOWANCE, so that an image of exactly MAX_UPLOAD_BYTES, sent as a form with its options,
    passes, and one byte more is refused by the image check in views.py, naming the image limit.
    """
    if "MAX_CONTENT_LENGTH" in config and config["MAX_CONTENT_LENGTH"] is not None:
        raise ValueError(
            "Set MAX_UPLOAD_BYTES (the largest image), not MAX_CONTENT_LENGTH: the body limit is "
            "derived from it."
        )
    upload = config["MAX_UPLOAD_BYTES"]
    if not isinstance(upload, int) or upload < 1:
        raise ValueError(f"MAX_UPLOAD_BYTES must be a positive number of bytes, not {upload!r}")
    if config["MAX_FORM_MEMORY_SIZE"] < MIN_FORM_MEMORY_SIZE:
        raise ValueError(
            f"MAX_FORM_MEMORY_SIZE must be at least {MIN_FORM_MEMORY_SIZE} bytes: werkzeug applies "
            f"it to each {PARSER_READ_SIZE}-byte read of the image too"
        )
    if not config["BODY_MIN_RATE"] > 0 or not config["BODY_GRACE"] >= 0:
        raise ValueError("BODY_MIN_RATE must be over 0 bytes/s and BODY_GRACE 0 s or more")
    config["MAX_CONTENT_LENGTH"] = upload + FORM_ALLOWANCE


class BodyTooLarge(RequestEntityTooLarge):
    """The request body is over MAX_CONTENT_LENGTH (declared, or counted while it streams in).

    Its own class, so that the page's 413 text can say which limit was hit: werkzeug raises plain
    RequestEntityTooLarge for too many form parts and for an option field that is too long.
    """


class BodyTooSlow(RequestTimeout):
    """The request body arrives slower than BODY_MIN_RATE allows (after BODY_GRACE seconds)."""


def _deadline(seconds: float):
    """A deadline for one blocking read: a gevent timeout under gunicorn's gevent worker (where
    sockets are gevent's), nothing elsewhere (the pace is then checked between reads only)."""
    try:
        from gevent import Timeout, monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return contextlib.nullcontext()
    if not monkey.is_module_patched("socket"):
        return contextlib.nullcontext()
    return Timeout(seconds, BodyTooSlow())


class PacedStream(io.RawIOBase):
    """A body that must keep up a minimum pace: by ``grace + received / min_rate`` seconds after
    the first read, ``received`` bytes must be in, or the read raises BodyTooSlow (408).

    So a client that dribbles its body (RELIABILITY.md R10) is cut off after about ``grace`` plus
    one parser read's worth (64 KiB at ``min_rate``), whatever length it declares, while an upload
    at any real network speed never meets the limit.
    """

    CHUNK = 64 * 1024

    def __init__(self, stream: IO[bytes], grace: float, min_rate: float):
        super().__init__()
        self._stream = stream
        self._grace = grace
        self._min_rate = min_rate
        self._start: float | None = None
        self._received = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(self.CHUNK), b""))
        if self._start is None:
            self._start = time.monotonic()
        allowed = (
            self._start + self._grace + (self._received + size) / self._min_rate - time.monotonic()
        )
        if allowed <= 0:
            raise BodyTooSlow()
        with _deadline(allowed):
            data = self._stream.read(size)
        self._received += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _CappedStream(LimitedStream):
    """A body with no declared length, cut off at the maximum with BodyTooLarge."""

    def on_exhausted(self) -> None:
        if self._limit_is_max:
            raise BodyTooLarge()
        super().on_exhausted()


class InMemoryRequest(Request):
    """A Flask request whose uploads stay in memory and whose size limit is exact.

    - Uploaded files are never spooled to a temporary file: MAX_CONTENT_LENGTH bounds their size,
      and the image is held in memory to send it on anyway.
    - A body of exactly MAX_CONTENT_LENGTH bytes is accepted. Under a server that sets
      ``wsgi.input_terminated`` (gunicorn does), werkzeug 3.1 limits even a body with a
      Content-Length by MAX_CONTENT_LENGTH as a maximum, and the parser's final read at that
      position raises 413; a declared length is limited by itself instead.
    - A body over the limit raises BodyTooLarge, declared or chunked.
    - A body slower than BODY_MIN_RATE bytes/s after BODY_GRACE seconds raises BodyTooSlow.
    """

    @cached_property
    def stream(self) -> IO[bytes]:
        config = current_app.config
        return PacedStream(self._limited_stream(), config["BODY_GRACE"], config["BODY_MIN_RATE"])

    def _limited_stream(self) -> IO[bytes]:
        length = self.content_length
        limit = self.max_content_length
        if length is not None and limit is not None and length > limit:
            raise BodyTooLarge()
        if "wsgi.input_terminated" in self.environ:
            if length is not None:
                return LimitedStream(self.environ["wsgi.input"], length)
            if limit is not None:
                return _CappedStream(self.environ["wsgi.input"], limit, is_max=True)
        return get_input_stream(self.environ, max_content_length=limit)

    def _get_file_stream(
        self, total_content_length, content_type, filename=None, content_length=None
    ):
        return io.BytesIO()
