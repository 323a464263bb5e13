"""The page's routes: the page itself, the upload endpoint, its queue and the health check.

Nothing here reaches TorchServe except through ``enhancer.client``; the browser never sees
TorchServe's address, its keys, or its management and metrics ports. What a request may hold
(option names, formats, accepted images, the error body) is ``enhancer.contract``'s.
"""

from __future__ import annotations

import io
import logging
import re
import time
import uuid

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from enhancer.client import TorchServeClient, TorchServeError
from enhancer.contract import (
    ALLOWED_TEXT,
    CONTENT_TYPES,
    DENOISE_DEFAULT,
    DENOISE_LEVELS,
    FACES_DEFAULT,
    FILE_EXTENSIONS,
    FORMAT_ALIASES,
    FORMATS,
    INPUT_MEDIA_TYPES,
    LEVELS,
    METADATA_DEFAULT,
    METADATA_MODES,
    OPTION_NAMES,
    SCALE_AUTO,
    error_body,
    is_allowed_image,
    sniff_format,
)
from frontend.queue import Ledger, Refusal, WorkerCosts
from frontend.security import SECURITY_HEADERS, BodyTooLarge, cross_site

logger = logging.getLogger(__name__)

bp = Blueprint("main", __name__)

IMAGE_FIELD = "image"
# Option values are numbers or format names; the handler checks their ranges. This keeps anything
# else (header injection, long strings) from going on to TorchServe as a header.
_OPTION_VALUE = re.compile(r"[A-Za-z0-9.+-]{1,16}")
# The ``model`` option's value: a served model's name (enhancer.catalog), kept as typed.
_MODEL_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# How long the page keeps the worker's list of models (GET /models) before asking again.
MODELS_TTL = 60.0
# The browser names each upload with a ticket (this header) to ask GET /queue where it stands.
TICKET_HEADER = "X-Queue-Ticket"
_TICKET = re.compile(r"[A-Za-z0-9_-]{8,64}")
# The scales the page offers; the API takes any value from 1 to 8, or "auto".
SCALES = (SCALE_AUTO, 1, 1.5, 2, 3, 4, 6, 8)
# How the page names the contract's metadata modes in its menu.
METADATA_LABELS = {
    "keep": "Keep all (location and camera serial included)",
    "strip-location": "Remove location and camera serial",
    "strip": "Remove all (colour profile kept)",
}
# How the page names the contract's formats in its menu.
FORMAT_LABELS = {
    "auto": "Same as input",
    "png": "PNG",
    "jpeg": "JPEG",
    "webp": "WebP",
    "avif": "AVIF",
    "tiff": "TIFF",
}
# Output formats a browser cannot show (the page previews every result): the API and the batch
# command write them; the page leaves them out of its menu, and asks for PNG where ``auto`` would
# give one.
BROWSER_UNSHOWN = ("tiff",)
# JSON "type" for the page's own HTTP errors (the service's types for the rest).
_TYPES = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
}


def _client() -> TorchServeClient:
    return current_app.extensions["torchserve"]


def error_response(
    status: int,
    kind: str,
    message: str,
    retry_after: int | None = None,
    extra: dict[str, object] | None = None,
) -> Response:
    """A JSON error shaped like the service's own: ``{"code", "type", "message"}`` (plus
    ``extra`` fields, e.g. a 413's ``max_scale``)."""
    response = jsonify(error_body(status, kind, message, **(extra or {})))
    response.status_code = status
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response


@bp.before_app_request
def refuse_cross_site():
    """Refuse state-changing requests that another site's page makes a visitor's browser send."""
    if request.method not in ("GET", "HEAD", "OPTIONS") and cross_site(request):
        logger.info("refused a cross-site %s %s", request.method, request.path)
        abort(403, "Requests from other sites are not accepted.")


