"""What makes the page safe to put on a network: content sniffing, headers, origin checks.

- Uploads are identified by their first bytes (``enhancer.contract.sniff_format``), never by their
  name or declared type.
- Every response carries a strict Content-Security-Policy (no inline script, no plugins, no framing)
  and ``X-Content-Type-Options: nosniff``.
- Cross-site POSTs are refused: the page has no cookies to steal, but a foreign site could still
  make its visitors' browsers burn the server's compute.
"""

from __future__ import annotations

import io
from typing import IO
from urllib.parse import urlsplit

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
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


class InMemoryRequest(Request):
    """A Flask request whose uploads stay in memory and whose size limit is exact.

    - Uploaded files are never spooled to a temporary file: MAX_CONTENT_LENGTH bounds their size,
      and the image is held in memory to send it on anyway.
    - A body of exactly MAX_CONTENT_LENGTH bytes is accepted. Under a server that sets
      ``wsgi.input_terminated`` (gunicorn does), werkzeug 3.1 limits even a body with a
      Content-Length by MAX_CONTENT_LENGTH as a maximum, and the parser's final read at that
      position raises 413; a declared length is limited by itself instead.
    """

    @cached_property
    def stream(self) -> IO[bytes]:
        length = self.content_length
        limit = self.max_content_length
        if length is not None and limit is not None and "wsgi.input_terminated" in self.environ:
            if length > limit:
                raise RequestEntityTooLarge()
            return LimitedStream(self.environ["wsgi.input"], length)
        return get_input_stream(self.environ, max_content_length=limit)

    def _get_file_stream(
        self, total_content_length, content_type, filename=None, content_length=None
    ):
        return io.BytesIO()
