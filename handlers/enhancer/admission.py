"""Admission by cost: refuse, before any work, what the worker cannot finish inside its time budget.

TorchServe kills a worker whose batch runs past ``responseTimeout`` (500 "Worker died.", everyone
queued behind it waits for the restart). The pixel limits alone admit work this CPU cannot finish
in time (a 4096 x 4096 photo at 2x ran 302 s against a 300 s timeout), so the engine estimates each
request's time and refuses what does not fit:

    seconds = model_pixels * model_seconds_per_pixel + output_pixels * other_seconds_per_pixel

- ``model_pixels``: the pixels the model is run on, summed over the request's passes: every window
  of every pass, context included, exactly as ``tiling`` cuts them (a scale-2 model runs at each
  pass's input size, a scale-1 model at its output size);
- ``output_pixels``: the pixels each pass produces (blending, resizing) plus the encoded output;
- the two rates are the worker's own, measured at start (``Enhancer.calibrate``) by enhancing a
  noise image through the same stages, backend and device the requests get.

The budget is ``responseTimeout`` times ``time_budget_share`` (0.5 by default: an admitted request
still finishes when the machine runs it twice as slowly as it did at calibration).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from enhancer.card import ModelCard
from enhancer.passes import plan_passes
from enhancer.tiling import plan_windows


@dataclasses.dataclass(frozen=True)
class Throughput:
    """A worker's measured speed.

    Attributes:
        model_seconds_per_pixel: seconds per model-input pixel (windows with their context).
        other_seconds_per_pixel: seconds per output pixel for the rest (decode, blend, resize,
            encode).
        backend: what the model ran on ("openvino", "torchscript").
        device: "cpu", "cuda:0", ...
    """

    model_seconds_per_pixel: float
    other_seconds_per_pixel: float
    backend: str = ""
    device: str = ""

    def seconds(self, work: tuple[int, int]) -> float:
        """The estimated seconds for ``work`` = (model pixels, output pixels)."""
        model_pixels, output_pixels = work
        return (
            model_pixels * self.model_seconds_per_pixel
            + output_pixels * self.other_seconds_per_pixel
        )

    def describe(self) -> str:
        """One line for the log: model and output megapixels per second."""
        return (
            f"{1e-6 / self.model_seconds_per_pixel:.3f} model MP/s, "
            f"{1e-6 / max(self.other_seconds_per_pixel, 1e-12):.2f} output MP/s for the rest, "
            f"on {self.backend} ({self.device})"
        )


def work(
    width: int,
    height: int,
    scale: float,
    card: ModelCard,
    tile: int,
    *,
    level: int = 1,
    enhance_first: bool = False,
) -> tuple[int, int]:
    """(model pixels, output pixels) of enhancing a ``width`` x ``height`` image ``scale`` times
    with tiles of ``tile`` input pixels, with the restoring passes of ``level`` and
    ``enhance_first`` (see the module docstring)."""
    model_pixels = 0
    output_pixels = 0
    plan = plan_passes(width, height, scale, level=level, enhance_first=enhance_first)
    for step in plan:
        w, h = step.dst if card.scale == 1 else step.src
        rows, columns = plan_windows(
            (h, w), tile, card.overlap, card.multiple, card.dynamic, card.blend
        )
        model_pixels += rows.model_pixels * columns.model_pixels
        output_pixels += step.dst[0] * step.dst[1]
    output_pixels += plan[-1].dst[0] * plan[-1].dst[1]  # encoding the result
    return model_pixels, output_pixels


def model_overhead(
    width: int,
    height: int,
    scale: float,
    card: ModelCard,
    tile: int,
    *,
    level: int = 1,
    enhance_first: bool = False,
) -> float:
    """Model pixels per output pixel of the request's passes: every window of every pass, context
    and cross-fades included, over the pixels those passes deliver (both at the model's input
    scale). 1.0 is the whole image in one call with no context; the tiling's overhead is the rest.
    """
    model_pixels = 0
    pass_pixels = 0
    for step in plan_passes(width, height, scale, level=level, enhance_first=enhance_first):
        w, h = step.dst if card.scale == 1 else step.src
        rows, columns = plan_windows(
            (h, w), tile, card.overlap, card.multiple, card.dynamic, card.blend
        )
        model_pixels += rows.model_pixels * columns.model_pixels
        pass_pixels += w * h
    return model_pixels / pass_pixels


def largest_scale(fits: Callable[[float], bool], below: float) -> float | None:
    """The largest scale under ``below``, in hundredths, for which ``fits(scale)`` holds (cost only
    grows with the scale), or None when even scale 1 does not fit."""
    low, high = 100, math.ceil(below * 100) - 1
    if high < low or not fits(low / 100):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle / 100):
            low = middle
        else:
            high = middle - 1
    return low / 100
