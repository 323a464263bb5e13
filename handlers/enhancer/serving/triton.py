"""The Triton door: PyTriton tensors in, the engine, tensors out (launched by scripts.triton_serve).

The model ``enhancer`` is a thin adapter over ``enhancer.engine.Enhancer``, exactly like the
TorchServe handler: it turns Triton tensors into image bytes and raw options, calls
``Enhancer.enhance_batch`` and turns each result or ``EnhanceError`` into output tensors. Decoding,
validation, limits, tiling and encoding are the engine's; the limits come from the same
``handlers/model-config.yaml`` (its ``handler:`` section).

Model ``enhancer`` (max_batch_size: the YAML's ``batchSize``; every tensor has shape [1] per row):

    inputs   image         BYTES  the encoded image (PNG, JPEG, WebP, ...), as uploaded
             options       BYTES  optional; a JSON object of option name -> value, e.g.
                                  {"scale": "4", "format": "webp"} (the TorchServe form fields)
    outputs  image         BYTES  the encoded result (empty when status is not 200)
             content_type  BYTES  e.g. b"image/png" (empty on error)
             width, height INT32  the output size (0 on error)
             status        INT32  200, or the engine's HTTP status: 400, 413, 415, 500, 503
                                  or 507
             error         BYTES  empty, or TorchServe's error body: {"code", "type", "message"}
             headers       BYTES  the response headers TorchServe would send besides
                                  Content-Type, as a JSON object: {"X-Enhance-Scale-Used": "4"}
                                  (the scale ``scale=auto`` chose), "X-Enhance-Denoise" for a
                                  clean/restore pair; {} on error

Errors travel as outputs, not as Triton errors, because of what PyTriton 0.7.0 does with an
exception from the inference callable (proxy/inference.py ``_handle_requests``, proxy/model.py
``BatchResponsesHandler``; checked live): every request of the batch gets the same error, HTTP 500
"Failed to process the request(s) ... TritonModelException: Model execute error: Traceback ...",
whatever the exception, with the server's traceback and paths inside. There is no per-request error
and no way to choose the status code. So one bad upload would fail the good requests that the
dynamic batcher put beside it, and a 415 would be indistinguishable from a crash. With outputs, each
row carries its own status and the same JSON body TorchServe sends; an unexpected fault inside the
engine is its row's 500 (``InternalError``), as under TorchServe. Only an exception that escapes
the engine itself would fail a batch, with PyTriton's 500.

Admission by cost is the TorchServe worker's (``Enhancer.admit_by_cost``, called by
scripts.triton_serve with the same model-config.yaml): the engine calibrates at start, a row
estimated over ``time_budget_share`` of ``responseTimeout`` is a 413 whose body names the estimate
and the budget and carries ``max_scale`` (the largest scale that fits), and a row that fits alone
but not after the rows batched before it is a 503 ``ServiceBusy``: the same statuses and messages
as under TorchServe.

Dynamic batching: requests arriving within ``maxBatchDelay`` ms are handed over together (up to
``batchSize``), and the engine shares their tiles' model calls, as under TorchServe; the queue holds
at most ``job_queue_size`` (config.properties) requests and rejects the rest at once, as TorchServe
does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from enhancer.engine import Enhancer
from enhancer.errors import BadRequest, EnhanceError, PayloadTooLarge

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("image", "content_type", "width", "height", "status", "error", "headers")
OPTIONS_EXAMPLE = '{"scale": "4", "format": "webp"}'


def _rows(array: np.ndarray) -> list[object]:
    """The elements of a [n, 1] (or [n]) request tensor, one per row."""
    array = np.asarray(array)
    if array.ndim == 0:
        return [array.item()]
    return list(array.reshape(array.shape[0], -1)[:, 0])


def _as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.bytes_):  # only if a client sent fixed-width strings; NULs are kept
        return bytes(value)
    raise BadRequest(f"input '{name}' must be BYTES, not {type(value).__name__}")


def parse_options(raw: bytes) -> dict[str, str]:
    """The ``options`` input of one row: a JSON object of option name -> string or number.

    The values become the strings the TorchServe adapter would receive as form fields; which names
    exist and what values are valid is the engine's business (``options.parse_options``).

    Raises:
        BadRequest: (400) not UTF-8, not JSON, not an object, or a value neither text nor number.
    """
    if not raw.strip():
        return {}
    try:
        values = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(
            f"input 'options' is not a JSON object such as {OPTIONS_EXAMPLE}"
        ) from None
    if not isinstance(values, dict):
        raise BadRequest(f"input 'options' must be a JSON object such as {OPTIONS_EXAMPLE}")
    options = {}
    for name, value in values.items():
        # bool is an int in Python; true/false is no option's value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise BadRequest(
                f"option '{name}': give a string or a number, not {json.dumps(value)[:40]}"
            )
        options[name] = value if isinstance(value, str) else str(value)
    return options


def read_request(
    request: Mapping[str, np.ndarray], max_image_bytes: int | None = None
) -> list[tuple[bytes, dict[str, str]] | EnhanceError]:
    """Image bytes and raw options for each row of one Triton request, or the error of that row.

    Args:
        request: the request's input tensors by name.
        max_image_bytes: the largest encoded image accepted (413 above it), like TorchServe's
            ``max_request_size``; Triton itself sets no limit on a request's size.
    """
    if "image" not in request:
        # Triton 2.51 lets a request with only the optional input through (checked live); answer
        # each of its rows here rather than raise, which would fail the whole batch
        rows = len(_rows(request["options"])) if "options" in request else 1
        return [BadRequest("input 'image' is missing: send the image as BYTES")] * rows
    images = _rows(request["image"])
    options = _rows(request["options"]) if "options" in request else [b""] * len(images)
    if len(options) != len(images):  # Triton checks batch sizes match; this is belt and braces
        error = BadRequest(f"input 'options' has {len(options)} rows for {len(images)} images")
        return [error] * len(images)
    rows: list[tuple[bytes, dict[str, str]] | EnhanceError] = []
    for image, raw_options in zip(images, options, strict=True):
        try:
            data = _as_bytes(image, "image")
            if max_image_bytes is not None and len(data) > max_image_bytes:
                raise PayloadTooLarge(
                    f"the image is {len(data):,} bytes; the limit is {max_image_bytes:,} bytes"
                )
            rows.append((data, parse_options(_as_bytes(raw_options, "options"))))
        except EnhanceError as error:
            rows.append(error)
    return rows


def _column(values: Sequence[object], dtype: type) -> np.ndarray:
    """A [n, 1] output tensor; BYTES as an object array so trailing NUL bytes survive."""
    column = np.empty((len(values), 1), dtype=dtype)
    for i, value in enumerate(values):
        column[i, 0] = value
    return column


def outputs_for(outcomes: Sequence[object]) -> dict[str, np.ndarray]:
    """The output tensors of one request from its rows' engine Results or EnhanceErrors."""
    images, types, widths, heights, statuses, errors, headers = [], [], [], [], [], [], []
    for outcome in outcomes:
        if isinstance(outcome, EnhanceError):
            images.append(b"")
            types.append(b"")
            widths.append(0)
            heights.append(0)
            statuses.append(outcome.status)
            errors.append(outcome.to_json())
            headers.append(b"{}")
        else:
            images.append(outcome.data)
            types.append(outcome.content_type.encode())
            widths.append(outcome.width)
            heights.append(outcome.height)
            statuses.append(200)
            errors.append(b"")
            headers.append(json.dumps(outcome.headers, sort_keys=True).encode())
    return {
        "image": _column(images, np.object_),
        "content_type": _column(types, np.object_),
        "width": _column(widths, np.int32),
        "height": _column(heights, np.int32),
        "status": _column(statuses, np.int32),
        "error": _column(errors, np.object_),
        "headers": _column(headers, np.object_),
    }