@bp.after_app_request
def add_security_headers(response: Response) -> Response:
    """Put the CSP, nosniff and friends on every response; keep dynamic answers out of caches."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint != "static":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    """Answer HTTP errors (404, 405, 413, ...) as JSON, without echoing anything the client sent."""
    status = error.code or 500
    if status == 413:
        message = _too_large_message(error)
    elif status == 408:
        config = current_app.config
        message = (
            f"The upload was too slow: the page needs at least "
            f"{config['BODY_MIN_RATE'] / 1000:g} KB/s after {config['BODY_GRACE']:g} s."
        )
    elif status == 404:
        message = "There is nothing at this address."
    elif status == 405:
        message = "This address does not take that method."
    else:
        message = error.description or error.name
    response = error_response(status, _TYPES.get(status, error.name.replace(" ", "")), message)
    if status == 405 and getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    if status == 408:
        response.headers["Connection"] = "close"  # the rest of a dribbled body is not awaited
    return response


def _too_large_message(error: HTTPException) -> str:
    """Name the limit that was really hit: the body's bytes, or the form's parts and fields."""
    config = current_app.config
    if isinstance(error, BodyTooLarge):
        sent = request.content_length
        size = f" ({_megabytes(sent)} sent)" if sent else ""
        return (
            f"The upload is too large{size}: one image of at most "
            f"{_megabytes(config['MAX_UPLOAD_BYTES'])} per request."
        )
    # werkzeug's own limits while parsing the form: the image is not what is too big.
    return (
        f"The form is too large: at most {config['MAX_FORM_PARTS']} parts, each option field at "
        f"most {config['MAX_FORM_MEMORY_SIZE'] // 1024} KB. Send one image and its options."
    )


@bp.app_errorhandler(Exception)
def unexpected_error(error: Exception) -> Response:
    """Log a bug with its traceback, and tell the user only that it happened."""
    logger.exception("unhandled error in %s %s", request.method, request.path)
    return error_response(500, "InternalServerError", "Something went wrong on the page's server.")


@bp.get("/")
def index():
    """Show the page."""
    limit = current_app.config["MAX_UPLOAD_BYTES"]
    page_config = {
        "enhanceUrl": url_for("main.enhance"),
        "healthUrl": url_for("main.health"),
        "queueUrl": url_for("main.queue"),
        "modelsUrl": url_for("main.models"),
        "ticketHeader": TICKET_HEADER,
        "maxBytes": limit,
        "maxText": _megabytes(limit),
        "accepted": ALLOWED_TEXT,
        "extensions": {CONTENT_TYPES[fmt]: FILE_EXTENSIONS[fmt] for fmt in CONTENT_TYPES},
        "denoiseLevels": list(DENOISE_LEVELS),
    }
    media_types = [media for media, _ in INPUT_MEDIA_TYPES.values()]
    suffixes = [suffix for _, names in INPUT_MEDIA_TYPES.values() for suffix in names]
    return render_template(
        "index.html",
        page_config=page_config,
        scales=SCALES,
        levels=LEVELS,
        metadata=[(mode, METADATA_LABELS.get(mode, mode)) for mode in METADATA_MODES],
        metadata_default=METADATA_DEFAULT,
        formats=[
            (name, FORMAT_LABELS.get(name, name.upper()))
            for name in FORMATS
            if name not in BROWSER_UNSHOWN
        ],
        accepted=ALLOWED_TEXT,
        accept=",".join(media_types + suffixes),
        max_text=_megabytes(limit),
        denoise_steps=len(DENOISE_LEVELS) - 1,
        denoise_default=DENOISE_LEVELS.index(DENOISE_DEFAULT),
        faces_default=FACES_DEFAULT,
    )


@bp.post("/enhance")
def enhance():
    """Enhance one uploaded image through TorchServe and stream the result back."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        # The size limits count the bytes that arrive; a compressed body would decompress past
        # them (RELIABILITY.md R7). Images are compressed already: nothing is lost.
        return error_response(
            415,
            "UnsupportedMediaType",
            f"Content-Encoding {encoding!r} is not accepted: send the upload uncompressed.",
        )
    # Reading the form enforces MAX_CONTENT_LENGTH (BodyTooLarge), MAX_FORM_PARTS and
    # MAX_FORM_MEMORY_SIZE (413); the image's own size is checked below.
    form, files = request.form, request.files
    # Counted once the body is in (a refusal before it would leave the browser mid-upload).
    wait = current_app.extensions["rate_limit"].acquire(request.remote_addr or "")
    if wait:
        config = current_app.config
        return error_response(
            429,
            "TooManyRequests",
            f"Too many uploads from your address: at most {config['RATE_LIMIT_BURST']} at once "
            f"and {config['RATE_LIMIT_PER_MINUTE']:g} a minute. Try again in {wait} s.",
            retry_after=wait,
        )
    unknown = [name for name in form if name not in OPTION_NAMES]
    unknown += [name for name in files if name != IMAGE_FIELD]
    if unknown:
        abort(
            400,
            f"Unknown form field: send the image as '{IMAGE_FIELD}' and options as "
            f"{', '.join(OPTION_NAMES)}.",
        )
    uploads = files.getlist(IMAGE_FIELD)
    if not uploads:
        abort(400, f"No image: send it as the form field '{IMAGE_FIELD}'.")
    if len(uploads) > 1:
        abort(400, "Send one image per request.")
    options = _options()
    data = uploads[0].read()
    if not data:
        abort(400, "The file is empty.")
    limit = current_app.config["MAX_UPLOAD_BYTES"]
    if len(data) > limit:
        return error_response(
            413,
            "PayloadTooLarge",
            f"The image is too large: {len(data):,} bytes; the limit is {limit:,} bytes "
            f"({_megabytes(limit)}) per image.",
        )
    # The name and declared type of an upload are whatever the client says; the bytes are not.
    if not is_allowed_image(data):
        return error_response(
            415,
            "UnsupportedMediaType",
            f"This file is not an image the service can read: send {ALLOWED_TEXT}.",
        )
    if options.get("format", "auto") == "auto" and sniff_format(data) == "TIFF":
        options["format"] = "png"  # auto would answer a TIFF, which no browser shows
    if FORMAT_ALIASES.get(options.get("format", ""), options.get("format")) in BROWSER_UNSHOWN:
        abort(400, "The page shows every result: ask for PNG, JPEG, WebP or AVIF.")
    # Its place in the page's queue to TorchServe, or busy at once when it would wait longer
    # than the page waits (frontend/queue.py).
    ticket = request.headers.get(TICKET_HEADER, "")
    ticket = ticket if _TICKET.fullmatch(ticket) else uuid.uuid4().hex
    estimator, workers = _costs().get()
    estimate = None
    if estimator is not None:
        size = _image_size(data)
        estimate = size and estimator.request_seconds(*size, options)
    limit = float(current_app.config["READ_TIMEOUT"])
    refusal = _ledger().admit(ticket, estimate, workers, limit)
    if refusal is not None:
        logger.info("answered busy at once: %s", refusal.message)
        return busy_response(refusal)
    try:
        result = _client().enhance(data, options)
    except TorchServeError as error:
        return error_response(
            error.status, error.kind, error.message, error.retry_after, error.extra
        )
    finally:
        _ledger().release(ticket)

    def stream():
        try:
            yield from result.chunks
        except Exception:
            # The status line is gone already: drop the connection so the browser sees a broken
            # download rather than a silently truncated image.
            logger.warning("TorchServe's answer broke off while streaming it to the browser")
            raise
        finally:
            result.close()

    headers = {"Content-Type": result.content_type, "Content-Disposition": "inline"}
    # what the service chose (X-Enhance-Scale-Used for scale=auto, X-Enhance-Model), if it is
    # shaped as a value
    for name, value in result.headers.items():
        if _OPTION_VALUE.fullmatch(value) or _MODEL_VALUE.fullmatch(value):
            headers[name] = value
    if result.content_length is not None:
        headers["Content-Length"] = str(result.content_length)
    return Response(stream(), headers=headers, direct_passthrough=True)


