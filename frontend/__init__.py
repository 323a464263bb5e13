"""The Image Enhancer page: a Flask app in front of TorchServe.

    flask --app frontend run --debug                      # development only
    gunicorn -k gevent -b 127.0.0.1:5000 'frontend:create_app()'   # as scripts.page runs it

Settings come from ``FLASK_``-prefixed environment variables (``FLASK_TORCHSERVE_URL=...``,
``FLASK_READ_TIMEOUT=120``, ``FLASK_MAX_UPLOAD_BYTES=20000000``; values are parsed as JSON where
they can be), or from ``test_config``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from flask import Flask

from enhancer.client import TorchServeClient
from enhancer.contract import MODEL_NAME
from frontend import views
from frontend.queue import Ledger, WorkerCosts
from frontend.ratelimit import RateLimiter
from frontend.security import InMemoryRequest, check_upload_limits

REPO = Path(__file__).resolve().parent.parent
QUEUE_FILE = "page_queue.json"


def create_app(test_config: dict | None = None) -> Flask:
    """Create and configure the page's Flask app."""
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.from_mapping(
        # TorchServe, as `make run` starts it (config.properties, run folder .run/).
        TORCHSERVE_URL="http://127.0.0.1:8080",
        TORCHSERVE_MANAGEMENT_URL="http://127.0.0.1:8081",
        MODEL_NAME=MODEL_NAME,
        KEY_FILE=str(REPO / ".run" / "key_file.json"),
        # Seconds. READ_TIMEOUT stays above the model's responseTimeout (300 s in
        # handlers/model-config.yaml) so that TorchServe's own timeout answers first.
        CONNECT_TIMEOUT=3.0,
        READ_TIMEOUT=310.0,
        STATUS_TIMEOUT=5.0,
        RETRY_AFTER=10,
        # Uploads: one image of up to MAX_UPLOAD_BYTES, a few option fields, nothing else. The
        # body limit (MAX_CONTENT_LENGTH) is derived: the image plus FORM_ALLOWANCE for the
        # multipart framing, the file name and the option fields. See check_upload_limits.
        MAX_UPLOAD_BYTES=50 * 1024 * 1024,
        MAX_FORM_PARTS=16,
        MAX_FORM_MEMORY_SIZE=256 * 1024,
        # Slow clients: a body must arrive at BODY_MIN_RATE bytes/s, BODY_GRACE seconds allowed
        # on top (frontend/security.py PacedStream); slower ones get a 408 and are disconnected.
        BODY_GRACE=10.0,
        BODY_MIN_RATE=10_000,
        # Uploads per client address (frontend/ratelimit.py): RATE_LIMIT_BURST at once, then
        # RATE_LIMIT_PER_MINUTE a minute, per gunicorn worker; 0 a minute turns it off.
        RATE_LIMIT_PER_MINUTE=60,
        RATE_LIMIT_BURST=30,
        # The queue of uploads sent to TorchServe (frontend/queue.py), shared by the page's
        # processes in this file; None: page_queue.json beside KEY_FILE (one queue per
        # TorchServe). The worker's cost estimator is asked for again after COSTS_TTL seconds.
        QUEUE_FILE=None,
        COSTS_TTL=300.0,
    )
    if test_config is None:
        app.config.from_prefixed_env()
    else:
        app.config.from_mapping(test_config)
    check_upload_limits(app.config)

    _log_through_gunicorn()
    app.extensions["torchserve"] = TorchServeClient.from_config(app.config)
    app.extensions["rate_limit"] = RateLimiter(
        app.config["RATE_LIMIT_PER_MINUTE"], app.config["RATE_LIMIT_BURST"]
    )
    queue_file = app.config["QUEUE_FILE"] or Path(app.config["KEY_FILE"]).parent / QUEUE_FILE
    # a ticket lives at most two sends (the worker-death retry), each its connect and read time
    most = 2 * (float(app.config["CONNECT_TIMEOUT"]) + float(app.config["READ_TIMEOUT"])) + 10
    app.extensions["queue"] = Ledger(queue_file, max_age=most)
    app.extensions["worker_costs"] = WorkerCosts(
        app.extensions["torchserve"], ttl=float(app.config["COSTS_TTL"])
    )
    # the worker's list of models (GET /models), kept for views.MODELS_TTL seconds
    app.extensions["models"] = {"lock": threading.Lock(), "value": None, "at": 0.0}
    app.register_blueprint(views.bp)
    return app


def _log_through_gunicorn() -> None:
    # Under gunicorn, write the page's log lines (key rotations, backend failures) to its error log.
    # The TorchServe client (key rotations, backend failures) logs as "enhancer.client".
    gunicorn = logging.getLogger("gunicorn.error")
    if gunicorn.handlers:
        for name in (__name__, "enhancer"):
            ours = logging.getLogger(name)
            ours.handlers = gunicorn.handlers
            ours.setLevel(logging.INFO)
            ours.propagate = False
