"""Check that the served engine's tiles equal a whole-image run, on the eval sets.

    .venv/bin/python -m scripts.tiles                                  # both shipped models
    .venv/bin/python -m scripts.tiles --models model_store/enhancer.pt --scales 2 --tiles 256

For each model, set, scale and tile: every image's low-resolution input (the evaluation's: PIL
bicubic downscale by the scale) goes through ``Enhancer.upscale`` as the service runs it (tiles of
at most ``tile``, 2x passes), and through the same passes run untiled (``whole_apply``: one model
call per pass with 64 pixels more reflected context than the card's overlap, on the same backend).
Printed per set: the worst float difference, in 8-bit levels, and the worst difference of the
8-bit outputs the service would encode. The target: under 1 level float, at most 1 level 8-bit.
Tiles default to the card's tile and the tile the engine serves with here (OpenVINO: larger).
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


def whole_upscale(engine, rgb: torch.Tensor, scale: float, reach: int = 64) -> torch.Tensor:
    """``engine.upscale`` without tiles: each pass one model call on the whole image."""
    from enhancer.imaging.planes import resize
    from enhancer.passes import plan_passes
    from enhancer.tiling import whole_apply

    card = engine.card
    reach = -(-reach // card.multiple) * card.multiple
    height, width = rgb.shape[1:]
    current = rgb.float()
    for step in plan_passes(width, height, scale):
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


def check(model: Path, sets: list[str], scales: list[int], tiles: list[int] | None) -> list[dict]:
    from PIL import Image

    from enhancer.engine import Enhancer
    from scripts.ops.overlap import load_photo, photo_paths

    engine = Enhancer.load(model, device="cpu")
    card = engine.card
    tiles = tiles or sorted({card.tile, engine.tile})
    print(
        f"{model}: overlap {card.overlap}, blend {card.blend}, backend {engine.runner.backend}, "
        f"served tile {engine.tile}, checking tiles {tiles}",
        flush=True,
    )
    rows = []
    for folder in sets:
        for scale in scales:
            worst = {tile: (0.0, 0, "") for tile in tiles}
            started = time.perf_counter()
            paths = photo_paths([folder])
            for path in paths:
                hr = load_photo(path)
                image = Image.fromarray((hr.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
                lr = image.resize((image.width // scale, image.height // scale), Image.BICUBIC)
                x = load_photo_from(lr)
                whole = whole_upscale(engine, x, float(scale))
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
                    "ok": diff < 1 and levels <= 1,
                }
                rows.append(row)
                print(
                    f"  {row['set']:8s} x{scale} tile {tile:4d}: {len(paths):3d} images, worst "
                    f"{diff:.3f} levels float, {levels} level(s) 8-bit ({name}) "
                    f"{'ok' if row['ok'] else 'OVER'}  [{seconds:.0f} s]",
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
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        rows += check(model, args.sets, args.scales, args.tiles)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    bad = [row for row in rows if not row["ok"]]
    print("PASS: tiles equal the whole image within 1/255" if not bad else f"FAIL: {len(bad)} rows")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
