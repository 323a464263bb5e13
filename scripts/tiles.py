"""Check that the served engine's tiles equal a whole-image run, on the eval sets.

    .venv/bin/python -m scripts.tiles                                  # both shipped models
    .venv/bin/python -m scripts.tiles --models model_store/enhancer.pt --scales 2 --tiles 256

For each model, set, scale and tile: every image's low-resolution input (the evaluation's: PIL
bicubic downscale by the scale) goes through ``Enhancer.upscale`` as the service runs it (tiles of
at most ``tile``, 2x passes), and through the same passes run untiled (``whole_apply``: one model
call per pass with 64 pixels more reflected context than the card's overlap, on the same backend).
Printed per set: the worst float difference, in 8-bit levels, and the worst difference of the
8-bit outputs the service would encode. The target: under 1 level float, at most 1 level 8-bit.

The default tile leaves a 128-pixel core after the overlap and blend (``--tiles`` to choose): seams
every ~128 pixels on every image, a harder case than the served tile, under which the planner runs
most eval images whole (one window per pass: the count is printed). The reference's extra context
(``--reach``, default 16) makes the image borders part of the check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

DEFAULT_SETS = tuple(f"../shared/data/eval/{name}" for name in ("set5", "set14", "b100", "kodak24"))
DEFAULT_MODELS = ("model_store/enhancer.pt", "model_store/restore.pt")


def whole_upscale(engine, rgb: torch.Tensor, scale: float, reach: int = 16) -> torch.Tensor:
    """``engine.upscale`` without tiles: each pass one model call on the whole image."""
    from enhancer.imaging.planes import resize
    from enhancer.passes import plan_passes
    from enhancer.tiling import whole_apply

    card = engine.card
    reach = -(-reach // card.multiple) * card.multiple
    height, width = rgb.shape[1:]
    current = rgb.float()
    for step in plan_passes(width, height, scale, model_scale=card.scale):
        source = resize(current, step.dst) if card.scale == 1 else current
        with torch.inference_mode():
            out = whole_apply(
                source,
                engine.runner,
                scale=card.scale,
                context=card.overlap + reach,
                multiple=card.multiple,
            )
        current = resize(out.clamp(0, 1), step.dst)
    return current


def served_windows(engine, width: int, height: int, scale: float) -> int:
    """The most windows one pass of this image takes at the engine's served tile."""
    from enhancer.passes import plan_passes
    from enhancer.tiling import plan_windows

    card = engine.card
    most = 0
    for step in plan_passes(width, height, scale, model_scale=card.scale):
        w, h = step.dst if card.scale == 1 else step.src
        rows, columns = plan_windows(
            (h, w), engine.tile, card.overlap, card.multiple, card.dynamic, card.blend
        )
        most = max(most, len(rows.starts) * len(columns.starts))
    return most


def check(
    model: Path, sets: list[str], scales: list[int], tiles: list[int] | None, reach: int
) -> list[dict]:
    from PIL import Image

    from enhancer.engine import Enhancer
    from scripts.ops.overlap import load_photo, photo_paths, small_tile

    engine = Enhancer.load(model, device="cpu")
    card = engine.card
    blend = card.overlap if card.blend is None else card.blend
    tiles = tiles or [small_tile(card.overlap, blend, card.multiple, core=128)]
    print(
        f"{model}: overlap {card.overlap}, blend {card.blend}, backend {engine.runner.backend}, "
        f"served tile {engine.tile}, checking tiles {tiles}",
        flush=True,
    )
    rows = []
    for folder in sets:
        for scale in scales:
            worst = {tile: (0.0, 0, "") for tile in tiles}
            windows = 0
            started = time.perf_counter()
            paths = photo_paths([folder])
            for path in paths:
                hr = load_photo(path)
                image = Image.fromarray((hr.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
                lr = image.resize((image.width // scale, image.height // scale), Image.BICUBIC)
                x = load_photo_from(lr)
                windows = max(windows, served_windows(engine, lr.width, lr.height, scale))
                whole = whole_upscale(engine, x, float(scale), reach)
                for tile in tiles:
                    tiled = engine.upscale(x, float(scale), tile=tile)
                    diff = float((tiled - whole).abs().max()) * 255
                    levels = int(((tiled * 255).round() - (whole * 255).round()).abs().max().item())
                    if (diff, levels) > worst[tile][:2]:
                        worst[tile] = (diff, levels, path.name)
            seconds = time.perf_counter() - started
            for tile in tiles:
                diff, levels, name = worst[tile]
                row = {
                    "model": model.name,
                    "set": Path(folder).name,
                    "scale": scale,
                    "tile": tile,
                    "images": len(paths),
                    "max_float_levels": round(diff, 4),
                    "max_8bit_levels": levels,
                    "worst_image": name,
                    "served_tile_windows_max": windows,
                    "ok": diff < 1 and levels <= 1,
                }
                rows.append(row)
                print(
                    f"  {row['set']:8s} x{scale} tile {tile:4d}: {len(paths):3d} images, worst "
                    f"{diff:.3f} levels float, {levels} level(s) 8-bit ({name}) "
                    f"{'ok' if row['ok'] else 'OVER'}  [{seconds:.0f} s; served tile "
                    f"{engine.tile}: at most {windows} window(s) per pass]",
                    flush=True,
                )
    return rows


def load_photo_from(image) -> torch.Tensor:
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.tiles",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", type=Path, default=[Path(m) for m in DEFAULT_MODELS])
    parser.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS))
    parser.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--tiles", nargs="+", type=int, default=None)
    parser.add_argument(
        "--reach", type=int, default=16, help="the reference's context beyond the overlap"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        rows += check(model, args.sets, args.scales, args.tiles, args.reach)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    bad = [row for row in rows if not row["ok"]]
    print("PASS: tiles equal the whole image within 1/255" if not bad else f"FAIL: {len(bad)} rows")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
