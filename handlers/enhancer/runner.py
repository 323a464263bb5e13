"""The model runner: a TorchScript model on CPU or GPU, with precision and memory guards.

- On GPU it runs in half precision (bfloat16 or float16, as the card allows) with channels_last.
  Each batch adds to an on-device flag when its output has NaN/inf or is black where the input is
  not; the engine reads the flag once per pass (no host sync per tile) and reruns the pass in
  float32 when it is set.
- On CPU the float32 model may run through a faster backend converted from the TorchScript file
  (backends.py: OpenVINO, checked against TorchScript at load); TorchScript stays the fallback.
- Out of memory: a batch is split in halves and retried down to one tile; past that the caller
  (the engine) retries the pass with smaller tiles when the model allows, and otherwise reports
  OutOfMemory (507). The input is never returned in place of a result.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from enhancer.backends import fast_cpu_model
from enhancer.card import ModelCard
from enhancer.errors import OutOfMemory

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TileOutOfMemory(Exception):
    """A single tile did not fit in memory; the caller may retry with smaller tiles."""


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA/CPU allocation failures, which are worth a retry with less work at once."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text
        or "can't allocate memory" in text
        or "CUBLAS_STATUS_ALLOC_FAILED" in text
        or "bad_alloc" in text  # OpenVINO's CPU plugin
    )


def pick_precision(requested: str, card: ModelCard, device: torch.device) -> torch.dtype:
    """The compute dtype: fixed by ``requested``, or for "auto" float32 on CPU and half on GPU.

    Raises:
        ValueError: a fixed precision the card does not list.
    """
    if requested != "auto":
        if requested not in card.dtypes:
            raise ValueError(
                f"precision {requested} is not among the model card's dtypes {card.dtypes}"
            )
        return _DTYPES[requested]
    if device.type != "cuda":
        return torch.float32
    if "bfloat16" in card.dtypes and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if "float16" in card.dtypes:
        return torch.float16
    return torch.float32


class ModelRunner:
    """Calls a TorchScript model on batches of tiles.

    Args:
        model_path: the TorchScript file.
        card: its card (scale, dtypes).
        device: where to run.
        precision: "auto" or a dtype name (see ``pick_precision``).
        backend: "auto", "torchscript" or "openvino": how float32 runs on a CPU (backends.py).
        module: the TorchScript module itself, when it is not the file's (a blend of two models,
            family.py); ``model_path`` then names where its backend conversion is cached.
        digest: the key of that conversion cache (default: the card's sha256).

    Attributes:
        model: what float32 batches run on: the TorchScript module, or the faster CPU backend's
            model built from it (same call, same output within 1/255).
        backend: its name, "torchscript" or "openvino".
    """

    def __init__(
        self,
        model_path: str | Path,
        card: ModelCard,
        device: torch.device,
        precision: str = "auto",
        backend: str = "auto",
        *,
        module: torch.jit.ScriptModule | None = None,
        digest: str | None = None,
    ):
        self.card = card
        self.device = device
        if module is None:
            module = torch.jit.load(str(model_path), map_location=device)
        self.model = module.to(device).eval()
        source = self.model
        self.dtype = pick_precision(precision, card, device)
        self.backend = "torchscript"
        if device.type == "cpu" and self.dtype == torch.float32:
            threads = torch.get_num_threads()
            fast = fast_cpu_model(backend, Path(model_path), card, self.model, threads, digest)
            if fast is not None:
                self.model, self.backend = fast, fast.name
        elif backend == "openvino":
            raise ValueError("backend 'openvino' runs float32 on a CPU only")
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._half = None
        if self.dtype != torch.float32:
            # a second copy in half precision; the float32 one stays for the guard's reruns
            self._half = copy.deepcopy(source).to(self.dtype)
            if self.channels_last:
                self._half = self._half.to(memory_format=torch.channels_last)
        self._bad = torch.zeros((), dtype=torch.bool, device=device)
        self.fallbacks = 0

    @property
    def reduced_precision(self) -> bool:
        """Whether passes run in half precision (and so may need the float32 rerun)."""
        return self._half is not None

    def __call__(self, batch: torch.Tensor, *, full_precision: bool = False) -> torch.Tensor:
        """Run one batch (B, 3, h, w) in [0, 1]; split it on out-of-memory.

        Returns:
            (B, 3, s*h, s*w), clamped to [0, 1], in the compute dtype.

        Raises:
            TileOutOfMemory: a single tile does not fit.
        """
        try:
            return self._forward(batch, full_precision)
        except Exception as error:  # noqa: BLE001 - only allocation failures are handled here
            if not is_out_of_memory(error):
                raise
        self.release_memory()
        if batch.shape[0] == 1:
            raise TileOutOfMemory(
                f"one {tuple(batch.shape[-2:])} tile does not fit on {self.device}"
            )
        half = batch.shape[0] // 2
        logger.warning("out of memory on a batch of %d tiles; retrying in halves", batch.shape[0])
        first = self(batch[:half], full_precision=full_precision)
        return torch.cat([first, self(batch[half:], full_precision=full_precision)])

    def _forward(self, batch: torch.Tensor, full_precision: bool) -> torch.Tensor:
        model = self.model if full_precision or self._half is None else self._half
        dtype = torch.float32 if model is self.model else self.dtype
        inputs = batch.to(self.device, dtype=dtype, non_blocking=True)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = model(inputs)
            if model is not self.model:
                self._bad |= _suspicious(inputs, out)
            return out.clamp_(0.0, 1.0)

    def take_bad_flag(self) -> bool:
        """Whether any half-precision batch since the last call looked wrong; resets the flag.

        This is the one host sync per pass that the guard costs.
        """
        bad = bool(self._bad)
        self._bad.zero_()
        return bad

    def release_memory(self) -> None:
        """Return cached device memory after an allocation failure."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _suspicious(inputs: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """On-device flag: non-finite output, or a black tile where the input tile is not dark."""
    not_finite = ~torch.isfinite(out).all()
    out_max = out.detach().flatten(1).amax(1).float()
    in_max = inputs.detach().flatten(1).amax(1).float()
    black = ((out_max < 1 / 255) & (in_max > 8 / 255)).any()
    return not_finite | black


def out_of_memory_error(device: torch.device, tile: int) -> OutOfMemory:
    """The 507 error once every retry has failed."""
    return OutOfMemory(
        f"out of memory on {device.type} even with one {tile}x{tile} tile at a time; "
        "try a smaller scale or image, or retry when the server is less busy"
    )