@bp.get("/queue")
def queue():
    """Where the uploads the page has sent to TorchServe stand: how many are in flight, the
    estimated seconds of work they hold (on the worker count), the page's limit, and, for
    ``?ticket=<id>`` (the browser's ``X-Queue-Ticket``), that upload's place, whether its turn has
    come, and its expected seconds until the answer. The ticket is null until the upload has
    arrived whole, and again once its answer is back."""
    estimator, workers = _costs().get()
    slots, ahead = _ledger().state(workers)
    wanted = request.args.get("ticket", "")
    mine = next((slot for slot in slots if slot.ticket.id == wanted), None)
    report: dict[str, object] = {
        "in_flight": len(slots),
        "workers": workers,
        "work_ahead": round(ahead, 1) if estimator is not None else None,
        "limit": float(current_app.config["READ_TIMEOUT"]),
        "ticket": None,
    }
    if mine is not None:
        report["ticket"] = {
            "place": mine.place,
            "of": len(slots),
            "running": mine.running,
            "wait": None if mine.wait is None else round(mine.wait, 1),
            "estimate": mine.ticket.estimate and round(mine.ticket.estimate, 1),
        }
    return jsonify(report)


def busy_response(refusal: Refusal) -> Response:
    """503 ServiceBusy with Retry-After for an upload that would wait longer than the page does;
    the body adds ``expected_wait`` and ``limit`` (seconds) to the message that says both."""
    return error_response(
        503,
        "ServiceBusy",
        refusal.message,
        retry_after=refusal.retry_after,
        extra={
            "expected_wait": round(refusal.wait, 1),
            "limit": refusal.limit,
            "in_flight": refusal.in_flight,
        },
    )


