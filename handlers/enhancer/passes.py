"""Pass planning: reach any scale in passes the model can make, landing on exactly
round(scale * size).

With a scale-2 card (and a scale-1 card, which resizes before each pass) passes are of at most 2x:
4x is two 2x passes; 3x is 2x then 1.5x; 1x is one restoring pass at the same size. With a card of
scale s of 3 or more (a 4x Real-ESRGAN, say) passes are of at most s: any scale up to s is one pass
(the model enlarges s times and the result is resized down, antialiased, to the target: scale 2
on a 4x card is one 4x pass then a downscale), 8x on a 4x card is two passes. When more than one
pass is needed the fractional one comes first and the rest are s-times passes (6x on a 4x card:
1.5x, then 4x; each lands on a rounded size, so a pass may be resized by a pixel or two): the last
pass makes no more pixels than the output needs, where the 2x order (fraction last) would have the
model make up to s*s/2 times more (the 2x plan keeps its order: the shipped models' outputs do not
change). Restoring
passes (``src == dst``) can be added: ``enhance_first`` puts one at the input size before the
enlarging passes, and ``level`` n puts n - 1 at the final size after them. How a model of scale s
runs a restoring pass is the engine's: it enlarges s times and resizes back down (antialiased), as
``scale=1`` always has; no input detail is thrown away first.

A native 4x model beside a scale-1 or scale-2 card (``native=4``: the same U-Net with a 4x
sub-pixel head, card ``enhancer4.json``) takes over scales of 4 and more: the plan is the remainder
first, planned the same way (2x passes of the card's model, or again a 4x step from 16x), to
ceil(output / 4), then one 4x pass on the 4x model (``Pass.native``) to the exact output size:
4x is one 4x pass; 8x is 2x then 4x; 6x is 1.5x then 4x; below 4 (3x) the plan is the 2x plan.
The 4x pass comes last because a 4x model's cost is per input pixel: on the smallest input it
makes the most pixels per multiply-add (8x as 2x then 4x costs a third of 4x then 2x).

``auto_scale`` is ``scale=auto``: the whole factor that brings the short side to about 1080 px.
"""

from __future__ import annotations

import dataclasses
import math

from enhancer.contract import AUTO_SHORT_SIDE


@dataclasses.dataclass(frozen=True)
class Pass:
    """One pass: from ``src`` (width, height) to ``dst`` (width, height)."""

    src: tuple[int, int]
    dst: tuple[int, int]
    native: bool = False  # runs on the native 4x model (``plan_passes(native=4)``), not the card's


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The exact output size: (round(scale * width), round(scale * height)), at least 1 each.

    Python's round() is used as written in the API contract (halves go to the even integer).
    """
    return max(1, round(scale * width)), max(1, round(scale * height))


def pass_factor(model_scale: int) -> int:
    """The largest enlargement of one pass for a card of ``model_scale``: 2 for scale-1 and
    scale-2 cards, the card's own scale above that."""
    return max(2, int(model_scale))


def pass_count(scale: float, model_scale: int = 2) -> int:
    """How many passes of at most ``pass_factor(model_scale)`` (2x for the default) reach
    ``scale``: ceil(log_f(scale)), and 1 for scale <= f."""
    factor = pass_factor(model_scale)
    if scale <= factor:
        return 1
    # a hair of tolerance so that 4.0000000001 from a float sum stays two passes
    return math.ceil(math.log(scale, factor) - 1e-9)


