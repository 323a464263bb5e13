"""How much context a model's tiles need: measured on real photos, checked through the planner.

A tile computes an output pixel exactly as the whole-image run does when everything the pixel
depends on lies inside the tile and the tile sits on the model's downsampling grid (the planner,
``enhancer.tiling``, keeps the grid). What a U-Net depends on is wider than its first layers
suggest and varies with the picture, so the overlap is measured, not guessed:

1. ``edge_profile``: on each photo, an aligned window of real content is run alone and inside a
   wider window of the same photo; the difference, as a function of the distance from the window
   edge, is how far the edge (zero padding in every layer, missing content) reaches in. The
   overlap is the smallest distance past which no photo differs by more than ``limit``.
2. ``perturbation_radius``: one input pixel changed, the farthest output pixel that moves by more
   than 0.5/255 (the effective receptive field, for the record).
3. ``tiled_vs_whole``: the engine's tiling (``tiled_apply`` with small tiles, so every photo has
   seams) against ``whole_apply`` with more context than the overlap, on whole photos: the worst
   difference anywhere, borders included.

``measure`` does all three and returns the card's ``export.context`` record;
``scripts/export.py`` runs it on every export (``--overlap auto``), ``scripts/overlap.py`` on an
existing model (updating its card without touching the model file).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from enhancer.tiling import plan_windows, tiled_apply, whole_apply

Run = Callable[[torch.Tensor], torch.Tensor]

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# a pass's float difference below this stays within one 8-bit level after rounding, with room for
# a second pass (x4) and photos the measurement did not see
DEFAULT_LIMIT = 0.5 / 255
CHANGE = 0.5 / 255  # what counts as "moved" for the perturbation radius


def photo_paths(sources: Sequence[str | Path]) -> list[Path]:
    """Image files named, or found (sorted) in the folders named."""
    paths: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            paths += sorted(p for p in source.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        else:
            paths.append(source)
    return paths


def load_photo(path: str | Path) -> torch.Tensor:
    """An RGB photo as a float (3, H, W) tensor in [0, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _reflect_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The image reflect-padded on the bottom and right to at least ``height`` x ``width``."""
    from enhancer.tiling import reflect_indices

    _, h, w = image.shape
    image = image.index_select(1, reflect_indices(h, 0, max(0, height - h)))
    return image.index_select(2, reflect_indices(w, 0, max(0, width - w)))


def edge_profile(
    run: Run, image: torch.Tensor, *, scale: int, multiple: int, window: int, reach: int
) -> torch.Tensor:
    """Max |window alone - window inside the photo| per input-pixel distance from the window edge.

    The window is ``window`` pixels square at the photo's centre, on the ``multiple`` grid of the
    surrounding run, which has ``reach`` more pixels of the photo on every side (reflected where
    the photo is smaller). Entry ``d`` of the result covers output pixels ``d`` input pixels from
    the nearest window edge.
    """
    reach = _round_up(reach, multiple)
    window = _round_up(window, multiple)
    side = window + 2 * reach
    image = _reflect_to(image, side, side)
    _, h, w = image.shape
    top = (h - side) // 2 // multiple * multiple
    left = (w - side) // 2 // multiple * multiple
    outer = image[:, top : top + side, left : left + side]
    inner = outer[:, reach : reach + window, reach : reach + window]
    with torch.inference_mode():
        wide = run(outer[None].contiguous())[0].float()
        alone = run(inner[None].contiguous())[0].float()
    cut = reach * scale
    diff = (alone - wide[:, cut : cut + window * scale, cut : cut + window * scale]).abs()
    diff = diff.amax(0)
    position = torch.arange(window * scale) // scale
    to_edge = torch.minimum(position, window - 1 - position)
    distance = torch.minimum(to_edge[:, None], to_edge[None, :])
    profile = torch.zeros(window // 2 + 1)
    profile.scatter_reduce_(0, distance.flatten(), diff.flatten(), reduce="amax")
    return profile


def perturbation_radius(
    run: Run, image: torch.Tensor, *, scale: int, multiple: int, side: int
) -> int:
    """How far (input pixels, Chebyshev) one input pixel at the centre of a ``side``-pixel crop,
    inverted (v -> 1 - v), moves the output by more than 0.5/255; ``side // 2`` means at least
    that far."""
    side = _round_up(side, multiple)
    image = _reflect_to(image, side, side)
    _, h, w = image.shape
    top = (h - side) // 2 // multiple * multiple
    left = (w - side) // 2 // multiple * multiple
    crop = image[:, top : top + side, left : left + side].contiguous()
    changed = crop.clone()
    centre = side // 2
    changed[:, centre, centre] = 1.0 - changed[:, centre, centre]
    with torch.inference_mode():
        out = run(torch.stack([crop, changed])).float()
    moved = (out[0] - out[1]).abs().amax(0) > CHANGE
    ys, xs = torch.nonzero(moved, as_tuple=True)
    if len(ys) == 0:
        return 0
    dy = (ys // scale - centre).abs().max()
    dx = (xs // scale - centre).abs().max()
    return int(max(dy, dx))


def needed_overlap(profiles: Sequence[torch.Tensor], limit: float) -> int:
    """The smallest distance from which on no profile differs by more than ``limit``."""
    worst = torch.stack(list(profiles)).amax(0)
    over = torch.nonzero(worst > limit)
    if len(over) == 0:
        return 0
    needed = int(over.max()) + 1
    if needed >= len(worst):
        raise ValueError(
            f"the model's tiles differ by more than {limit * 255:.2f}/255 even "
            f"{len(worst) - 1} pixels from the edge: its receptive field is not local enough"
        )
    return needed


def tiled_vs_whole(
    run: Run,
    image: torch.Tensor,
    *,
    scale: int,
    multiple: int,
    overlap: int,
    blend: int | None,
    tile: int,
    reach: int = 64,
) -> float:
    """Max |tiled - whole| over a photo: tiles of at most ``tile`` through the planner against one
    run with ``overlap + reach`` of context (``reach`` a multiple of ``multiple``)."""
    with torch.inference_mode():
        (tiled,) = tiled_apply(
            [image],
            run,
            scale=scale,
            tile=tile,
            overlap=overlap,
            multiple=multiple,
            dynamic=True,
            blend=blend,
        )
        whole = whole_apply(
            image, run, scale=scale, context=overlap + _round_up(reach, multiple), multiple=multiple
        )
    return float((tiled.clamp(0, 1) - whole.clamp(0, 1)).abs().max())


def centre_crop(image: torch.Tensor, side: int) -> torch.Tensor:
    """The central ``side`` x ``side`` pixels (or fewer, for a smaller photo)."""
    _, h, w = image.shape
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[:, top : top + side, left : left + side].contiguous()


def profile_photos(
    run: Run,
    photos: Sequence[tuple[str, torch.Tensor]],
    *,
    scale: int,
    multiple: int,
    window: int = 128,
    reach: int = 64,
    limit: float = DEFAULT_LIMIT,
    log: Callable[[str], None] = print,
) -> tuple[list[torch.Tensor], list[int]]:
    """Each photo's edge profile and perturbation radius (see the module docstring)."""
    profiles, radii = [], []
    for name, image in photos:
        profile = edge_profile(
            run, image, scale=scale, multiple=multiple, window=window, reach=reach
        )
        radius = perturbation_radius(run, image, scale=scale, multiple=multiple, side=2 * reach)
        profiles.append(profile)
        radii.append(radius)
        log(f"  {name}: edge reaches {needed_overlap([profile], limit)} px, pixel moves {radius}")
    return profiles, radii


def small_tile(overlap: int, blend: int, multiple: int, core: int = 64) -> int:
    """A tile that leaves a core of about ``core`` pixels: many seams on every photo checked."""
    return _round_up(2 * overlap + blend + core, multiple)


def measure(
    run: Run,
    photos: Sequence[tuple[str, torch.Tensor]],
    *,
    scale: int,
    multiple: int,
    blend: int,
    limit: float = DEFAULT_LIMIT,
    window: int = 128,
    reach: int = 64,
    check: int | None = None,
    overlap: int | None = None,
    tile: int | None = None,
    check_side: int | None = None,
    profiled: tuple[list[torch.Tensor], list[int]] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure the overlap a model needs on ``photos`` (name, (3, H, W) tensor) and check it.

    Args:
        run: the model on a batch in [0, 1] (float32).
        scale, multiple: the model's (card fields).
        blend: the cross-fade the card will use.
        limit: the largest difference accepted from ``overlap`` pixels of an edge on.
        window, reach: the edge profile's window and surrounding context (input pixels).
        check: how many photos the full tiled-vs-whole check runs on (default: all).
        overlap: a fixed overlap to check instead of the measured one (still profiled).
        tile: the check's largest tile (default: a 64-pixel core, many seams per photo).
        check_side: crop the checked photos to at most this side (centre), to save time.
        profiled: ``profile_photos``' result, when already computed.

    Returns:
        The card's ``export.context`` record; its ``overlap`` is the measured one.

    Raises:
        ValueError: no overlap the window can hold meets the limit.
    """
    if not photos:
        raise ValueError("measuring the overlap needs at least one photo")
    if profiled is None:
        profiled = profile_photos(
            run,
            photos,
            scale=scale,
            multiple=multiple,
            window=window,
            reach=reach,
            limit=limit,
            log=log,
        )
    profiles, radii = profiled
    measured = needed_overlap(profiles, limit)
    overlap = measured if overlap is None else overlap
    worst = torch.stack(profiles).amax(0)
    tile = tile or small_tile(overlap, blend, multiple)
    checked = photos if check is None else photos[:check]
    diffs = {}
    for name, image in checked:
        if check_side:
            image = centre_crop(image, check_side)
        diffs[name] = tiled_vs_whole(
            run,
            image,
            scale=scale,
            multiple=multiple,
            overlap=overlap,
            blend=blend,
            tile=tile,
            reach=reach,
        )
    worst_name = max(diffs, key=diffs.get)
    record = {
        "overlap": overlap,
        "measured_overlap": measured,
        "blend": blend,
        "limit": round(limit, 6),
        "method": (
            f"edge profile: a {window}-px window of each photo run alone and inside "
            f"{reach} px more of the photo, on the model's {multiple}-px grid; overlap = the "
            f"smallest distance from the window edge past which no photo differs by more than "
            f"the limit. Checked: tiles of at most {tile} px through the planner against one "
            f"run with {reach} px more context than the overlap, every pixel of "
            + ("every photo" if not check_side else f"the central {check_side} px of each photo")
        ),
        "photos": [name for name, _ in photos],
        "profile_max_by_distance": [round(float(v), 6) for v in worst[: overlap + 9]],
        "max_abs_at_overlap": round(float(worst[overlap:].max()), 6),
        "perturbation_radius": {"max": max(radii), "median": int(np.median(radii))},
        "check": {
            "tile": tile,
            "photos": len(diffs),
            "max_abs_tiled_vs_whole": round(diffs[worst_name], 6),
            "worst_photo": worst_name,
            "limit": round(1 / 255, 6),
        },
    }
    log(
        f"overlap {overlap} (edge difference past it at most "
        f"{record['max_abs_at_overlap'] * 255:.3f}/255; one pixel moves outputs up to "
        f"{max(radii)} px away); tiles of {tile} vs whole on "
        f"{len(diffs)} photos: worst {diffs[worst_name] * 255:.3f}/255 ({worst_name})"
    )
    if diffs[worst_name] >= 1 / 255:
        raise ValueError(
            f"overlap {overlap}: tiles differ from the whole image by "
            f"{diffs[worst_name] * 255:.2f}/255 on {worst_name}"
        )
    return record


def overhead_table(
    tile: int, overlap: int, multiple: int, blend: int, sizes: Sequence[tuple[int, int]]
) -> dict[str, float]:
    """Model pixels per image pixel of one pass at each (h, w), for the record."""
    table = {}
    for h, w in sizes:
        rows, columns = plan_windows((h, w), tile, overlap, multiple, True, blend)
        table[f"{w}x{h}"] = round(rows.model_pixels * columns.model_pixels / (h * w), 4)
    return table
