"""What every server of the engine reads as TorchServe does: handlers/model-config.yaml (batching,
limits, timeouts) and config.properties (queue and request size), so that Triton
(``scripts.ops.triton``) and Ray Serve (``scripts.ops.ray``) refuse and batch as TorchServe does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from scripts.ops.paths import CONFIG as TORCHSERVE_CONFIG
from scripts.ops.paths import MODEL_CONFIG
from scripts.ops.properties import read_properties


def load_model_config(path: Path = MODEL_CONFIG) -> dict[str, Any]:
    """The parsed handlers/model-config.yaml (TorchServe's per-model config)."""
    return yaml.safe_load(Path(path).read_text()) or {}


def serving_defaults(
    model_config: Mapping[str, Any], properties_path: Path = TORCHSERVE_CONFIG
) -> dict[str, int]:
    """Settings that match TorchServe's: batching, queue and request size.

    Returns:
        ``max_batch_size`` (model-config.yaml ``batchSize``), ``delay_us`` (``maxBatchDelay`` ms,
        in microseconds), ``queue_size`` (config.properties ``job_queue_size``; 0, "unbounded",
        if unset) and ``max_image_bytes`` (``max_request_size``; TorchServe's default 6553500 if
        unset).
    """
    properties = read_properties(properties_path) if Path(properties_path).exists() else {}
    return {
        "max_batch_size": int(model_config.get("batchSize", 1)),
        "delay_us": int(float(model_config.get("maxBatchDelay", 0)) * 1000),
        "queue_size": int(properties.get("job_queue_size", 0)),
        "max_image_bytes": int(properties.get("max_request_size", 6553500)),
    }


def resolve_device(name: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; anything else as given."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
