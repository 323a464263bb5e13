"""Typed engine errors, each with the HTTP status it means; adapters (TorchServe, Triton) map them.

The engine raises only these for problems with a request; anything else is a bug and propagates.
"""

from __future__ import annotations

import json

from enhancer.contract import error_body


class EnhanceError(Exception):
    """A request the engine cannot serve, with the HTTP status that says why."""

    status = 500
    kind = "InternalServerError"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.extra: dict[str, object] = {}  # more fields of the body (``max_scale``)

    def to_json(self) -> bytes:
        """The error body, shaped like TorchServe's own: ``{"code", "type", "message"}``."""
        return json.dumps(error_body(self.status, self.kind, self.message, **self.extra)).encode()


class BadRequest(EnhanceError):
    """400: unreadable image or a bad option."""

    status = 400
    kind = "BadRequest"


class OptionError(BadRequest):
    """400 naming the option that is unknown or out of range."""

    def __init__(self, option: str, message: str):
        super().__init__(f"option '{option}': {message}")
        self.option = option


class PayloadTooLarge(EnhanceError):
    """413: input or output over a pixel or byte limit; the message gives the limit."""

    status = 413
    kind = "PayloadTooLarge"


class TooMuchWork(PayloadTooLarge):
    """413: the request's estimated time is over the worker's time budget (admission.py); the
    body's ``max_scale`` is the largest scale that fits this image (null when none does)."""

    def __init__(self, message: str, max_scale: float | None):
        super().__init__(message)
        self.max_scale = max_scale
        self.extra = {"max_scale": max_scale}


class Busy(EnhanceError):
    """503: the request fits the time budget alone, but not beside the others of its batch."""

    status = 503
    kind = "ServiceBusy"


class UnsupportedMedia(EnhanceError):
    """415: a format or kind of image the service does not take (animated, TIFF, SVG, ...)."""

    status = 415
    kind = "UnsupportedMediaType"


class OutOfMemory(EnhanceError):
    """507: the device ran out of memory even after retrying with smaller batches and tiles."""

    status = 507
    kind = "InsufficientStorage"


class InternalError(EnhanceError):
    """500: a fault in the service itself, logged with its traceback; the other requests of a
    batch carry on. The message says nothing about internals."""

    status = 500
    kind = "InternalServerError"

    def __init__(
        self, message: str = "internal error while enhancing the image; see the server log"
    ):
        super().__init__(message)