def make_infer_func(
    enhancer: Enhancer, *, max_image_bytes: int | None = None
) -> Callable[[Sequence[Mapping[str, np.ndarray]]], list[dict[str, np.ndarray]]]:
    """The PyTriton inference callable: a batch of requests in, one output dict per request out.

    Every row of every request goes through one ``Enhancer.enhance_batch`` call, so their tiles
    share model calls; each row gets its own result or error (see the module docstring for why
    errors are outputs). Only an engine bug raises.

    Args:
        enhancer: the loaded engine.
        max_image_bytes: see ``read_request``.
    """

    def infer(requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        started = time.perf_counter()
        per_request = [read_request(request, max_image_bytes) for request in requests]
        flat = [row for rows in per_request for row in rows]
        valid = [row for row in flat if not isinstance(row, EnhanceError)]
        results = iter(enhancer.enhance_batch(valid) if valid else [])
        outcomes = [row if isinstance(row, EnhanceError) else next(results) for row in flat]
        for outcome in outcomes:
            if isinstance(outcome, EnhanceError):
                logger.info("row refused: %d %s", outcome.status, outcome.message)
        responses, start = [], 0
        for rows in per_request:
            responses.append(outputs_for(outcomes[start : start + len(rows)]))
            start += len(rows)
        logger.info(
            "%d request(s), %d image(s), %d refused, in %.0f ms",
            len(requests),
            len(flat),
            sum(isinstance(outcome, EnhanceError) for outcome in outcomes),
            1000 * (time.perf_counter() - started),
        )
        return responses

    return infer


def model_tensors() -> tuple[list, list]:
    """The PyTriton input and output definitions (see the module docstring)."""
    from pytriton.model_config import Tensor

    inputs = [
        Tensor(name="image", dtype=np.bytes_, shape=(1,)),
        Tensor(name="options", dtype=np.bytes_, shape=(1,), optional=True),
    ]
    outputs = [
        Tensor(name="image", dtype=np.bytes_, shape=(1,)),
        Tensor(name="content_type", dtype=np.bytes_, shape=(1,)),
        Tensor(name="width", dtype=np.int32, shape=(1,)),
        Tensor(name="height", dtype=np.int32, shape=(1,)),
        Tensor(name="status", dtype=np.int32, shape=(1,)),
        Tensor(name="error", dtype=np.bytes_, shape=(1,)),
        Tensor(name="headers", dtype=np.bytes_, shape=(1,)),
    ]
    return inputs, outputs


def model_config(max_batch_size: int, delay_us: int, queue_size: int):
    """PyTriton ModelConfig with dynamic batching and a bounded, rejecting queue."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, TimeoutAction

    if max_batch_size < 1:
        raise ValueError(f"max batch size must be at least 1, not {max_batch_size}")
    policy = QueuePolicy(timeout_action=TimeoutAction.REJECT, max_queue_size=max(queue_size, 0))
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=max(delay_us, 0), default_queue_policy=policy
    )
    return ModelConfig(
        batching=True, max_batch_size=max_batch_size, batcher=batcher, response_cache=False
    )
