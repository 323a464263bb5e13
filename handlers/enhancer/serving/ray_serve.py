"""The Ray Serve door: TorchServe's HTTP API on Ray Serve replicas (launched by scripts.ray_serve).

A client sees what TorchServe answers: ``POST`` (or ``PUT``, ``curl -T``) to
``/predictions/enhancer`` with the raw image as the body and options as ``X-Enhance-*`` headers,
or multipart with the image in ``data`` and options as fields; the encoded image with its
Content-Type and ``X-Enhance-*`` response headers, or TorchServe's JSON error body
(``{"code", "type", "message"}``) with the same status (400, 413, 415, 500, 503, 507). Unlike
TorchServe, options may also come in the query string (``?scale=4&format=webp``): Ray hands it
over, TorchServe does not. ``GET /ping`` answers ``{"status": "Healthy"}`` as TorchServe's does.
There is no token: Ray Serve binds 127.0.0.1 unless told otherwise (README "Ray Serve").

Splitting a request into image and options is the TorchServe door's ``split_request`` (the query
string joins the fields); decoding, validation, limits, admission by cost, tiling and encoding
are the engine's (``Enhancer.enhance_batch``), so the three doors answer alike.

Batching: ``@serve.batch`` gathers up to ``max_batch_size`` requests that reach a replica within
``batch_wait_timeout_s`` (model-config.yaml's ``batchSize`` and ``maxBatchDelay``, as under
TorchServe and Triton) into one ``enhance_batch`` call, whose tiles share model calls and whose
rows each get their own result or error. The batch runs in a thread, so the replica's event loop
keeps reading the next requests meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from enhancer.contract import MODEL_NAME, OPTION_NAMES, error_body
from enhancer.engine import Enhancer, Result, configure_cpu_threads
from enhancer.errors import BadRequest, EnhanceError, InternalError, OptionError, PayloadTooLarge
from enhancer.serving.torchserve import split_request
from enhancer.settings import EnhancerSettings

logger = logging.getLogger(__name__)

PREDICTIONS_PATH = f"/predictions/{MODEL_NAME}"
PING_PATH = "/ping"


def json_response(status: int, body: Mapping[str, object]) -> Response:
    return Response(json.dumps(body).encode(), status_code=status, media_type="application/json")


def response_for(outcome: Result | EnhanceError) -> Response:
    """The HTTP answer TorchServe's handler gives for an engine Result or EnhanceError."""
    if isinstance(outcome, EnhanceError):
        body, status = outcome.to_json(), outcome.status
        return Response(body, status_code=status, media_type="application/json")
    return Response(outcome.data, media_type=outcome.content_type, headers=outcome.headers)


async def _form_fields(request: Request) -> dict[str, object]:
    """Multipart fields by name, as TorchServe hands them over: files as bytes, text as str."""
    from starlette.datastructures import UploadFile

    try:
        form = await request.form()
    except Exception as error:  # noqa: BLE001 - starlette raises HTTPException or MultiPartException
        detail = getattr(error, "detail", None) or getattr(error, "message", None) or error
        raise BadRequest(f"unreadable multipart body: {detail}") from None
    fields: dict[str, object] = {}
    try:
        for name, value in form.multi_items():
            if name in fields:
                raise BadRequest(f"field '{name}' given twice")
            fields[name] = await value.read() if isinstance(value, UploadFile) else value
    finally:
        await form.close()
    return fields


async def read_request(request: Request, max_request_bytes: int) -> tuple[bytes, dict[str, object]]:
    """Image bytes and raw options of one HTTP request, as TorchServe's handler would get them.

    Args:
        request: the request the Ray proxy handed to the replica.
        max_request_bytes: the largest request body accepted, config.properties'
            ``max_request_size`` (TorchServe answers 413 above it too).

    Raises:
        PayloadTooLarge: (413) a body over ``max_request_bytes``.
        BadRequest, OptionError: (400) as ``split_request``; an unknown query parameter, or an
            option given both in the query string and as a field or header.
    """
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else None
    if size is None or size <= max_request_bytes:
        body = await request.body()
        size = len(body)
    if size > max_request_bytes:
        raise PayloadTooLarge(
            f"the request is {size:,} bytes; the limit is {max_request_bytes:,} bytes"
        )
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields = await _form_fields(request) if media_type == "multipart/form-data" else {"body": body}
    known = ", ".join(OPTION_NAMES)
    for name, value in request.query_params.multi_items():
        if name not in OPTION_NAMES:
            raise OptionError(name, f"unknown query parameter (options: {known})")
        if name in fields:
            raise BadRequest(f"option '{name}' given twice (in the query string too)")
        fields[name] = value
    image, options = split_request(fields, dict(request.headers))
    return image, options


def _log_through_serve() -> None:
    """The engine's INFO lines through the replica's Serve logger: Ray shows them in the driver's
    output (``scripts.ray_serve``'s console) and keeps them in the session's logs/serve/ folder.
    (Serve sends a replica's stderr there too, so a handler of our own would print nothing.)"""
    serve_logger = logging.getLogger("ray.serve")
    package = logging.getLogger("enhancer")
    for handler in serve_logger.handlers:
        if handler not in package.handlers:
            package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False


@dataclasses.dataclass(frozen=True)
class ReplicaConfig:
    """What each replica needs to load the engine; made by scripts.ops.ray, sent to each replica.

    Attributes:
        model: the TorchScript model (absolute path; its card beside it).
        restore: the restore model of a clean/restore pair, or None.
        face: the face model (``faces=auto``), or None.
        model_config: the parsed handlers/model-config.yaml (its ``handler:`` section: limits;
            ``responseTimeout`` and ``time_budget_share``: admission by cost).
        device: "cpu", "cuda" or "cuda:N".
        cpu_threads: torch threads of one replica on CPU (its share of the cluster's CPUs).
        max_request_bytes: the largest request body, 413 above.
        max_batch_size: requests per engine call.
        batch_wait_s: how long the first request of a batch waits for others.
    """

    model: str
    restore: str | None
    face: str | None
    model_config: dict[str, Any]
    device: str = "cpu"
    cpu_threads: int = 1
    max_request_bytes: int = 6553500
    max_batch_size: int = 4
    batch_wait_s: float = 0.01


