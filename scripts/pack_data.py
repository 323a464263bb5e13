"""Pack random high-resolution crops of the training photos into one uint8 ``.npy`` file, which
``scripts/train.py --pack`` reads instead of decoding the photos (seconds to start, one file to
carry to a GPU machine):

    .venv/bin/python scripts/pack_data.py --out runs/crops.npy                    # 60 MiB, 160 px
    .venv/bin/python scripts/pack_data.py --out runs/crops.npy --side 128 --max-mib 250

Crops are drawn with probability proportional to each photo's area (every photo gets at least one),
at random positions, seeded: the same seed and photos give the same file. The array is
``N x side x side x 3``; training takes its random patches (and flips/rotations) inside each crop.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from scripts.model import crappify

MIB = 1 << 20


def pack(images: list[np.ndarray], side: int, max_bytes: int, seed: int = 0) -> np.ndarray:
    """Random ``side``-pixel crops of ``images`` (HxWx3 uint8), as many as fit in ``max_bytes``
    (header excluded), at least one from each image big enough."""
    big = [im for im in images if min(im.shape[:2]) >= side]
    if not big:
        raise ValueError(f"no image is at least {side} pixels on its short side")
    n = max_bytes // (side * side * 3)
    if n < 1:
        raise ValueError(f"{max_bytes} bytes hold no {side}x{side} crop")
    rng = np.random.default_rng(seed)
    area = np.array([im.shape[0] * im.shape[1] for im in big], dtype=np.float64)
    # one crop per image first (while room remains), the rest in proportion to area
    first = rng.permutation(len(big))[:n]
    rest = rng.choice(len(big), size=n - len(first), p=area / area.sum())
    out = np.empty((n, side, side, 3), np.uint8)
    for k, i in enumerate(np.concatenate([first, rest])):
        im = big[int(i)]
        y = int(rng.integers(im.shape[0] - side + 1))
        x = int(rng.integers(im.shape[1] - side + 1))
        out[k] = im[y : y + side, x : x + side]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", nargs="+", default=["../shared/data/train"], help="folders/files of clean photos"
    )
    ap.add_argument("--out", required=True, help="the .npy file to write")
    ap.add_argument("--side", type=int, default=160, help="crop side in HR pixels")
    ap.add_argument("--max-mib", type=float, default=60.0, help="file size limit in MiB")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed, same file)")
    args = ap.parse_args()
    images = crappify.load_images(args.data)
    # room for the .npy header (128 bytes): the whole file stays under the limit
    crops = pack(images, args.side, int(args.max_mib * MIB) - 4096, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, crops)
    size = out.stat().st_size
    print(
        f"wrote {out}: {len(crops)} crops of {args.side}x{args.side} from {len(images)} photos, "
        f"{crops.shape[0] * args.side**2 / 1e6:.1f} MP, {size / MIB:.1f} MiB"
    )


if __name__ == "__main__":
    main()
