"""Service settings: limits and knobs, read once from model-config.yaml's ``handler:`` section."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from enhancer.contract import DENOISE_DEFAULT

PRECISIONS = ("auto", "float32", "float16", "bfloat16")
BACKENDS = ("auto", "torchscript", "openvino")  # float32 on a CPU: backends.py


@dataclasses.dataclass(frozen=True)
class EnhancerSettings:
    """Limits and knobs of the engine. Defaults suit a CPU box; model-config.yaml overrides them.

    Attributes:
        max_input_pixels: largest input (width x height) accepted, checked from the header before
            decoding. Default: 16,777,216 (4096 x 4096; a 12 MP phone photo fits).
        max_output_pixels: largest output accepted, checked before any work. Default: 67,108,864
            (8192 x 8192).
        max_output_bytes: largest encoded response; above it the request is a 413, so TorchServe's
            ``max_response_size`` (which kills the worker when exceeded) is never reached.
        max_scale: the largest ``scale`` option. Default: 8.
        max_tile: the largest ``tile`` option, for models whose card says ``dynamic``.
        tile_batch_cpu, tile_batch_gpu: tiles per model call.
        precision: "auto" (float32 on CPU; on GPU bfloat16 or float16 when the card lists it,
            guarded by a float32 rerun on NaN or black output), or a fixed dtype.
        cpu_threads: torch intra-op threads on CPU; 0 means all cores.
        backend: how float32 runs on a CPU: "auto" (OpenVINO when installed and it matches
            TorchScript's output at load, else TorchScript with a log line), "torchscript", or
            "openvino" (refuses to start when it cannot be used). See backends.py.
        openvino_tile: the default tile for a dynamic model on OpenVINO (0: the card's tile). The
            largest, 1024: the planner then runs a 1 MP pass in two windows (1.10 model pixels per
            output pixel at the shipped overlap of 17, against 1.20 at 512 and 1.37 at 256), and
            OpenVINO's speed per model pixel was flat from 512 up (BENCHMARKS.md).
        denoise: the ``denoise`` level of a request that does not set one, when a clean/restore
            family is served (snapped to the nearest precomputed level, family.py).
        jpeg_quality, webp_quality, avif_quality: defaults of the ``quality`` option.
        png_compress_level: zlib level for PNG output (0-9); 3: far faster than 6, nearly as small.
        native_4x: use the native 4x model (``enhancer4.pt`` beside the model, passes.py) for scales
            of 4 and more when it is loaded; false runs 2x passes only (to compare the two).
        time_budget_share: the share of the server's timeout (TorchServe's ``responseTimeout``)
            a request, or a batch of requests, may be estimated to take; above it a request is
            refused with 413 before any work (admission.py). 0 turns admission by cost off.
        max_loaded_models: how many models named by the ``model`` option (catalog.py) a worker
            keeps loaded besides its default model (or pair) and the face model; the least
            recently used is unloaded to load another. At least 1.
    """

    max_input_pixels: int = 4096 * 4096
    max_output_pixels: int = 8192 * 8192
    max_output_bytes: int = 200 * 1024 * 1024
    max_scale: float = 8.0
    max_tile: int = 1024
    tile_batch_cpu: int = 2
    tile_batch_gpu: int = 8
    precision: str = "auto"
    cpu_threads: int = 0
    backend: str = "auto"
    openvino_tile: int = 1024
    denoise: float = DENOISE_DEFAULT
    jpeg_quality: int = 92
    webp_quality: int = 90
    avif_quality: int = 85
    png_compress_level: int = 3
    time_budget_share: float = 0.5
    max_loaded_models: int = 2
    native_4x: bool = True

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> EnhancerSettings:
        """Build settings from a mapping such as ``context.model_yaml_config["handler"]``.

        Raises:
            ValueError: naming an unknown key or a value of the wrong type or range.
        """
        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in fields:
                raise ValueError(
                    f"settings: unknown key '{key}' (known: {', '.join(sorted(fields))})"
                )
            default = fields[key].default
            if isinstance(default, bool) != isinstance(value, bool) or not isinstance(
                value, type(default)
            ):
                if (
                    isinstance(default, float)
                    and isinstance(value, int)
                    and not isinstance(value, bool)
                ):
                    value = float(value)
                else:
                    raise ValueError(
                        f"settings: '{key}' must be {type(default).__name__}, not {value!r}"
                    )
            kwargs[key] = value
        settings = cls(**kwargs)
        settings._check()
        return settings

    @classmethod
    def from_model_config(cls, model_yaml_config: Mapping[str, Any] | None) -> EnhancerSettings:
        """Settings from TorchServe's parsed model-config.yaml (its ``handler`` section)."""
        return cls.from_mapping((model_yaml_config or {}).get("handler"))

    def _check(self) -> None:
        positive = (
            "max_input_pixels",
            "max_output_pixels",
            "max_output_bytes",
            "max_tile",
            "tile_batch_cpu",
            "tile_batch_gpu",
            "max_loaded_models",
        )
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"settings: '{key}' must be at least 1")
        if not 1.0 <= self.max_scale <= 16.0:
            raise ValueError("settings: 'max_scale' must be in [1, 16]")
        if self.precision not in PRECISIONS:
            raise ValueError(f"settings: 'precision' must be one of {PRECISIONS}")
        if self.openvino_tile and not 16 <= self.openvino_tile <= self.max_tile:
            raise ValueError("settings: 'openvino_tile' must be 0 or from 16 to max_tile")
        if not 0.0 <= self.denoise <= 1.0:
            raise ValueError("settings: 'denoise' must be in [0, 1]")
        if self.backend not in BACKENDS:
            raise ValueError(f"settings: 'backend' must be one of {BACKENDS}")
        if self.cpu_threads < 0:
            raise ValueError("settings: 'cpu_threads' must be 0 (all cores) or more")
        for key in ("jpeg_quality", "webp_quality", "avif_quality"):
            if not 1 <= getattr(self, key) <= 100:
                raise ValueError(f"settings: '{key}' must be in [1, 100]")
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError("settings: 'png_compress_level' must be in [0, 9]")
        if not 0.0 <= self.time_budget_share <= 1.0:
            raise ValueError("settings: 'time_budget_share' must be in [0, 1]")
