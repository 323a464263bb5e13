"""Where the windows of a tiled pass fall: torch-free arithmetic shared by ``tiling`` (which cuts
and blends them) and ``admission`` (which prices them, in the worker and in the page)."""

from __future__ import annotations

import math

__all__ = ["tile_shape", "window_starts"]


def window_starts(length: int, tile: int, overlap: int, blend: int) -> list[int]:
    """Window starts (input coordinates) covering ``length`` pixels, ``overlap`` context per side.

    Consecutive windows are ``tile - 2*overlap - blend`` apart; the last one is moved back to end
    exactly ``overlap`` (or more, for short axes) past the image: no compute is wasted on padding.
    """
    padded = max(length + 2 * overlap, tile)
    if padded == tile:
        return [-overlap]
    step = tile - 2 * overlap - blend
    if step < 1:
        raise ValueError(f"tile {tile} too small for overlap {overlap} and blend {blend}")
    count = math.ceil((padded - tile) / step) + 1
    return [min(k * step, padded - tile) - overlap for k in range(count)]


def tile_shape(
    size: tuple[int, int],
    tile: int,
    overlap: int,
    multiple: int,
    dynamic: bool,
    blend: int | None = None,
) -> tuple[int, int]:
    """The (h, w) of the windows for an image of ``size`` (h, w).

    A model traced at one shape always gets ``tile`` x ``tile``. A dynamic model gets balanced
    windows: along each axis, as many windows as ``tile`` needs, each of the smallest size (a
    multiple of ``multiple``, at most ``tile``) for which that many windows still cover the axis.
    So a 40 x 30 photo costs 40 x 30 plus its context, and a 1000-pixel axis with tile 512 gets
    two windows of about 520 rather than two of 512 that overlap by 24 more pixels than needed.
    """
    if not dynamic:
        return tile, tile
    blend = overlap if blend is None else blend

    def side(n: int) -> int:
        count = len(window_starts(n, tile, overlap, blend))
        # count windows of side s, each 2*overlap+blend into the next, must span the padded axis
        need = -(-(n + 2 * overlap + (count - 1) * (2 * overlap + blend)) // count)
        return min(tile, -(-need // multiple) * multiple)

    return side(size[0]), side(size[1])
