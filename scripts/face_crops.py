"""Write the face model's training images: augmented, aligned face crops from CelebA-HQ.

    .venv/bin/python -m scripts.face_crops --src ../shared/data/faces/celebahq \
        --out ../scratch-faces/crops --per-image 12 --size 512

CelebA-HQ images are already aligned faces (eyes level, face centred, the same framing in every
image), and the face path's 5-point template (``enhancer.faces.TEMPLATE``) is that framing, so a
CelebA-HQ image resized to ``--size`` is an aligned crop. The first ``HELD_OUT`` (16) images by
sorted name are held out for ``scripts.evaluate_faces`` and never written here. Each remaining
image gives ``--per-image`` crops, heavily augmented with a fixed seed: horizontal flip, rotation
within +-8 degrees, scale 0.9-1.1, shift within 3% of the side (so the model does not rely on
a perfect alignment), and colour jitter (brightness, contrast, saturation +-12%, gamma 0.85-1.15).
``scripts/train.py --data <out>`` then crappifies random crops of them as for any photo.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

HELD_OUT = 16
SUFFIXES = (".jpg", ".jpeg", ".png")


def split(src: Path) -> tuple[list[Path], list[Path]]:
    """(held-out, training) images of a CelebA-HQ folder: the first ``HELD_OUT`` by sorted name."""
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in SUFFIXES)
    return files[:HELD_OUT], files[HELD_OUT:]


def augment(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    w, h = img.size
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = math.radians(rng.uniform(-8, 8))
    s = rng.uniform(0.9, 1.1)
    dx, dy = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h
    # output pixel (x, y) -> source: rotate/scale about the centre, then shift
    c, sn = math.cos(angle) / s, math.sin(angle) / s
    cx, cy = w / 2, h / 2
    a, b = c, -sn
    d, e = sn, c
    coeffs = (a, b, cx - a * cx - b * cy + dx, d, e, cy - d * cx - e * cy + dy)
    img = img.transform(
        (w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC, fillcolor=None
    )
    # reflect-free fill: the corners are black; crop the centre 90% then resize
    m = int(0.05 * w)
    img = img.crop((m, m, w - m, h - m)).resize((size, size), Image.Resampling.LANCZOS)
    for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enh(img).enhance(rng.uniform(0.88, 1.12))
    g = rng.uniform(0.85, 1.15)
    arr = (np.asarray(img, dtype=np.float32) / 255.0) ** g
    return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m scripts.face_crops",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--src", default="../shared/data/faces/celebahq")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-image", type=int, default=12)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    held, train = split(Path(args.src))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    n = 0
    for p in train:
        img = Image.open(p).convert("RGB")
        for k in range(args.per_image):
            augment(img, args.size, rng).save(out / f"{p.stem}_{k:02d}.png")
            n += 1
    print(
        f"held out {len(held)} ({held[0].name} .. {held[-1].name}); "
        f"wrote {n} crops from {len(train)} images to {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
