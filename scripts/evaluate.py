"""Measure a model the way super-resolution papers do, through the engine the server runs.

    .venv/bin/python -m scripts.evaluate --model model_store/enhancer.pt \
        --sets ../shared/data/eval/set5 ../shared/data/eval/set14 ../shared/data/eval/b100 \
               ../shared/data/eval/kodak24 --scales 2 4 --out runs/eval.md --write-card

    # a training checkpoint, straight through the eager model on whole images (not the engine):
    .venv/bin/python -m scripts.evaluate --checkpoint runs/default/ckpt_020.pth \
        --sets ../shared/data/eval/set5 ../shared/data/eval/set14 --scales 2

Conventions (those of the published tables in ../shared/data/README.md): HR cropped to a multiple
of the scale; LR = PIL ``Image.BICUBIC`` downscale (antialiased); outputs quantised to 8 bits;
PSNR and SSIM on the Y channel of ITU-R BT.601 (Y = 16 + 65.481 R + 128.553 G + 24.966 B, RGB in
[0, 1]), ``scale`` pixels of border shaved; SSIM with an 11x11 Gaussian window, sigma 1.5
(Wang et al.).

Rows: ``bicubic`` (PIL bicubic upscale of the LR), ``model`` (``Enhancer.upscale``: tiled,
multi-pass, exactly as served), any ``--peer NAME=model.pt`` (through the engine too). A second
track, "real-world", degrades each HR image with scripts.model.crappify's REAL_WORLD mix and its own
fixed seed (blur, a varied downscale kernel, noise, JPEG) and scores the restoration against the HR
original. The scoring itself is ``scripts.model.evaluation``.

A third, "heavy", is what a phone photo saved small looks like: bicubic downscale, then
gaussian noise sigma U(10, 15)/255 and JPEG quality U(20, 30), seeded per image.

``--levels 2 3`` and ``--enhance-first`` add rows for the model run with the ``level`` and
``enhance_first`` options (``model L2``, ``model L1+first``, ...):

    .venv/bin/python -m scripts.evaluate --model model_store/enhancer.pt \
        --sets ../shared/data/eval/set5 --scales 2 --tracks heavy --levels 1 2 3 --enhance-first

Every method is also checked for colour: the mean of each RGB channel of its output must stay within
1/255 of the plain bicubic upscale's, on every image (a model must not tint). ``--sheets DIR``
writes one contact sheet per image (bicubic | each method | original, and a 4x zoomed crop of the
most detailed region of each) so a person can see the difference:

    .venv/bin/python -m scripts.evaluate --model model_store/enhancer.pt \
        --sets ../shared/data/eval/kodak24 --scales 2 --tracks heavy --sheets runs/sheets

``--lq FOLDER`` (with ``--sheets``) adds sheets of photos that have no original (bicubic | each
method | zoomed crop), e.g. the real low-quality faces, for a person to judge a sharpening model:

    .venv/bin/python -m scripts.evaluate --peer restore=model_store/restore.pt \
        --peer sharp=../runs/gan/sharp.pt --sets ../shared/data/eval/kodak24 --scales 2 \
        --tracks real_world --sheets runs/sheets --lq ../shared/data/faces/real_lq

``--native model_store/enhancer4.pt`` adds the row ``model 4x``: the engine with the native 4x
model beside ``--model`` (x4 is then one 4x pass; the ``model`` row keeps two 2x passes):

    .venv/bin/python -m scripts.evaluate --model model_store/enhancer.pt \
        --native model_store/enhancer4.pt --sets ../shared/data/eval/set5 \
        ../shared/data/eval/set14 --scales 4 --tracks bicubic real_world

``--restore model_store/restore.pt`` scores the clean/restore pair as served, one row per
``--denoise`` level (default 0, 0.5, 1): what the default level is chosen by.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from scripts.model import crappify
from scripts.model.evaluation import (
    direct_upscaler,
    engine_upscaler,
    evaluate,
    family_upscalers,
    lq_sheets,
    markdown,
    measure_speed,
    write_quality,
)


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m scripts.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", help="TorchScript model run through the engine (card beside it)")
    ap.add_argument("--card", help="its card, if not the model path with .json")
    ap.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=MODEL.pt",
        help="another served model to compare, through the engine (repeatable)",
    )
    ap.add_argument(
        "--native",
        metavar="MODEL4.pt",
        help="--model's native 4x model (enhancer4.pt): adds a row 'model 4x', the engine with it "
        "(one 4x pass for x4), beside 'model' (2x passes)",
    )
    ap.add_argument(
        "--checkpoint", help="a scripts/train.py checkpoint, run directly on whole images"
    )
    ap.add_argument(
        "--levels",
        nargs="+",
        type=int,
        default=[1],
        choices=(1, 2, 3, 4),
        help="run --model at these levels (the 'level' option; rows 'model L2', ...)",
    )
    ap.add_argument(
        "--enhance-first",
        action="store_true",
        help="also run each level with the 'enhance_first' option (rows 'model L1+first', ...)",
    )
    ap.add_argument("--sets", nargs="+", required=True, help="folders of HR images")
    ap.add_argument(
        "--scales", nargs="+", type=int, default=[2, 4], choices=(2, 3, 4), help="scales"
    )
    ap.add_argument(
        "--tracks",
        nargs="+",
        default=["bicubic", "real_world", "heavy"],
        choices=("bicubic", "real_world", "heavy"),
        help="which tracks to run",
    )
    ap.add_argument(
        "--seed", type=int, default=crappify.REAL_WORLD_SEED, help="real-world track seed"
    )
    ap.add_argument(
        "--restore",
        help="the restore model of --model's pair: adds a row per --denoise level, run as the "
        "server runs the pair",
    )
    ap.add_argument(
        "--denoise",
        type=float,
        nargs="+",
        default=[0.0, 0.5, 1.0],
        help="denoise levels to score with --restore (default: %(default)s)",
    )
    ap.add_argument("--device", default="cpu", help="device for the engine")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", help="write the markdown table here (it is printed too)")
    ap.add_argument("--sheets", help="write a contact sheet per image into this folder")
    ap.add_argument(
        "--lq",
        nargs="+",
        default=[],
        help="folders of photos without originals: contact sheets only (needs --sheets)",
    )
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument(
        "--speed-image", help="also time Enhancer.upscale at 2x on this image (output MP/s)"
    )
    ap.add_argument(
        "--write-card",
        action="store_true",
        help="store the table as the 'quality' field of the --model's card",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    methods, card = {}, None
    if args.model:
        for level in sorted(set(args.levels)):
            for first in (False, True) if args.enhance_first else (False,):
                name = "model" if level == 1 and not first else f"model L{level}"
                name += "+first" if first else ""
                methods[name], card = engine_upscaler(
                    args.model, args.card, args.device, level=level, enhance_first=first
                )
    if args.native:
        if not args.model:
            ap.error("--native needs --model (the 2x model it sits beside)")
        methods["model 4x"], _ = engine_upscaler(
            args.model, args.card, args.device, native_path=args.native
        )
    for spec in args.peer:
        name, _, path = spec.partition("=")
        methods[name], _ = engine_upscaler(path, None, args.device)
    if args.checkpoint:
        methods["checkpoint"] = direct_upscaler(args.checkpoint)
    if args.restore:
        if not args.model:
            ap.error("--restore needs --model (the clean model of the pair)")
        methods.update(family_upscalers(args.model, args.restore, args.denoise, args.device))
    if args.lq:
        if not args.sheets:
            ap.error("--lq needs --sheets")
        lq_sheets(args.lq, methods, args.scales[0], args.sheets)
    command = " ".join(["scripts/evaluate.py", *sys.argv[1:]])
    rows = evaluate(args.sets, args.scales, methods, args.tracks, args.seed, sheets=args.sheets)
    table = markdown(rows, list(methods), args.seed, command)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    speed = None
    if args.speed_image and args.model:
        speed = measure_speed(args.model, args.card, args.speed_image, args.device)
        print(f"speed: {speed}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.write_card:
        if not args.model:
            ap.error("--write-card needs --model")
        card_path = Path(args.card or Path(args.model).with_suffix(".json"))
        write_quality(card_path, rows, args.seed, speed, table, command)
        print(f"wrote quality into {card_path}")


if __name__ == "__main__":
    main()
