"""Measure the context (overlap) a served model's tiles need, on real photos, and record it.

    .venv/bin/python -m scripts.overlap --models model_store/enhancer.pt model_store/restore.pt \
        --write-card
    .venv/bin/python -m scripts.overlap --models model_store/mine.pt \
        --photos ../shared/data/train/wiki ../shared/data/train/skimage --blend 4 --write-card

Models named together are served as one family (the clean/restore pair, blended by ``denoise``):
they share one overlap and blend, the largest any of them needs, checked on each.

The method (scripts/ops/overlap.py): each photo's centre window run alone and inside more of the
photo, the difference by distance from the window edge; the overlap is the smallest distance past
which no photo differs by more than ``--limit`` (default 0.5/255), then tiles through the planner
are checked against one whole-image run on every photo. ``--write-card`` sets the card's
``overlap`` and ``blend`` and records the measurement under ``export.context``; the model file is
not touched, so the card's sha256 stays valid. ``scripts/export.py --overlap auto`` runs the same
measurement on every export.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from enhancer.card import ModelCard
from scripts.ops.overlap import (
    DEFAULT_LIMIT,
    load_photo,
    measure,
    needed_overlap,
    photo_paths,
    profile_photos,
)

DEFAULT_PHOTOS = ("../shared/data/train/wiki", "../shared/data/train/skimage")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.overlap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        nargs="+",
        type=Path,
        default=[Path("model_store/enhancer.pt"), Path("model_store/restore.pt")],
        help="models of one family (default: %(default)s)",
    )
    parser.add_argument(
        "--photos",
        nargs="+",
        default=list(DEFAULT_PHOTOS),
        help="photo files or folders (default: %(default)s; not the eval sets, which check it)",
    )
    parser.add_argument("--blend", type=int, default=4, help="cross-fade pixels (default: 4)")
    parser.add_argument(
        "--limit", type=float, default=DEFAULT_LIMIT * 255, help="levels (default: 0.5)"
    )
    parser.add_argument(
        "--check", type=int, default=None, help="photos for the full tiled-vs-whole check"
    )
    parser.add_argument(
        "--check-side", type=int, default=None, help="crop checked photos to this side"
    )
    parser.add_argument(
        "--window", type=int, default=96, help="edge-profile window side (default: 96)"
    )
    parser.add_argument(
        "--reach", type=int, default=48, help="context around that window (default: 48)"
    )
    parser.add_argument(
        "--every", type=int, default=1, help="use every N-th photo found (default: all)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument(
        "--backend", default="auto", help="CPU backend: auto, torchscript, openvino"
    )
    parser.add_argument("--write-card", action="store_true", help="record it in the model's card")
    args = parser.parse_args(argv)

    from enhancer.runner import ModelRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = photo_paths(args.photos)[:: args.every]
    photos = [(path.name, load_photo(path)) for path in paths]
    limit = args.limit / 255
    loaded = []
    for model in args.models:
        card_path = model.with_suffix(".json")
        card = ModelCard.load(card_path)
        card.verify(model)
        runner = ModelRunner(model, card, torch.device("cpu"), "float32", args.backend)
        print(f"{model} on {runner.backend}: {len(photos)} photos from {', '.join(args.photos)}")
        profiled = profile_photos(
            runner,
            photos,
            scale=card.scale,
            multiple=card.multiple,
            window=args.window,
            reach=args.reach,
            limit=limit,
        )
        loaded.append((model, card_path, card, runner, profiled))
    shared = max(needed_overlap(profiled[0], limit) for *_, profiled in loaded)
    command = "scripts/overlap.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for model, card_path, card, runner, profiled in loaded:
        print(f"{model}: checking overlap {shared}")
        record = measure(
            runner,
            photos,
            scale=card.scale,
            multiple=card.multiple,
            blend=args.blend,
            limit=limit,
            check=args.check,
            check_side=args.check_side,
            window=args.window,
            reach=args.reach,
            overlap=shared,
            profiled=profiled,
        )
        record["photos_from"] = list(args.photos)
        record["family"] = [m.name for m in args.models]
        record["backend"] = runner.backend
        record["command"] = command
        print(json.dumps({k: v for k, v in record.items() if k != "photos"}, indent=2))
        if args.write_card:
            write_card(card_path, record)
            print(f"wrote overlap {record['overlap']}, blend {record['blend']} to {card_path}")
    return 0


def write_card(card_path: Path, record: dict) -> None:
    """Set the card's overlap and blend from ``record`` and keep the record under
    ``export.context`` (replacing the older one-photo ``export.seam``); validated before writing."""
    data = json.loads(card_path.read_text())
    data["overlap"] = record["overlap"]
    data["blend"] = record["blend"]
    export = data.setdefault("export", {})
    export.pop("seam", None)
    export["context"] = record
    # keep the engine's fields first, as the exporter writes them
    order = ["name", "version", "scale", "multiple", "tile", "overlap", "blend", "dtypes"]
    data = {**{k: data[k] for k in order if k in data}, **data}
    ModelCard.from_dict(data)
    card_path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
