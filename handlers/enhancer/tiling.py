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

from enhancer.windows import (  # noqa: F401 (re-exported: the planner is torch-free)
    AxisPlan,
    overhead,
    plan_axis,
    plan_windows,
    round_up,
    tile_shape,
    window_starts,
)


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
    bottom = round_up(height + 2 * context, multiple) - height - context
    right = round_up(width + 2 * context, multiple) - width - context
    padded = image.index_select(1, reflect_indices(height, context, bottom).to(image.device))
    padded = padded.index_select(2, reflect_indices(width, context, right).to(image.device))
    out = run(padded[None])[0].float()
    cut = context * scale
    return out[:, cut : cut + height * scale, cut : cut + width * scale]
