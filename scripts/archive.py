"""Build the TorchServe archive (.mar) of a model (the work is ``scripts.ops.archive``'s).

    .venv/bin/python -m scripts.archive      # model_store/enhancer.pt -> model_store/enhancer.mar
    .venv/bin/python -m scripts.archive --model runs/x/enhancer.pt --name x --export-path /tmp/store
    .venv/bin/python -m scripts.archive --force --store      # rebuild now, without compression

The archive holds the handler, the ``enhancer`` package folder, the model, its card and
``handlers/model-config.yaml``, the restore and face models beside it, and every other model with
its card in its folder or one level down (under ``models/``, served by name: the ``model``
option; ``--no-extra-models`` leaves them out); it is rebuilt only when an input changed. At the
end the command lists what the .mar holds and prints its sha256, so a deployment can record it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enhancer.contract import MODEL_NAME
from scripts.ops import archive
from scripts.ops.paths import DEFAULT_MODEL, MODEL_CONFIG, MODEL_STORE, restore_beside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.archive",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        metavar="PT",
        help="TorchScript model with its card (.json) beside it (default: %(default)s)",
    )
    parser.add_argument(
        "--restore",
        type=Path,
        default=None,
        metavar="PT",
        help="a restore model of the same family, shipped beside --model: enables `denoise` "
        "(default: restore.pt in --model's folder, when it is there with its card)",
    )
    parser.add_argument(
        "--no-restore", action="store_true", help="archive --model alone, even with a restore.pt"
    )
    parser.add_argument(
        "--no-extra-models",
        action="store_true",
        help="archive --model (and its pair) only; by default every other model with its card in "
        "--model's folder or one level down is shipped too, served by name (the `model` option)",
    )
    parser.add_argument(
        "--name",
        default=MODEL_NAME,
        help="model name served as /predictions/NAME (default: %(default)s)",
    )
    parser.add_argument(
        "--version", default=None, help="archive version (default: the card's version)"
    )
    parser.add_argument(
        "--export-path",
        type=Path,
        default=MODEL_STORE,
        metavar="DIR",
        help="folder to write NAME.mar to (default: %(default)s)",
    )
    parser.add_argument(
        "--config-file",
        type=Path,
        default=MODEL_CONFIG,
        metavar="YAML",
        help="per-model TorchServe config (default: %(default)s)",
    )
    parser.add_argument(
        "--store", action="store_true", help="store files without compression (faster)"
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if the archive is up to date"
    )
    args = parser.parse_args(argv)
    mar = args.export_path / f"{args.name}.mar"
    if args.no_restore:
        args.restore = None
    elif args.restore is None:
        args.restore = restore_beside(args.model)
    try:
        archive.load_verified_card(args.model)
        extras = {} if args.no_extra_models else archive.extra_models(args.model, args.restore)
        stale = args.force or archive.is_stale(
            mar,
            args.model,
            name=args.name,
            version=args.version,
            config_file=args.config_file,
            restore=args.restore,
            extras=extras,
        )
        mar = archive.build_archive(
            args.model,
            name=args.name,
            version=args.version,
            export_path=args.export_path,
            config_file=args.config_file,
            store=args.store,
            force=args.force,
            restore=args.restore,
            extras=extras,
        )
    except archive.ArchiveError as error:
        print(f"archive: {error}", file=sys.stderr)
        return 1
    print(f"archive: {'built' if stale else 'up to date'}: {mar}")
    print(archive.describe(mar))
    return 0


if __name__ == "__main__":
    sys.exit(main())
