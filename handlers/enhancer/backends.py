"""CPU inference backends: the card's TorchScript model, or OpenVINO's CPU runtime built from it.

TorchScript is the portable format: it is what the archive, the Triton binding and the GPU path run.
On a CPU, OpenVINO runs the same network about 1.6-2x faster here (BENCHMARKS.md) with outputs
within 1e-6 of TorchScript's, so ``backend: auto`` (the default) uses it when it is installed and
passes a parity check at load:

- the TorchScript module is converted with ``openvino.convert_model`` (dynamic batch, height and
  width), never downloaded; the result is cached as OpenVINO IR under a name made of the model's
  sha256 and the OpenVINO version, in ``<model folder>/.backend-cache`` (or, if that folder is not
  writable, ``$XDG_CACHE_HOME/image-enhancer``), so a restarted worker skips the conversion;
- seeded noise probes (two sizes for a ``dynamic`` card; the traced tile size otherwise, with
  height and width then fixed in the conversion too) must come out within 1/255 of TorchScript's
  output, or the runner stays on TorchScript;
- anything that fails (no openvino, a layer it cannot convert, a parity miss) leaves TorchScript in
  place with one log line saying why. A fixed ``backend: openvino`` that fails is an error instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from enhancer.card import ModelCard, file_sha256

logger = logging.getLogger(__name__)

# Largest difference from TorchScript's output the parity probe accepts (one 8-bit level).
PARITY_TOLERANCE = 1 / 255


class BackendError(RuntimeError):
    """A backend could not be built or did not match TorchScript's output."""


class OpenVinoModel:
    """A compiled OpenVINO model behind the same call as the TorchScript module: float32 NCHW
    tensor in, float32 NCHW tensor out (a copy: OpenVINO reuses its output buffers)."""

    name = "openvino"

    def __init__(self, compiled, version: str):
        self.compiled = compiled
        self.version = version

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        array = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        result = self.compiled(array)[0]
        return torch.from_numpy(result.copy())


def cache_folder(model_path: Path) -> Path:
    """Where converted models are kept: beside the model when that folder is writable."""
    beside = model_path.parent / ".backend-cache"
    if os.access(model_path.parent, os.W_OK):
        return beside
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "image-enhancer"


def openvino_model(
    model_path: Path,
    card: ModelCard,
    module: torch.nn.Module,
    threads: int,
    digest: str | None = None,
) -> OpenVinoModel:
    """Convert (or load the cached conversion of) the TorchScript model for OpenVINO's CPU plugin.

    Raises:
        BackendError: openvino is not installed, or conversion or compilation failed.
    """
    try:
        import openvino as ov
    except ImportError as error:
        raise BackendError("openvino is not installed") from error
    version = ov.__version__.split("-")[0]
    digest = digest or card.sha256 or file_sha256(model_path)
    folder = cache_folder(model_path)
    xml = folder / f"{digest[:32]}-openvino-{version}.xml"
    core = ov.Core()
    try:
        if xml.exists() and xml.with_suffix(".bin").exists():
            network = core.read_model(str(xml))
        else:
            h, w = probe_sizes(card)[0]
            side = -1 if card.dynamic else card.tile
            network = ov.convert_model(
                module,
                example_input=torch.rand(1, 3, h, w),
                input=[ov.PartialShape([-1, 3, side, side])],
            )
            _save_atomically(ov, network, xml)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(network, "CPU", config)
    except Exception as error:  # noqa: BLE001 - any conversion failure means: stay on TorchScript
        raise BackendError(f"OpenVINO could not convert the model: {error}") from error
    return OpenVinoModel(compiled, version)


def _save_atomically(ov, network, xml: Path) -> None:
    """Write the IR pair under temporary names, then rename, so a reader never sees half of it.
    A cache that cannot be written only costs the next start a conversion."""
    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
        tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
        ov.save_model(network, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    except OSError as error:
        logger.info("could not cache the converted model in %s: %s", xml.parent, error)


def probe_sizes(card: ModelCard) -> list[tuple[int, int]]:
    """Input sizes the parity check runs: any multiples for a dynamic model, else its tile."""
    if card.dynamic:
        return [(2 * card.multiple, 2 * card.multiple), (3 * card.multiple, 5 * card.multiple)]
    return [(card.tile, card.tile)]


def parity_error(reference: Callable, candidate: Callable, card: ModelCard) -> float:
    """Largest difference between two models' outputs on seeded noise probes."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in probe_sizes(card):
        probe = torch.rand(2, 3, h, w, generator=generator)
        with torch.inference_mode():
            want = reference(probe).clamp(0, 1)
        got = candidate(probe).clamp(0, 1)
        if got.shape != want.shape:
            return float("inf")
        worst = max(worst, float((got - want).abs().max()))
    return worst


def fast_cpu_model(
    requested: str,
    model_path: Path,
    card: ModelCard,
    module: torch.nn.Module,
    threads: int,
    digest: str | None = None,
) -> OpenVinoModel | None:
    """The faster CPU backend to use in place of ``module``, or None for TorchScript itself.

    Args:
        requested: "auto" (OpenVINO when it converts and matches, else TorchScript with a log line),
            "torchscript", or "openvino" (an error when it cannot be used).
        digest: the conversion cache's key; default: the card's sha256 (the file's hash).

    Raises:
        BackendError: ``requested`` is "openvino" and it cannot be used.
    """
    if requested == "torchscript":
        return None
    try:
        model = openvino_model(model_path, card, module, threads, digest)
        error = parity_error(module, model, card)
        if error > PARITY_TOLERANCE:
            raise BackendError(
                f"OpenVINO's output differs from TorchScript's by {error * 255:.2f}/255"
            )
    except BackendError as error:
        if requested == "openvino":
            raise
        logger.warning("CPU backend: staying on TorchScript (%s)", error)
        return None
    logger.info("CPU backend: OpenVINO %s (parity %.1e against TorchScript)", model.version, error)
    return model