@bp.get("/models")
def models():
    """The models the service serves, as its worker lists them (the page's model menu): each
    one's ``name`` (what the ``model`` option says), ``version``, ``scale``, whether it is the
    ``default`` (loaded with the worker) or loaded now, and its measured ``quality`` (rows of
    track, set, scale, psnr, ssim, bicubic_psnr from its card; null when it records none); then
    ``pair`` (an upload without ``model`` gets the clean/restore pair at its Clean-up level) and
    ``max_loaded`` (how many models named by uploads a worker keeps loaded at once). Kept for
    MODELS_TTL seconds; 503 while TorchServe cannot say."""
    cache = current_app.extensions["models"]
    with cache["lock"]:
        if cache["value"] is None or time.monotonic() - cache["at"] > MODELS_TTL:
            try:
                listed = _client().describe_models()
            except TorchServeError as error:
                return error_response(error.status, error.kind, error.message, error.retry_after)
            cache["value"] = listed or {"models": [], "pair": False, "max_loaded": 0}
            cache["at"] = time.monotonic()
        return jsonify(cache["value"])


@bp.get("/health")
def health():
    """Report whether TorchServe and the model are ready (200), or what is wrong (503)."""
    ready, report = _client().health()
    return jsonify(report), 200 if ready else 503


def _ledger() -> Ledger:
    return current_app.extensions["queue"]


def _costs() -> WorkerCosts:
    return current_app.extensions["worker_costs"]


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header, as the worker reads it (before orientation), or
    None when Pillow cannot tell (the worker decides about such an image itself)."""
    from PIL import Image  # only here: the page's other routes need no imaging

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # any decoder's error: the size is unknown, nothing more
        return None


def _options() -> dict[str, str]:
    """The option fields of the upload form, checked for shape (the service checks their ranges)."""
    options = {}
    for name in OPTION_NAMES:
        values = request.form.getlist(name)
        if len(values) > 1:
            abort(400, f"Option '{name}' is given more than once.")
        value = values[0].strip() if values else ""
        if not value:
            continue
        if name == "model":  # a name, kept as typed; the service says which exist
            if not _MODEL_VALUE.fullmatch(value):
                abort(400, "Option 'model' is not a model name.")
            options[name] = value
            continue
        if not _OPTION_VALUE.fullmatch(value):
            abort(400, f"Option '{name}' is not a number or a format name.")
        options[name] = value.lower()
    return options


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.3g} MB"
