"""Export a trained model to the served pair: TorchScript ``.pt`` + JSON card, and prove the trace.

    # a model trained by scripts/train.py (the shipped default)
    .venv/bin/python -m scripts.export --weights runs/default/model.pth \
        --out model_store/enhancer.pt --tile 256 --overlap auto \
        --photos ../shared/data/train/wiki ../shared/data/train/skimage

    # a fastai-course DynamicUnet: the pickled learner from learn.export() ...
    .venv/bin/python -m scripts.export --learner export.pkl --out model_store/mine.pt --tile 256
    # ... or the weights from learn.save("stage2") (models/stage2.pth) and the body it was built on
    .venv/bin/python -m scripts.export --fastai-weights models/stage2.pth --body resnet34 \
        --out model_store/mine.pt --tile 256

    # bring your own model: any .pth the spandrel library loads (Real-ESRGAN, SwinIR, HAT, DAT...)
    .venv/bin/python -m scripts.export --spandrel RealESRGAN_x4plus.pth --name realesrgan-x4 \
        --license BSD-3-Clause --out model_store/realesrgan-x4.pt --tile 256 --overlap auto \
        --photos photo.png

The exported module takes and returns RGB in [0, 1] (N, 3, h, w): a course model, trained on
ImageNet-normalised images on both sides, is wrapped with that normalisation (``--in-norm``,
``--out-norm``). The trace is proved before anything is written: traced equals eager (atol 1e-4)
on fresh inputs at the served tile and at one other size, the saved file reloads and agrees, the
output has the right shape and is finite and in [0, 1]. Any failure exits with status 1.

A spandrel model is checked to be an RGB image-to-image model (3 channels in and out, scale 1, 2,
3, 4 or 8; face-restoration and inpainting models are refused, naming why) and its scale and
multiple (spandrel's size requirements) are verified on the eager model; its output is clamped to
[0, 1], as spandrel does. Whether the trace is valid at other sizes is measured (equal to eager at
two other sizes: the card's ``dynamic``); a trace that froze a size (a padding computed in
Python) is served at its tile only. float16/bfloat16 go on the card only where spandrel says the
architecture supports them and the check below passes. The card records the architecture, the
source file's sha256 and the licence.

``--overlap auto`` measures the context the tiles need on the photos (scripts/ops/overlap.py: how
far a window's edge reaches in, worst case over the photos, then tiles through the planner checked
against one whole-image run on every photo, within 1/255) and records it under the card's
``export.context``; a fixed ``--overlap`` with photos is checked the same way. Re-measure a model
already exported, without touching it, with ``python -m scripts.overlap``.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from scripts.model.tracing import ExportError, export


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m scripts.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--spandrel",
        metavar="MODEL.pth",
        help="any model the spandrel library loads (.pth, .safetensors): Real-ESRGAN and its "
        "compact models, SwinIR, HAT, DAT, ... (needs the 'export' extra); "
        "give --name and --license",
    )
    src.add_argument("--weights", help="model.pth or ckpt*.pth written by scripts/train.py")
    src.add_argument(
        "--learner",
        help="a fastai learner pickled by learn.export() (export.pkl); "
        "unpickling runs code: only load files you trust",
    )
    src.add_argument(
        "--fastai-weights", help="weights saved by fastai's learn.save() (models/NAME.pth)"
    )
    ap.add_argument(
        "--body", default="resnet34", help="--fastai-weights: the DynamicUnet's ResNet body"
    )
    ap.add_argument(
        "--self-attention", action="store_true", help="--fastai-weights: built with self-attention"
    )
    ap.add_argument(
        "--no-blur", action="store_true", help="--fastai-weights: built with blur=False"
    )
    ap.add_argument(
        "--in-norm",
        default="imagenet",
        choices=("imagenet", "none"),
        help="course models: how the input was normalised in training",
    )
    ap.add_argument(
        "--out-norm",
        default="imagenet",
        choices=("imagenet", "none"),
        help="course models: how the targets were normalised in training",
    )
    ap.add_argument(
        "--out", default="model_store/enhancer.pt", help="TorchScript file (card: same name .json)"
    )
    ap.add_argument("--name", default="enhancer", help="card name")
    ap.add_argument("--version", default="1.0.0", help="card version")
    ap.add_argument(
        "--license",
        help="--spandrel: the model's licence, written to the card (default: unknown)",
    )
    ap.add_argument(
        "--tile", type=int, default=256, help="served tile side in input pixels (traced at this)"
    )
    ap.add_argument(
        "--other-size",
        type=int,
        help="second input side proved (default: tile/2 + multiple for dynamic models, "
        "else tile + 2*multiple)",
    )
    ap.add_argument(
        "--overlap",
        default="32",
        help="context pixels per tile edge, or 'auto': measured on --photos",
    )
    ap.add_argument(
        "--photos",
        "--seam-image",
        dest="photos",
        nargs="+",
        help="real photos (files or folders): measure the overlap (auto) or check the given one; "
        "tiles must stay within 1/255 of the whole image on every photo",
    )
    ap.add_argument(
        "--blend", type=int, default=4, help="cross-fade pixels between tiles (default 4)"
    )
    ap.add_argument(
        "--check-photos",
        type=int,
        default=None,
        help="photos the full tiled-vs-whole check runs on (default: all)",
    )
    ap.add_argument("--atol", type=float, default=1e-4, help="traced vs eager tolerance")
    ap.add_argument(
        "--train-args", help="args.yaml of the run (default: beside --weights), copied to the card"
    )
    args = ap.parse_args(argv)

    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates TorchScript for torch.export, but TorchServe and Triton load
            # TorchScript: the contract's format until they move
            warnings.filterwarnings(
                "ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning
            )
            return export(args)
    except ExportError as error:
        print(f"EXPORT FAILED: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
