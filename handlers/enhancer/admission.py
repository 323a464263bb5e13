"""Admission by cost: refuse, before any work, what the worker cannot finish inside its time budget.

TorchServe kills a worker whose batch runs past ``responseTimeout`` (500 "Worker died.", everyone
queued behind it waits for the restart). The pixel limits alone admit work this CPU cannot finish
in time (a 4096 x 4096 photo at 2x ran 302 s against a 300 s timeout), so the engine estimates each
request's time and refuses what does not fit:

    seconds = model_pixels * model_seconds_per_pixel + output_pixels * other_seconds_per_pixel

- ``model_pixels``: the pixels the model is run on, summed over the request's passes: every window
  of every pass, context included, exactly as ``tiling`` cuts them (a scale-2 or scale-4 model
  runs at each pass's input size, a scale-1 model at its output size), over the card's own pass
  plan (``passes.plan_passes`` with the card's scale: 4x on a 4x card is one pass);
- ``output_pixels``: the pixels each pass produces (blending, resizing) plus the encoded output;
- the two rates are the worker's own, measured at start (``Enhancer.calibrate``) by enhancing a
  noise image through the same stages, backend and device the requests get.

The budget is ``responseTimeout`` times ``time_budget_share`` (0.5 by default: an admitted request
still finishes when the machine runs it twice as slowly as it did at calibration).

``Estimator`` is the one place that prices a request: the worker's throughput with the model's
card, its default tile and its limits. The engine admits with it, and publishes it as JSON
(``Estimator.to_json``, answered by TorchServe's ``GET /models/enhancer?customized=true``, see
``enhancer.serving.torchserve.describe``) so that the page prices the uploads it holds with the
very same arithmetic (``Estimator.from_json``), to say how long each will wait. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from enhancer.card import ModelCard
from enhancer.errors import EnhanceError
from enhancer.options import Options, parse_options
from enhancer.passes import auto_scale, plan_passes
from enhancer.settings import EnhancerSettings
from enhancer.windows import plan_windows


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
    plan = plan_passes(
        width, height, scale, level=level, enhance_first=enhance_first, model_scale=card.scale
    )
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


@dataclasses.dataclass(frozen=True)
class Estimator:
    """What a request costs on one worker: its measured ``throughput``, its model's ``card`` and
    default ``tile``, its time ``budget`` (None: no admission by cost) and the limits that bound a
    request's scale (``max_scale``, ``max_output_pixels``, ``max_tile``)."""

    throughput: Throughput
    card: ModelCard
    tile: int
    budget: float | None = None
    max_scale: float = 8.0
    max_output_pixels: int = 8192 * 8192
    max_tile: int = 1024

    def seconds(
        self,
        width: int,
        height: int,
        scale: float,
        tile: int | None = None,
        level: int = 1,
        enhance_first: bool = False,
    ) -> float:
        """Seconds enhancing a ``width`` x ``height`` image ``scale`` times should take."""
        plan = {"level": level, "enhance_first": enhance_first}
        return self.throughput.seconds(
            work(width, height, scale, self.card, tile or self.tile, **plan)
        )

    def fit_scale(self, width: int, height: int, scale: int, options: Options) -> int:
        """``scale`` (a whole factor, ``scale=auto``'s choice), lowered by whole steps until the
        request fits the budget (1 at least)."""
        if self.budget is None:
            return scale
        tile, level, first = options.tile or self.tile, options.level, options.enhance_first
        while scale > 1 and self.seconds(width, height, scale, tile, level, first) > self.budget:
            scale -= 1
        return scale

    def request_seconds(
        self, width: int, height: int, raw_options: Mapping[str, object]
    ) -> float | None:
        """The estimate for a request with these raw options (as sent: strings), or None when
        they are not valid (the worker refuses those with a 400 before any work). ``scale=auto``
        is priced at the factor auto picks within the pixel cap and the budget; the output
        format's own side limit is not looked at (it only lowers the factor of huge images)."""
        settings = EnhancerSettings(
            max_scale=self.max_scale,
            max_output_pixels=self.max_output_pixels,
            max_tile=self.max_tile,
        )
        try:
            options = parse_options(raw_options, self.card, settings)
        except EnhanceError:  # an OptionError
            return None
        scale = options.scale
        if options.scale_auto:
            scale = auto_scale(
                width, height, max_scale=self.max_scale, max_output_pixels=self.max_output_pixels
            )
            scale = self.fit_scale(width, height, scale, options)
        tile = options.tile or self.tile
        return self.seconds(width, height, scale, tile, options.level, options.enhance_first)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data that ``from_json`` turns back into an equal Estimator."""
        card = self.card.to_dict()
        return {
            "throughput": dataclasses.asdict(self.throughput),
            "card": {key: card[key] for key in _CARD_FIELDS},
            "tile": self.tile,
            "budget": self.budget,
            "max_scale": self.max_scale,
            "max_output_pixels": self.max_output_pixels,
            "max_tile": self.max_tile,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Estimator:
        """The Estimator ``to_json`` described.

        Raises:
            ValueError: ``data`` is not what ``to_json`` writes.
        """
        try:
            throughput = Throughput(**data["throughput"])
            if min(throughput.model_seconds_per_pixel, throughput.other_seconds_per_pixel) < 0:
                raise ValueError("negative seconds per pixel")
            budget = data["budget"]
            return cls(
                throughput=throughput,
                card=ModelCard.from_dict(dict(data["card"])),
                tile=int(data["tile"]),
                budget=None if budget is None else float(budget),
                max_scale=float(data["max_scale"]),
                max_output_pixels=int(data["max_output_pixels"]),
                max_tile=int(data["max_tile"]),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not an estimator's description: {error!r}") from None


_CARD_FIELDS = ("name", "version", "scale", "multiple", "tile", "overlap", "dtypes", "sha256")
_CARD_FIELDS += ("dynamic",)
