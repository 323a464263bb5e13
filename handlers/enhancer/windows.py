"""Where the windows of a tiled pass fall: torch-free arithmetic shared by ``tiling`` (which cuts
and blends them) and ``admission`` (which prices them, in the worker and in the page)."""

from __future__ import annotations

import dataclasses
import math

__all__ = [
    "AxisPlan",
    "overhead",
    "plan_axis",
    "plan_windows",
    "round_up",
    "tile_shape",
    "window_starts",
]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def window_starts(length: int, tile: int, overlap: int, blend: int, multiple: int = 1) -> list[int]:
    """Starts (input coordinates) of fixed ``tile``-pixel windows covering ``length`` pixels.

    Windows start ``-overlap`` plus a multiple of ``multiple`` (a U-Net with strided downsampling
    is not shift-invariant: a window off that grid computes different features everywhere, not only
    near its edges), consecutive ones at most ``tile - 2*overlap - blend`` apart. The last one is
    moved back as far as the grid allows while it still ends ``overlap`` (or more) past the image.
    """
    padded = max(length + 2 * overlap, tile)
    if padded == tile:
        return [-overlap]
    step = (tile - 2 * overlap - blend) // multiple * multiple
    if step < 1:
        raise ValueError(
            f"tile {tile} too small for overlap {overlap} and blend {blend} (multiple {multiple})"
        )
    count = math.ceil((padded - tile) / step) + 1
    last = round_up(padded - tile, multiple)
    return [min(k * step, last) - overlap for k in range(count)]


@dataclasses.dataclass(frozen=True)
class AxisPlan:
    """The windows along one axis: all ``size`` pixels long, starting at ``starts``."""

    size: int
    starts: tuple[int, ...]

    @property
    def model_pixels(self) -> int:
        """Input pixels the model computes along this axis (windows times size)."""
        return self.size * len(self.starts)


def plan_axis(
    length: int,
    tile: int,
    overlap: int,
    multiple: int = 1,
    blend: int | None = None,
    dynamic: bool = True,
) -> AxisPlan:
    """The cheapest windows along one axis of ``length`` pixels for a model of ``multiple``.

    A model traced at one shape gets ``tile``-pixel windows (``window_starts``). A dynamic model
    gets, among all window counts, the count and size (a multiple of ``multiple``, at most ``tile``)
    with the fewest model pixels: one window holding the whole axis plus its context when that fits
    in ``tile`` (the whole-image run itself), else ``count`` windows on the ``multiple`` grid, each
    ``2*overlap + blend`` (or a little more) into the next. Every window starts ``-overlap`` plus a
    multiple of ``multiple``, so each computes the same features as the whole-image run there.
    """
    blend = overlap if blend is None else blend
    if not dynamic:
        return AxisPlan(tile, tuple(window_starts(length, tile, overlap, blend, multiple)))
    whole = round_up(length + 2 * overlap, multiple)
    if whole <= tile:
        return AxisPlan(whole, (-overlap,))
    shared = 2 * overlap + blend
    if tile < shared + multiple:
        raise ValueError(
            f"tile {tile} too small for overlap {overlap} and blend {blend} (multiple {multiple})"
        )
    best: tuple[int, int, int, int] | None = None  # (cost, count, size, step)
    count = 1
    while True:
        count += 1
        # count windows of size s, step d: s >= d + shared and (count-1)*d + s >= length + 2*o;
        # any s * count is at least length + 2*o + (count-1)*shared
        if best is not None and length + 2 * overlap + (count - 1) * shared > best[0]:
            break
        crossing = (length + 2 * overlap - shared) / count
        steps = {max(multiple, math.floor(crossing / multiple) * multiple)}
        steps.add(max(multiple, math.ceil(crossing / multiple) * multiple))
        for step in steps:
            size = round_up(max(step + shared, length + 2 * overlap - (count - 1) * step), multiple)
            if size <= tile and (best is None or (count * size, count) < best[:2]):
                best = (count * size, count, size, step)
        if best is None and crossing < multiple:  # cannot happen: tile >= shared + multiple
            raise AssertionError(f"no windows cover {length} pixels with tile {tile}")
    _, count, size, step = best
    return AxisPlan(size, tuple(k * step - overlap for k in range(count)))


def plan_windows(
    size: tuple[int, int],
    tile: int,
    overlap: int,
    multiple: int = 1,
    dynamic: bool = True,
    blend: int | None = None,
) -> tuple[AxisPlan, AxisPlan]:
    """The (rows, columns) windows for an image of ``size`` (h, w); see ``plan_axis``."""
    return (
        plan_axis(size[0], tile, overlap, multiple, blend, dynamic),
        plan_axis(size[1], tile, overlap, multiple, blend, dynamic),
    )


def overhead(
    size: tuple[int, int],
    tile: int,
    overlap: int,
    multiple: int = 1,
    dynamic: bool = True,
    blend: int | None = None,
) -> float:
    """Model pixels per image pixel of one tiled pass over an image of ``size`` (h, w): 1.0 would
    be no context and no overlap at all (per output pixel it is the same, the scale cancels)."""
    rows, columns = plan_windows(size, tile, overlap, multiple, dynamic, blend)
    return rows.model_pixels * columns.model_pixels / (size[0] * size[1])


def tile_shape(
    size: tuple[int, int],
    tile: int,
    overlap: int,
    multiple: int,
    dynamic: bool,
    blend: int | None = None,
) -> tuple[int, int]:
    """The (h, w) of the windows for an image of ``size`` (h, w) (``plan_windows``).

    A model traced at one shape always gets ``tile`` x ``tile``. A dynamic model gets the window
    shape with the fewest model pixels: a 40 x 30 photo costs 40 x 30 plus its context, and a
    1000-pixel axis with tile 512 gets two windows of about 520 rather than two of 512 that overlap
    by 24 more pixels than needed.
    """
    rows, columns = plan_windows(size, tile, overlap, multiple, dynamic, blend)
    return rows.size, columns.size