def auto_scale(
    width: int,
    height: int,
    *,
    max_scale: float,
    max_output_pixels: int,
    max_side: int | None = None,
    short_side: int = AUTO_SHORT_SIDE,
) -> int:
    """The factor ``scale=auto`` chooses for a ``width`` x ``height`` image.

    1 when the short side already has ``short_side`` (1080) pixels or more. Otherwise the smallest
    whole factor from 2 up that brings the short side to at least ``short_side``, at most
    ``max_scale`` (8): 540 px -> 2 (1080), 539 px -> 3 (1617), 135 px -> 8 (1080), 100 px -> 8
    (800). Then, while the output would be over ``max_output_pixels`` (or a side over
    ``max_side``, the output format's limit), the next smaller whole factor, down to 1. Whole
    factors only: every pass but the last is 2x, and 2x and 4x need no fractional last pass.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    short = min(width, height)
    if short >= short_side:
        return 1
    scale = min(max(2, -(-short_side // short)), int(max_scale))
    while scale > 1:
        out_w, out_h = output_size(width, height, scale)
        fits_side = max_side is None or max(out_w, out_h) <= max_side
        if out_w * out_h <= max_output_pixels and fits_side:
            break
        scale -= 1
    return scale


def plan_passes(
    width: int,
    height: int,
    scale: float,
    *,
    level: int = 1,
    enhance_first: bool = False,
    model_scale: int = 2,
    native: int | None = None,
) -> list[Pass]:
    """Plan the passes for an image of ``width`` x ``height`` enlarged ``scale`` times by a
    model card of scale ``model_scale``.

    For scale-1 and scale-2 cards every enlarging pass but the last is exactly 2x; the last goes
    from wherever the others ended to the exact output size, so it is a factor in (1, 2] (or
    exactly 1 when ``scale`` is 1). For a card of scale s >= 3 the first enlarging pass is the
    fractional one, to ceil(output / s**(n-1)), and every later one is s times (to the rounded-up
    size), the last landing on the exact output size.
    ``enhance_first`` adds a restoring pass at the input size in front (none when ``scale`` is 1:
    the one pass already restores at that size); ``level`` n adds n - 1 restoring passes at the
    output size at the end.
    ``native`` (4, with a scale-1 or scale-2 card): a native 4x model is there; for a ``scale`` of
    4 or more the enlarging passes end in one 4x pass on it (the module docstring). Restoring
    passes stay on the card's model.

    Raises:
        ValueError: for a scale below 1 or a non-positive size.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    if not scale >= 1.0:
        raise ValueError(f"scale must be at least 1, not {scale}")
    if level < 1:
        raise ValueError(f"level must be at least 1, not {level}")
    target = output_size(width, height, scale)
    passes = []
    size = (width, height)
    if enhance_first and target != size:
        passes.append(Pass(size, size))
    if native is not None and (native != 4 or pass_factor(model_scale) != 2):
        raise ValueError(f"a native model must be 4x beside a 2x (or 1x) card, not {native}x")
    passes.extend(_enlarging(size, target, scale, model_scale, native))
    passes.extend(Pass(target, target) for _ in range(level - 1))
    return passes


def _enlarging(
    size: tuple[int, int],
    target: tuple[int, int],
    scale: float,
    model_scale: int,
    native: int | None,
) -> list[Pass]:
    """The enlarging passes from ``size`` to ``target`` (about ``scale`` times)."""
    if native and scale >= native - 1e-9:
        # the remainder first, to the rounded-up quarter of the output, then one native pass
        step = (
            max(size[0], -(-target[0] // native)),
            max(size[1], -(-target[1] // native)),
        )
        head = [] if step == size else _enlarging(size, step, scale / native, model_scale, native)
        return [*head, Pass(step, target, native=True)]
    passes = []
    factor = pass_factor(model_scale)
    count = pass_count(scale, model_scale)
    if factor == 2:
        for _ in range(count - 1):
            doubled = (size[0] * 2, size[1] * 2)
            passes.append(Pass(size, doubled))
            size = doubled
    else:
        for k in range(count - 1, 0, -1):
            # rounded up, so the next pass is never more than ``factor`` times (1x1 at 5x: 2, 5)
            shrink = factor**k
            step = (
                max(size[0], -(-target[0] // shrink)),
                max(size[1], -(-target[1] // shrink)),
            )
            passes.append(Pass(size, step))
            size = step
    passes.append(Pass(size, target))
    return passes
