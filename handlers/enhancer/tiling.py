"""Tiled model passes: fixed-size tiles with context, reflection padding, smooth blending, batches.

Along each axis the image is reflect-padded by ``overlap`` pixels and cut into windows of at most
``tile`` pixels (``plan_axis``: for a dynamic model the count and size with the fewest model pixels,
one window, the whole-image run itself, when the image fits). Windows start on the model's
``multiple`` grid counted from the whole-image run's origin (strided downsampling is not
shift-invariant). Neighbouring windows share ``2 * overlap + blend`` pixels or a few more: in each
window the outer ``overlap`` pixels on an inner edge are context only (weight 0), the next ``blend``
pixels ramp up with a raised cosine, and the weights are normalised to sum to one. So every output
pixel is a convex mix of tile outputs computed at least ``overlap`` pixels from any tile edge: for a
model whose receptive field fits the overlap, the tiled result equals the untiled one
(``whole_apply``: the same reflection padding) up to float rounding, and there is no seam to see or
measure.

Windows of all images in a call are run together in batches (tiles of concurrent requests share
model calls). The weights are separable and normalised per axis, so no weight map is stored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch


@dataclasses.dataclass(frozen=True)
class Span:
    """One window along one axis.

    Attributes:
        start: window start in the input's own coordinates (negative: it begins in the padding).
        out_lo, out_hi: the output range it contributes to, clipped to the output.
        crop_lo: offset into the window's output where ``out_lo`` falls.
        weights: blend weights for ``out_lo:out_hi`` (normalised over all windows of the axis).
    """

    start: int
    out_lo: int
    out_hi: int
    crop_lo: int
    weights: torch.Tensor


def reflect_indices(length: int, before: int, after: int) -> torch.Tensor:
    """Indices that reflect-pad an axis of ``length`` by ``before`` and ``after`` (any amounts).

    Like numpy's "reflect" (the edge pixel is not repeated), repeated as often as needed, so an axis
    of 3 pixels can be padded by 10; a 1-pixel axis repeats its pixel.
    """
    positions = torch.arange(-before, length + after)
    if length == 1:
        return torch.zeros_like(positions)
    period = 2 * (length - 1)
    folded = torch.remainder(positions, period)
    return torch.where(folded >= length, period - folded, folded)


def _round_up(value: int, multiple: int) -> int:
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
    last = _round_up(padded - tile, multiple)
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
    whole = _round_up(length + 2 * overlap, multiple)
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
            size = _round_up(
                max(step + shared, length + 2 * overlap - (count - 1) * step), multiple
            )
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


def _ramp(width: int, device: torch.device) -> torch.Tensor:
    """A raised-cosine ramp of ``width`` samples from near 0 to near 1 (sampled at centres)."""
    t = (torch.arange(width, device=device, dtype=torch.float64) + 0.5) / width
    return 0.5 - 0.5 * torch.cos(math.pi * t)


def axis_spans(
    length: int,
    tile: int,
    overlap: int,
    blend: int,
    scale: int,
    device: torch.device,
    starts: Sequence[int] | None = None,
) -> list[Span]:
    """The windows along one axis with their normalised output weights.

    Args:
        length: input pixels along the axis.
        tile: window size in input pixels.
        overlap: context pixels each window needs on an inner edge.
        blend: width of the cross-fade between neighbours, in input pixels.
        scale: output pixels per input pixel (1 or 2).
        starts: the window starts (``plan_axis``); default ``window_starts``.
    """
    starts = list(window_starts(length, tile, overlap, blend) if starts is None else starts)
    out_len = length * scale
    ctx, ramp_len, size = overlap * scale, blend * scale, tile * scale
    raw = []
    total = torch.zeros(out_len, dtype=torch.float64, device=device)
    for k, start in enumerate(starts):
        weight = torch.ones(size, dtype=torch.float64, device=device)
        ramp = _ramp(ramp_len, device) if ramp_len else None
        if k > 0:  # inner left edge: context, then ramp up
            weight[:ctx] = 0
            if ramp is not None:
                weight[ctx : ctx + ramp_len] = ramp
        if k < len(starts) - 1:  # inner right edge: ramp down, then context
            weight[size - ctx :] = 0
            if ramp is not None:
                weight[size - ctx - ramp_len : size - ctx] = torch.minimum(
                    weight[size - ctx - ramp_len : size - ctx], ramp.flip(0)
                )
        lo = max(start * scale, 0)
        hi = min((start + tile) * scale, out_len)
        crop = lo - start * scale
        piece = weight[crop : crop + hi - lo]
        total[lo:hi] += piece
        raw.append((start, lo, hi, crop, piece))
    if bool((total <= 0).any()):
        raise AssertionError("tiling left output pixels uncovered")  # a bug, never user input
    return [
        Span(start, lo, hi, crop, (piece / total[lo:hi]).to(torch.float32))
        for start, lo, hi, crop, piece in raw
    ]


@dataclasses.dataclass
class _Job:
    image: torch.Tensor  # (C, H, W), reflect-padded by `pad` on top and left
    pad: tuple[int, int]  # (top, left) padding in the padded copy
    tile: tuple[int, int]  # (tile_h, tile_w)
    ys: list[Span]
    xs: list[Span]
    out: torch.Tensor


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


def tiled_apply(
    images: Sequence[torch.Tensor],
    run: Callable[[torch.Tensor], torch.Tensor],
    *,
    scale: int,
    tile: int,
    overlap: int,
    multiple: int = 1,
    dynamic: bool = False,
    batch_size: int = 1,
    blend: int | None = None,
) -> list[torch.Tensor]:
    """Run ``run`` over each image in overlapping tiles and blend the results.

    Args:
        images: (C, H, W) float tensors, all on the device ``run`` expects; sizes may differ.
        run: model call: (B, C, th, tw) -> (B, C, scale*th, scale*tw).
        scale: the model's output/input size ratio (1 or 2).
        tile: the largest window side in input pixels (a multiple of ``multiple``).
        overlap: context pixels per inner window edge (the model's receptive-field radius).
        multiple: the model's size multiple (for the smaller windows of dynamic models).
        dynamic: the model accepts any multiple of ``multiple``, not only ``tile``.
        batch_size: windows per ``run`` call; windows of different images share a call.
        blend: cross-fade width in input pixels; default ``overlap``.

    Returns:
        float32 tensors (C, scale*H, scale*W) on the images' device.
    """
    blend = overlap if blend is None else blend
    jobs = []
    for image in images:
        channels, height, width = image.shape
        rows, columns = plan_windows((height, width), tile, overlap, multiple, dynamic, blend)
        th, tw = rows.size, columns.size
        ys = axis_spans(height, th, overlap, blend, scale, image.device, rows.starts)
        xs = axis_spans(width, tw, overlap, blend, scale, image.device, columns.starts)
        top, left = -ys[0].start, -xs[0].start
        bottom = ys[-1].start + th - height
        right = xs[-1].start + tw - width
        padded = image.index_select(1, reflect_indices(height, top, bottom).to(image.device))
        padded = padded.index_select(2, reflect_indices(width, left, right).to(image.device))
        out = torch.zeros(
            channels, height * scale, width * scale, dtype=torch.float32, device=image.device
        )
        jobs.append(_Job(padded, (top, left), (th, tw), ys, xs, out))

    # windows grouped by shape, so each batch stacks; order within a group follows the images
    groups: dict[tuple[int, int], list[tuple[_Job, Span, Span]]] = {}
    for job in jobs:
        for ys in job.ys:
            for xs in job.xs:
                groups.setdefault(job.tile, []).append((job, ys, xs))
    for (th, tw), windows in groups.items():
        for first in range(0, len(windows), batch_size):
            chunk = windows[first : first + batch_size]
            batch = torch.stack(
                [
                    job.image[
                        :,
                        ys.start + job.pad[0] : ys.start + job.pad[0] + th,
                        xs.start + job.pad[1] : xs.start + job.pad[1] + tw,
                    ]
                    for job, ys, xs in chunk
                ]
            )
            result = run(batch)
            for (job, ys, xs), piece in zip(chunk, result, strict=False):
                piece = piece[
                    :,
                    ys.crop_lo : ys.crop_lo + ys.out_hi - ys.out_lo,
                    xs.crop_lo : xs.crop_lo + xs.out_hi - xs.out_lo,
                ].float()
                weight = ys.weights[:, None] * xs.weights[None, :]
                job.out[:, ys.out_lo : ys.out_hi, xs.out_lo : xs.out_hi].addcmul_(piece, weight)
    return [job.out for job in jobs]


def whole_apply(
    image: torch.Tensor,
    run: Callable[[torch.Tensor], torch.Tensor],
    *,
    scale: int,
    context: int,
    multiple: int = 1,
) -> torch.Tensor:
    """The untiled reference: ``run`` once on the whole (C, H, W) image reflect-padded by
    ``context`` pixels on every side (and on the bottom and right up to ``multiple``), cropped back.

    With ``context`` equal to the overlap this is exactly the one window ``tiled_apply`` runs when
    the image fits in a tile. A larger ``context`` that differs from the overlap by a multiple of
    ``multiple`` keeps the windows' grid and shows whether the overlap is enough at the image's own
    borders too.
    """
    _, height, width = image.shape
    bottom = _round_up(height + 2 * context, multiple) - height - context
    right = _round_up(width + 2 * context, multiple) - width - context
    padded = image.index_select(1, reflect_indices(height, context, bottom).to(image.device))
    padded = padded.index_select(2, reflect_indices(width, context, right).to(image.device))
    out = run(padded[None])[0].float()
    cut = context * scale
    return out[:, cut : cut + height * scale, cut : cut + width * scale]
