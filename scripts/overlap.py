"""Measure the context (overlap) a served model's tiles need, on real photos, and record it.

    .venv/bin/python -m scripts.overlap --model model_store/enhancer.pt --write-card
    .venv/bin/python -m scripts.overlap --model model_store/restore.pt \
        --photos ../shared/data/train/wiki ../shared/data/train/skimage --blend 4 --write-card

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
from scripts.ops.overlap import DEFAULT_LIMIT, load_photo, measure, photo_paths

DEFAULT_PHOTOS = ("../shared/data/train/wiki", "../shared/data/train/skimage")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.overlap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=Path("model_store/enhancer.pt"))
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
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument(
        "--backend", default="auto", help="CPU backend: auto, torchscript, openvino"
    )
    parser.add_argument("--write-card", action="store_true", help="record it in the model's card")
    args = parser.parse_args(argv)

    from enhancer.runner import ModelRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    card_path = args.model.with_suffix(".json")
    card = ModelCard.load(card_path)
    card.verify(args.model)
    runner = ModelRunner(args.model, card, torch.device("cpu"), "float32", args.backend)
    paths = photo_paths(args.photos)
    photos = [(path.name, load_photo(path)) for path in paths]
    print(f"{args.model} on {runner.backend}: {len(photos)} photos from {', '.join(args.photos)}")
    record = measure(
        runner,
        photos,
        scale=card.scale,
        multiple=card.multiple,
        blend=args.blend,
        limit=args.limit / 255,
        check=args.check,
    )
    record["photos_from"] = list(args.photos)
    record["backend"] = runner.backend
    record["command"] = "scripts/overlap.py " + " ".join(argv if argv is not None else sys.argv[1:])
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
