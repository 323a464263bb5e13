"""Several models at once: every model card in the model folder is a model a request may pick.

Torch-free: finding the models and describing them (the listing) needs only their cards; loading
them is the engine's (``Enhancer``, which keeps at most ``max_loaded_models`` of them loaded).

The served folder is the one of the default model (``model_store/`` for ``make run``, the unpacked
archive for a TorchServe worker). What it serves, by name (the ``model`` option):
- the default model: a clean/restore pair is served as ``clean`` and ``restore`` (the pair's two
  ends; a request without ``model`` gets the pair blended at its ``denoise`` level, as before); a
  default model without a pair is served under its card's name;
- every other ``NAME.pt`` with its card ``NAME.json`` in that folder or one level below it
  (``model_store/realesrgan-x4/realesrgan-x4.pt``, as ``scripts.export`` writes them; the archive
  ships them under ``models/``), under its card's name. The face model (``face.pt``) is the face
  path's own and is not listed. Hidden files and folders are left alone.

Names are the cards' ``name`` fields: letters, digits, ``.``, ``_`` and ``-`` (at most 64), unique
in the folder; a card that breaks either rule refuses the start with the two files named.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from enhancer.card import ModelCard
from enhancer.contract import FACE_FILE, MODEL_ROLES, NATIVE_FILE

__all__ = ["Entry", "build", "find_models", "listing", "quality_summary"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One served model.

    Attributes:
        name: what the ``model`` option says to pick it.
        card: its card.
        path: its TorchScript file.
        role: "clean" or "restore" (an end of the default pair), "default" (the default model,
            served without a pair) or "extra" (any other card in the folder: loaded on demand).
    """

    name: str
    card: ModelCard
    path: Path
    role: str

    @property
    def default(self) -> bool:
        """Whether this model is loaded with the worker (the default model or its pair)."""
        return self.role != "extra"


def find_models(folder: str | Path, skip: Iterable[str | Path] = ()) -> list[Path]:
    """The ``.pt`` files with a card beside them in ``folder`` and its sub-folders (one level),
    in a stable order, without ``skip`` (the default model, its pair), the face model and the
    native 4x model (both used by the default model, not named by requests)."""
    folder = Path(folder)
    skipped = {Path(path).resolve() for path in skip}
    found = []
    for path in sorted(folder.glob("*.pt")) + sorted(folder.glob("*/*.pt")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.name in (FACE_FILE, NATIVE_FILE) and path.parent == folder:
            continue  # the face path's model and the native 4x pass's are not served by name
        if path.resolve() in skipped or not path.with_suffix(".json").is_file():
            continue
        found.append(path)
    return found


def build(
    model: Path,
    card: ModelCard,
    restore: Path | None = None,
    restore_card: ModelCard | None = None,
    extras: Sequence[Path] = (),
) -> dict[str, Entry]:
    """The served models by name: the default model (or its pair's two ends), then ``extras``.

    Raises:
        ValueError: a card that cannot be read, a name that is not valid, or two models with one
            name (the message names the files).
    """
    entries: dict[str, Entry] = {}
    if restore is not None:
        clean_name, restore_name = MODEL_ROLES
        entries[clean_name] = Entry(clean_name, card, Path(model), clean_name)
        entries[restore_name] = Entry(restore_name, restore_card or card, Path(restore), "restore")
    else:
        _check_name(card.name, Path(model))
        entries[card.name] = Entry(card.name, card, Path(model), "default")
    for path in extras:
        path = Path(path)
        try:
            extra = ModelCard.load(path.with_suffix(".json"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path.with_suffix('.json')}: {error}") from None
        _check_name(extra.name, path)
        if extra.name in entries:
            other = entries[extra.name].path
            raise ValueError(
                f"two served models are named '{extra.name}': {other} and {path} (the name is "
                "the card's 'name'; clean and restore are the default pair's): rename one"
            )
        entries[extra.name] = Entry(extra.name, extra, path, "extra")
    return entries


def _check_name(name: str, path: Path) -> None:
    if not NAME.fullmatch(name):
        raise ValueError(
            f"{path.with_suffix('.json')}: the card's name {name!r} cannot name a model: use "
            "letters, digits, '.', '_' and '-' (at most 64)"
        )


def quality_summary(card: ModelCard) -> list[dict[str, Any]] | None:
    """The measured quality the card records (``scripts.evaluate --write-card``), one row per
    track, set and scale: Y-PSNR (dB) and SSIM of the model and of bicubic; None when the card
    records none."""
    quality = card.extra.get("quality")
    results = quality.get("results") if isinstance(quality, dict) else None
    if not isinstance(results, list):
        return None
    rows = []
    for result in results:
        if not isinstance(result, dict) or not isinstance(result.get("model"), dict):
            continue
        model = result["model"]
        bicubic = result.get("bicubic") if isinstance(result.get("bicubic"), dict) else {}
        rows.append(
            {
                "track": result.get("track"),
                "set": result.get("set"),
                "scale": result.get("scale"),
                "psnr": model.get("psnr"),
                "ssim": model.get("ssim"),
                "bicubic_psnr": bicubic.get("psnr"),
            }
        )
    return rows or None


def listing(entries: dict[str, Entry], loaded: Iterable[str] = ()) -> list[dict[str, Any]]:
    """What the listing says of each served model (TorchServe's ``customizedMetadata``, the page's
    ``GET /models``): name, version, scale, whether it is the default (loaded with the worker),
    whether it is loaded now, and its measured quality."""
    loaded = set(loaded)
    return [
        {
            "name": entry.name,
            "version": entry.card.version,
            "scale": entry.card.scale,
            "default": entry.default,
            "loaded": entry.default or entry.name in loaded,
            "quality": quality_summary(entry.card),
        }
        for entry in entries.values()
    ]
