"""The TorchServe door: what TorchServe hands the handler, turned into what the engine takes.

TorchServe gives the handler, per request, either the raw body (under "body") or the multipart
fields by name, plus the request headers; options come as fields or, for a raw body, as headers with
the contract's prefix. It also says which GPU (if any) the worker owns. Nothing here imports ``ts``:
``handlers/enhancer_handler.py`` is the one TorchServe class, and it delegates to these functions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import enhancer
from enhancer.catalog import find_models
from enhancer.contract import (
    FACE_FILE,
    OPTION_HEADER_PREFIX,
    OPTION_NAMES,
    RESTORE_FILE,
    header_option,
)
from enhancer.engine import Enhancer, configure_cpu_threads, native_beside
from enhancer.errors import BadRequest, OptionError
from enhancer.settings import EnhancerSettings

logger = logging.getLogger(__name__)

# Field names that carry the image: "data" for multipart (DESIGN 4), "body" for a raw body.
IMAGE_FIELDS = ("data", "body")


def choose_device(system_properties: Mapping[str, Any]) -> torch.device:
    """The worker's device: ``cuda:<gpu_id>`` when TorchServe assigned a GPU and one is visible."""
    gpu_id = system_properties.get("gpu_id")
    if torch.cuda.is_available() and gpu_id is not None:
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")


def load_engine(context: Any) -> tuple[Enhancer, EnhancerSettings, torch.device]:
    """Load the engine from TorchServe's context: the model and card from the unpacked archive,
    the settings from model-config.yaml's ``handler:`` section, the device TorchServe assigned;
    then calibrate it and admit requests by cost within a share of ``responseTimeout``.

    Raises:
        ValueError: invalid settings or card, or a model file that does not match its card's
            sha256 (a tampered archive): the worker refuses to start.
    """
    properties = context.system_properties
    model_dir = Path(properties["model_dir"])
    device = choose_device(properties)
    settings = EnhancerSettings.from_model_config(context.model_yaml_config)
    if device.type == "cpu":
        threads = configure_cpu_threads(settings)
        logger.info("CPU inference with %d threads", threads)
    # Which copy of the package serves: the archive's own (shipped with --extra-files), never an
    # installed one. tests/test_torchserve_e2e.py reads this line.
    logger.info("engine package: %s", Path(enhancer.__file__).parent)
    model_path = model_dir / context.manifest["model"]["serializedFile"]
    # A restore model shipped beside the archive's model makes a clean/restore family: the
    # ``denoise`` option moves between them (family.py; scripts.archive --restore).
    restore = model_dir / RESTORE_FILE
    restore = restore if restore.exists() and restore != model_path else None
    # A face model shipped beside it enables ``faces=auto`` (faces.py; scripts.archive --face);
    # the detector's weights are read from the installed facenet-pytorch wheel (same venv).
    face = model_dir / FACE_FILE
    # Every other model the archive holds (under models/, scripts.archive) is served by name: the
    # ``model`` option (catalog.py), loaded when first asked for.
    extras = find_models(model_dir, skip=[model_path, *([restore] if restore else [])])
    # A native 4x model shipped beside it (enhancer4.pt) makes the last pass of scales of 4 and
    # more (passes.py; the setting native_4x turns it off).
    engine = Enhancer.load(
        model_path,
        device=device,
        settings=settings,
        restore_path=restore,
        face_path=face if face.exists() else None,
        extra_models=extras,
        native_path=native_beside(model_path),
    )
    engine.admit_by_cost(context.model_yaml_config)
    return engine, settings, device


def describe(engine: Enhancer) -> str:
    """What the worker says of itself to ``GET /models/enhancer?customized=true`` (TorchServe's
    management API hands it on as the version's ``customizedMetadata``): its cost estimator
    (``enhancer.admission.Estimator.to_json``: calibrated throughput, card, tile, budget, limits),
    or null when it does not admit by cost, with which the page prices the uploads it holds; and
    the served models (``Enhancer.models``: ``models``, ``pair``, ``max_loaded``), the page's
    model menu."""
    estimator = engine.estimator().to_json() if engine.throughput is not None else None
    return json.dumps({"estimator": estimator, **engine.models()})


def split_request(
    fields: Mapping[str, object], headers: Mapping[str, object] | None
) -> tuple[bytes, dict[str, object]]:
    """Separate the image from the options of one TorchServe-style request.

    Args:
        fields: what TorchServe hands the handler for one request: the raw body under "body", or
            multipart fields by name (the image under "data").
        headers: request headers (name -> value); those starting with the contract's
            OPTION_HEADER_PREFIX (any case) are options for a raw body. Other headers are ignored.

    Returns:
        The image bytes and the raw option values.

    Raises:
        BadRequest: no image, two images, or an option given twice.
        OptionError: an unknown field or option header.
    """
    images = [name for name in IMAGE_FIELDS if name in fields]
    if not images:
        unknown = [name for name in fields if name not in OPTION_NAMES]
        hint = f" (got field '{unknown[0]}')" if unknown else ""
        raise BadRequest(
            f"no image: send it as the request body or as the multipart field 'data'{hint}"
        )
    if len(images) > 1:
        raise BadRequest("send one image: both a body and a 'data' field were given")
    data = fields[images[0]]
    if not isinstance(data, (bytes, bytearray)):
        # TorchServe decodes a text/* or application/json body before the handler sees it
        kind = "text" if isinstance(data, str) else "JSON"
        raise BadRequest(
            f"the image arrived as {kind}, not bytes: send it as binary "
            "(curl -T file or -F data=@file, with no text or JSON Content-Type)"
        )
    if len(data) == 0:
        raise BadRequest("empty image: the request body has no bytes")

    known = ", ".join(OPTION_NAMES)
    options: dict[str, object] = {}
    for name, value in fields.items():
        if name in IMAGE_FIELDS:
            continue
        if name not in OPTION_NAMES:
            raise OptionError(name, f"unknown field (send the image as 'data'; options: {known})")
        options[name] = value
    prefix = OPTION_HEADER_PREFIX
    low_prefix = prefix.lower()
    for key, value in (headers or {}).items():
        # TorchServe also lists each multipart field's own headers here, as dicts: not options
        if not isinstance(key, str) or not isinstance(value, str):
            continue
        if not key.lower().startswith(low_prefix):
            continue
        name = header_option(key[len(prefix) :])
        if name not in OPTION_NAMES:
            header = f"{prefix}{key[len(prefix) :]}"
            raise OptionError(header, f"unknown option header (known: {known})")
        if name in options:
            raise BadRequest(f"option '{name}' given twice (as a field and as a header)")
        options[name] = value
    return bytes(data), options
