"""Build the TorchServe archive (.mar) of a model: handler, engine modules, card and config.

    .venv/bin/python scripts/archive.py      # model_store/enhancer.pt -> model_store/enhancer.mar
    .venv/bin/python scripts/archive.py --model runs/x/enhancer.pt --name x --export-path /tmp/store
    .venv/bin/python scripts/archive.py --force --store      # rebuild now, without compression

What goes in: ``handlers/enhancer_handler.py`` as the handler, every other ``handlers/*.py`` as
``--extra-files`` (TorchServe imports them flat beside the handler), the model's card
(``<model>.json``, which the handler reads beside the .pt) and ``handlers/model-config.yaml``.
The card's sha256 must match the .pt, or nothing is built: the handler would refuse it at start-up.
The archive is rebuilt only when an input is newer than it (or with ``--force``). At the end the
script lists what the .mar holds and prints its sha256, so a deployment can record it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HANDLERS = REPO / "handlers"
HANDLER = HANDLERS / "enhancer_handler.py"
MODEL_CONFIG = HANDLERS / "model-config.yaml"
MODEL_STORE = REPO / "model_store"
DEFAULT_MODEL = MODEL_STORE / "enhancer.pt"

sys.path.insert(0, str(HANDLERS))  # the card module ships in the archive and imports flat
from card import ModelCard, file_sha256  # noqa: E402


class ArchiveError(Exception):
    """The archive cannot be built (missing input, a card that does not match its model, ...)."""


def engine_modules() -> list[Path]:
    """The modules shipped beside the handler: every ``handlers/*.py`` except the handler itself."""
    return sorted(p for p in HANDLERS.glob("*.py") if p != HANDLER)


def archive_inputs(model: Path, config_file: Path = MODEL_CONFIG) -> list[Path]:
    """Every file the archive of ``model`` is built from."""
    return [model, model.with_suffix(".json"), config_file, HANDLER, *engine_modules()]


def is_stale(
    mar: Path,
    model: Path,
    *,
    name: str = "enhancer",
    version: str | None = None,
    config_file: Path = MODEL_CONFIG,
) -> bool:
    """Whether ``mar`` must be (re)built for ``model``.

    It must when it is missing, older than any input, or holds other files than the inputs: every
    member but the model itself is compared byte for byte (the model is covered by its card's
    sha256, checked against the .pt at build time), and so are the manifest's name and version.
    """
    model, config_file = Path(model), Path(config_file)
    inputs = archive_inputs(model, config_file)
    if not mar.exists() or any(path.stat().st_mtime > mar.stat().st_mtime for path in inputs):
        return True
    try:
        with zipfile.ZipFile(mar) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            if (
                manifest["model"]["modelName"] != name
                or manifest["model"]["serializedFile"] != model.name
            ):
                return True
            if version is not None and manifest["model"]["modelVersion"] != version:
                return True
            return any(
                archive.read(path.name) != path.read_bytes() for path in inputs if path != model
            )
    except (KeyError, ValueError, zipfile.BadZipFile):
        return True


def load_verified_card(model: Path) -> ModelCard:
    """Read the card beside ``model`` and check its sha256 against the model file.

    Raises:
        ArchiveError: the model or card is missing or invalid, or the digests differ.
    """
    card_path = model.with_suffix(".json")
    for path in (model, card_path):
        if not path.is_file():
            raise ArchiveError(
                f"{path} not found: a model is a TorchScript .pt with its card .json beside it"
            )
    try:
        card = ModelCard.load(card_path)
        card.verify(model)
    except ValueError as error:
        raise ArchiveError(f"{card_path}: {error}") from None
    return card


def build_archive(
    model: Path = DEFAULT_MODEL,
    *,
    name: str = "enhancer",
    version: str | None = None,
    export_path: Path = MODEL_STORE,
    config_file: Path = MODEL_CONFIG,
    store: bool = False,
    force: bool = False,
) -> Path:
    """Build ``<export_path>/<name>.mar`` unless it is newer than all of its inputs.

    Args:
        model: the TorchScript file; its card is the same path with a .json suffix.
        name: the model name TorchServe serves it under (``/predictions/<name>``).
        version: the archive's version; default: the card's ``version``.
        export_path: the folder the .mar is written to (created if missing).
        config_file: the per-model TorchServe config (batch size, timeouts, ``handler:`` limits).
        store: store files uncompressed (a TorchScript file hardly compresses; faster to build).
        force: rebuild even when the archive is up to date.

    Returns:
        The path of the .mar.

    Raises:
        ArchiveError: a missing input, a card that does not match its model, or an archiver failure.
    """
    model = Path(model).resolve()
    config_file = Path(config_file).resolve()
    export_path = Path(export_path).resolve()
    card = load_verified_card(model)
    if not config_file.is_file():
        raise ArchiveError(f"{config_file} not found")
    mar = export_path / f"{name}.mar"
    if not force and not is_stale(mar, model, name=name, version=version, config_file=config_file):
        return mar
    export_path.mkdir(parents=True, exist_ok=True)
    extra = [*engine_modules(), model.with_suffix(".json")]
    archiver = shutil.which(
        "torch-model-archiver", path=str(Path(sys.executable).parent)
    ) or shutil.which("torch-model-archiver")
    if archiver is None:
        raise ArchiveError(
            "torch-model-archiver not found: run `make setup` (scripts/setup.sh serve)"
        )
    command = [
        archiver,
        "--model-name",
        name,
        "--version",
        version or card.version,
        "--serialized-file",
        str(model),
        "--handler",
        str(HANDLER),
        "--extra-files",
        ",".join(str(p) for p in extra),
        "--config-file",
        str(config_file),
        "--export-path",
        str(export_path),
        "--archive-format",
        "zip-store" if store else "default",
        "--force",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ArchiveError(
            f"torch-model-archiver failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    return mar


def describe(mar: Path) -> str:
    """A listing of the archive: each member with its size, then the archive's sha256."""
    lines = [f"{mar}:"]
    with zipfile.ZipFile(mar) as archive:
        for info in archive.infolist():
            lines.append(f"  {info.file_size:>12,}  {info.filename}")
    lines.append(f"sha256 {file_sha256(mar)}  {mar.name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        metavar="PT",
        help="TorchScript model with its card (.json) beside it (default: %(default)s)",
    )
    parser.add_argument(
        "--name",
        default="enhancer",
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
    try:
        load_verified_card(args.model)
        stale = args.force or is_stale(
            mar, args.model, name=args.name, version=args.version, config_file=args.config_file
        )
        mar = build_archive(
            args.model,
            name=args.name,
            version=args.version,
            export_path=args.export_path,
            config_file=args.config_file,
            store=args.store,
            force=args.force,
        )
    except ArchiveError as error:
        print(f"archive: {error}", file=sys.stderr)
        return 1
    print(f"archive: {'built' if stale else 'up to date'}: {mar}")
    print(describe(mar))
    return 0


if __name__ == "__main__":
    sys.exit(main())
