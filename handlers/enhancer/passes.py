"""Pass planning: reach any scale in passes of at most 2x, landing on exactly round(scale * size).

4x is two 2x passes; 3x is 2x then 1.5x; 1x is one restoring pass at the same size.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Pass:
    """One pass: from ``src`` (width, height) to ``dst`` (width, height)."""

    src: tuple[int, int]
    dst: tuple[int, int]


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The exact output size: (round(scale * width), round(scale * height)), at least 1 each.

    Python's round() is used as written in the API contract (halves go to the even integer).
    """
    return max(1, round(scale * width)), max(1, round(scale * height))


def pass_count(scale: float) -> int:
    """How many passes of at most 2x reach ``scale``: ceil(log2(scale)), and 1 for scale <= 2."""
    if scale <= 2.0:
        return 1
    # a hair of tolerance so that 4.0000000001 from a float sum stays two passes
    return math.ceil(math.log2(scale) - 1e-9)


def plan_passes(width: int, height: int, scale: float) -> list[Pass]:
    """Plan the passes for an image of ``width`` x ``height`` enlarged ``scale`` times.

    Every pass but the last is exactly 2x; the last goes from wherever the others ended to the
    exact output size, so it is a factor in (1, 2] (or exactly 1 when ``scale`` is 1).

    Raises:
        ValueError: for a scale below 1 or a non-positive size.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    if not scale >= 1.0:
        raise ValueError(f"scale must be at least 1, not {scale}")
    target = output_size(width, height, scale)
    passes = []
    size = (width, height)
    for _ in range(pass_count(scale) - 1):
        doubled = (size[0] * 2, size[1] * 2)
        passes.append(Pass(size, doubled))
        size = doubled
    passes.append(Pass(size, target))
    return passes
