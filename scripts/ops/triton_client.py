"""The Triton example client's work: inputs, the reply, the check (``python -m
scripts.triton_client`` parses the arguments; the protocol is documented there).
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from enhancer.contract import MODEL_NAME, SCALE_USED_HEADER

OUTPUTS = ("image", "content_type", "width", "height", "status", "error", "headers")
FORMAT_BY_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


@dataclass
class Reply:
    """The answer for one image.

    Attributes:
        status: 200, or the service's HTTP-style status (400, 413, 415, 500, 507).
        data: the encoded image (empty on error).
        content_type: e.g. "image/png" (empty on error).
        width, height: the output size (0 on error).
        error: the parsed error body ``{"code", "type", "message"}``, or None.
        headers: what TorchServe sends as response headers, e.g. ``{"X-Enhance-Scale-Used":
            "4"}`` (empty on error).
    """

    status: int
    data: bytes
    content_type: str
    width: int
    height: int
    error: dict | None
    headers: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.status == 200


def client_module(protocol: str):
    """``tritonclient.http`` or ``tritonclient.grpc`` (the latter needs ``tritonclient[grpc]``)."""
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def make_inputs(module, images: list[bytes], options: list[dict] | None = None) -> list:
    """The ``image`` and ``options`` inputs for a batch of images (one row each)."""
    column = np.empty((len(images), 1), dtype=np.object_)  # object: bytes keep trailing NULs
    for i, data in enumerate(images):
        column[i, 0] = data
    image = module.InferInput("image", list(column.shape), "BYTES")
    image.set_data_from_numpy(column)
    inputs = [image]
    if options is not None:
        rows = np.empty((len(images), 1), dtype=np.object_)
        for i, values in enumerate(options):
            rows[i, 0] = json.dumps(values).encode()
        option_input = module.InferInput("options", list(rows.shape), "BYTES")
        option_input.set_data_from_numpy(rows)
        inputs.append(option_input)
    return inputs


def parse_reply(result, row: int = 0) -> Reply:
    """The Reply of one row of an InferResult."""

    def cell(name: str):
        return result.as_numpy(name)[row, 0]

    error = bytes(cell("error"))
    return Reply(
        status=int(cell("status")),
        data=bytes(cell("image")),
        content_type=bytes(cell("content_type")).decode(),
        width=int(cell("width")),
        height=int(cell("height")),
        error=json.loads(error) if error else None,
        headers=json.loads(bytes(cell("headers")) or b"{}"),
    )


def enhance(
    client,
    images: list[bytes],
    options: list[dict] | None = None,
    *,
    protocol: str = "http",
    model_name: str = MODEL_NAME,
    timeout: float = 300.0,
) -> list[Reply]:
    """Send images (one request, one row each) and return one Reply per image.

    Args:
        client: a ``tritonclient.http`` or ``.grpc`` InferenceServerClient.
        images: encoded images.
        options: per image, option name -> value (e.g. ``{"scale": "4"}``); None sends none.
        protocol: "http" or "grpc", matching ``client``.
        model_name: the Triton model.
        timeout: seconds for the whole request (gRPC; HTTP uses the client's network_timeout).

    Raises:
        tritonclient.utils.InferenceServerException: Triton refused or failed the request itself
            (unreachable, queue full, a server-side bug).
    """
    module = client_module(protocol)
    outputs = [module.InferRequestedOutput(name) for name in OUTPUTS]
    inputs = make_inputs(module, images, options)
    kwargs = {"client_timeout": timeout} if protocol == "grpc" else {}
    result = client.infer(model_name, inputs, outputs=outputs, **kwargs)
    return [parse_reply(result, row) for row in range(len(images))]


def expected_size(data: bytes, scale: float) -> tuple[int, int]:
    """round(scale x size) of an image after its EXIF orientation, as the service promises."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        width, height = ImageOps.exif_transpose(image).size
    return max(1, round(scale * width)), max(1, round(scale * height))


def check(reply: Reply, data: bytes, scale: float) -> tuple[bool, str]:
    """Whether a reply is right for ``data`` at ``scale``, and the line that says so."""
    from PIL import Image

    if not reply.ok:
        message = reply.error.get("message") if reply.error else ""
        return False, f"status {reply.status}: {message}"
    want = expected_size(data, scale)
    with Image.open(io.BytesIO(reply.data)) as image:
        got = image.size
        mime = Image.MIME.get(image.format or "", "")
    ok = got == want == (reply.width, reply.height) and mime == reply.content_type
    return ok, (
        f"{got[0]}x{got[1]} {mime} (declared {reply.width}x{reply.height} {reply.content_type}, "
        f"expected {want[0]}x{want[1]})"
    )


def run(
    image: Path,
    output: Path | None,
    options: dict[str, str],
    *,
    url: str | None = None,
    protocol: str = "http",
    model_name: str = MODEL_NAME,
    timeout: float = 300.0,
    check_reply: bool = False,
) -> int:
    """What ``python -m scripts.triton_client`` does: send ``image``, write or check the answer.

    Returns:
        The exit status: 0, or 1 when Triton or the service refused, or the check failed.
    """
    from tritonclient.utils import InferenceServerException

    data = Path(image).read_bytes()
    options = dict(options)
    suffix = output.suffix.lower() if output else ""
    if "format" not in options and suffix in FORMAT_BY_SUFFIX:
        options["format"] = FORMAT_BY_SUFFIX[suffix]
    module = client_module(protocol)
    url = url or ("127.0.0.1:8001" if protocol == "grpc" else "127.0.0.1:8000")
    if protocol == "grpc":
        client = module.InferenceServerClient(url)
    else:
        client = module.InferenceServerClient(url, connection_timeout=10, network_timeout=timeout)
    try:
        (reply,) = enhance(
            client,
            [data],
            [options],
            protocol=protocol,
            model_name=model_name,
            timeout=timeout,
        )
    except InferenceServerException as error:
        print(
            f"{'FAIL: ' + model_name if check_reply else 'error'}: Triton at {url}: "
            f"{error.message()} (status {error.status()})",
            file=sys.stderr,
        )
        return 1
    except OSError as error:  # connection refused or reset: no server at that address
        print(
            f"{'FAIL: ' + model_name if check_reply else 'error'}: Triton at {url}: {error}",
            file=sys.stderr,
        )
        return 1
    finally:
        client.close()

    if not reply.ok:
        kind = reply.error.get("type", "") if reply.error else ""
        message = reply.error.get("message", "") if reply.error else ""
        print(
            f"{'FAIL: ' + model_name if check_reply else 'error'}: {reply.status} {kind}: "
            f"{message}",
            file=sys.stderr,
        )
        return 1
    if output:
        output.write_bytes(reply.data)
        print(
            f"wrote {output} ({reply.width}x{reply.height} {reply.content_type}, "
            f"{len(reply.data):,} bytes)"
        )
    if check_reply:
        ok, line = check(reply, data, float(reply.headers.get(SCALE_USED_HEADER, 2)))
        print(f"{'PASS' if ok else 'FAIL'}: {model_name} {line}")
        return 0 if ok else 1
    return 0