class EnhancerDeployment:
    """One replica: the engine loaded once, TorchServe's HTTP API, batched engine calls.

    ``scripts.ops.ray.build_app`` makes it a Ray Serve deployment (replicas, CPUs, queue limits).
    """

    def __init__(self, config: ReplicaConfig):
        _log_through_serve()
        settings = EnhancerSettings.from_model_config(config.model_config)
        if config.device == "cpu":
            # its share of the cluster's cores, not all of the machine's (configure_cpu_threads'
            # default), so replicas side by side do not oversubscribe them
            if not settings.cpu_threads:
                settings = dataclasses.replace(settings, cpu_threads=max(config.cpu_threads, 1))
            logger.info("CPU inference with %d threads", configure_cpu_threads(settings))
        self.engine = Enhancer.load(
            Path(config.model),
            device=config.device,
            settings=settings,
            restore_path=Path(config.restore) if config.restore else None,
            face_path=Path(config.face) if config.face else None,
        )
        # admission by cost, as under TorchServe: calibrated here, per replica
        self.engine.admit_by_cost(config.model_config)
        self.max_request_bytes = config.max_request_bytes
        self.max_batch_size = config.max_batch_size
        self.batch_wait_s = config.batch_wait_s
        self.enhance_rows.set_max_batch_size(config.max_batch_size)
        self.enhance_rows.set_batch_wait_timeout_s(config.batch_wait_s)
        # rows handed over by @serve.batch, waiting for the engine (see enhance_rows)
        self.waiting: collections.deque[tuple[tuple[bytes, dict], asyncio.Future]] = (
            collections.deque()
        )
        self.engine_task: asyncio.Task | None = None
        logger.info(
            "replica ready: %s on %s, batches of up to %d within %g ms",
            Path(config.model).name,
            config.device,
            config.max_batch_size,
            config.batch_wait_s * 1000,
        )

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        if path == PING_PATH:
            return json_response(200, {"status": "Healthy"})
        if path != PREDICTIONS_PATH:
            name = path.removeprefix("/predictions/")
            if name != path and "/" not in name:
                message = f"Model not found: {name}"
                return json_response(404, error_body(404, "ModelNotFoundException", message))
            return json_response(
                404, error_body(404, "ResourceNotFoundException", "Requested resource is not found")
            )
        if request.method not in ("POST", "PUT"):
            message = f"use POST or PUT to {PREDICTIONS_PATH}, not {request.method}"
            return json_response(405, error_body(405, "MethodNotAllowedException", message))
        try:
            image, options = await read_request(request, self.max_request_bytes)
        except EnhanceError as error:
            logger.info("request refused: %d %s", error.status, error.message)
            return response_for(error)
        try:
            outcome = await self.enhance_rows((image, options))
        except Exception:  # noqa: BLE001 - an engine bug fails this request, not the replica
            logger.exception("enhancing a batch failed")
            outcome = InternalError()
        if isinstance(outcome, EnhanceError):
            logger.info("request refused: %d %s", outcome.status, outcome.message)
        return response_for(outcome)

    # Two batches may be handed over at once: Ray forms the next batch as soon as the previous one
    # is handed over (from what arrived within batch_wait_timeout_s), not when the engine is free.
    # With one, a batch's late arrivals would each wait for a model run of their own.
    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01, max_concurrent_batches=2)
    async def enhance_rows(
        self, rows: list[tuple[bytes, dict[str, object]]]
    ) -> list[Result | EnhanceError]:
        """The answers to a batch of requests that ``@serve.batch`` gathered (sizes set in
        ``__init__``).

        The rows join one queue in front of the engine, which takes everything waiting there (up
        to ``max_batch_size`` rows) each time it is free: TorchServe's batching, where a worker
        takes the queued requests when it finishes a batch, whereas Ray's batches are formed while
        the engine is still busy and would otherwise run one after the other.
        """
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in rows]
        self.waiting.extend(zip(rows, futures, strict=True))
        if self.engine_task is None or self.engine_task.done():
            self.engine_task = asyncio.create_task(self._run_engine())
        return list(await asyncio.gather(*futures))

    async def _run_engine(self) -> None:
        """Run the waiting rows through the engine, up to ``max_batch_size`` per call, until none
        are left. The engine runs in a thread, so this replica keeps reading requests meanwhile."""
        while self.waiting:
            taken = []
            while self.waiting and len(taken) < self.max_batch_size:
                row, future = self.waiting.popleft()
                if not future.done():  # done: its client went away (cancelled); skip the work
                    taken.append((row, future))
            if not taken:
                break
            rows = [row for row, _ in taken]
            started = time.perf_counter()
            try:
                outcomes = await asyncio.to_thread(self.engine.enhance_batch, rows)
            except Exception:  # noqa: BLE001 - an engine bug fails these requests, not the replica
                logger.exception("enhancing %d request(s) failed", len(rows))
                outcomes = [InternalError() for _ in rows]
            elapsed_ms = 1000 * (time.perf_counter() - started)
            logger.info("%d request(s) in one engine call, %.0f ms", len(rows), elapsed_ms)
            for (_, future), outcome in zip(taken, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
            # let the batch that waited for Ray's batch slot join before the next engine call
            await asyncio.sleep(self.batch_wait_s)
