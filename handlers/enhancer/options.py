"""Request options: parse and check ``scale`` (a number or ``auto``), ``format``, ``quality``,
``tile``, ``strength``, ``denoise``, ``level``, ``enhance_first``, ``compare``, ``metadata``,
``faces`` and ``model``.

The names and formats are the contract's (``enhancer.contract``); how they arrive (form fields,
headers) is the adapters' business (``enhancer.serving``). Anything unknown is an error that names
it, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from enhancer.card import ModelCard
from enhancer.contract import (
    FACES_DEFAULT,
    FACES_MODES,
    FALSE_WORDS,
    FORMAT_ALIASES,
    FORMATS,
    LEVELS,
    METADATA_DEFAULT,
    METADATA_MODES,
    OPTION_NAMES,
    SCALE_AUTO,
    TRUE_WORDS,
)
from enhancer.errors import OptionError
from enhancer.settings import EnhancerSettings

__all__ = ["FORMATS", "FORMAT_ALIASES", "OPTION_NAMES", "Options", "parse_options", "smallest_tile"]


@dataclasses.dataclass(frozen=True)
class Options:
    """Validated options of one request.

    Attributes:
        scale: output size / input size, 1 to ``max_scale``; 1 restores without enlarging. With
            ``scale_auto`` a placeholder until the engine has chosen it from the image.
        scale_auto: ``scale=auto`` was asked for (passes.auto_scale chooses).
        format: "auto", "png", "jpeg", "webp", "avif" or "tiff".
        quality: 1-100 for jpeg, webp and avif; None means the service default. Ignored for png
            and tiff.
        tile: tile side in input pixels, or None for the model card's.
        strength: 0-1; the result is ``strength * model + (1 - strength) * plain resize``.
        denoise: 0-1, between the clean (0) and restore (1) models of a family (family.py);
            None for the service default.
        level: 1-4; passes at the final size after the enlarging ones: level - 1 (passes.py).
        enhance_first: one restoring pass at the input size before enlarging.
        compare: answer the plain resize and the result side by side (compare.py).
        metadata: "keep", "strip-location" or "strip" (imaging/metadata.py).
        faces: "auto" (restore detected faces with the face model, where one is served) or "off".
        model: the served model the request names (catalog.py), or None for the default. Which
            names are served is the engine's to check (``Enhancer.prepare``).
    """

    scale: float = 2.0
    format: str = "auto"
    quality: int | None = None
    tile: int | None = None
    strength: float = 1.0
    denoise: float | None = None
    scale_auto: bool = False
    level: int = 1
    enhance_first: bool = False
    compare: bool = False
    metadata: str = METADATA_DEFAULT
    faces: str = FACES_DEFAULT
    model: str | None = None


def _text(name: str, value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise OptionError(name, "is not UTF-8 text") from None
    if not isinstance(value, str):
        raise OptionError(name, f"must be text, not {type(value).__name__}")
    return value.strip()


def _number(name: str, text: str, kind: type) -> float | int:
    try:
        number = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise OptionError(name, f"'{text[:40]}' is not {what}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise OptionError(name, "must be a finite number")
    return number


def _yes_no(name: str, text: str) -> bool:
    word = text.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    choices = ", ".join(TRUE_WORDS + FALSE_WORDS)
    raise OptionError(name, f"'{text[:40]}' is not one of {choices}")


def parse_options(
    values: Mapping[str, object], card: ModelCard, settings: EnhancerSettings
) -> Options:
    """Validate raw option values (str, bytes or bytearray) into Options.

    Args:
        values: option name -> raw value; names must be in OPTION_NAMES.
        card: the model's card (for tile validity).
        settings: service limits.

    Raises:
        OptionError: (400) naming the unknown or out-of-range option.
    """
    for name in values:
        if name not in OPTION_NAMES:
            raise OptionError(name, f"unknown option (known: {', '.join(OPTION_NAMES)})")
    text = {name: _text(name, value) for name, value in values.items()}
    kwargs: dict[str, object] = {}

    if "scale" in text and text["scale"].lower() == SCALE_AUTO:
        kwargs["scale_auto"] = True
    elif "scale" in text:
        try:
            scale = float(_number("scale", text["scale"], float))
        except OptionError:
            raise OptionError(
                "scale",
                f"'{text['scale'][:40]}' is not a number from 1 to {settings.max_scale:g} "
                f"or {SCALE_AUTO}",
            ) from None
        if not 1.0 <= scale <= settings.max_scale:
            raise OptionError(
                "scale",
                f"{text['scale'][:40]} is out of range: use 1 to {settings.max_scale:g}, "
                f"or {SCALE_AUTO}",
            )
        kwargs["scale"] = scale

    if "format" in text:
        fmt = text["format"].lower()
        fmt = FORMAT_ALIASES.get(fmt, fmt)
        if fmt not in FORMATS:
            choices = ", ".join(FORMATS)
            raise OptionError("format", f"'{text['format'][:40]}' is not one of {choices}")
        kwargs["format"] = fmt

    if "quality" in text:
        quality = int(_number("quality", text["quality"], int))
        if not 1 <= quality <= 100:
            raise OptionError("quality", f"{quality} is out of range: use 1 to 100")
        kwargs["quality"] = quality

    if "tile" in text:
        tile = int(_number("tile", text["tile"], int))
        if not card.dynamic:
            if tile != card.tile:
                raise OptionError("tile", f"this model runs only at tile {card.tile}")
        else:
            smallest = smallest_tile(card)
            if tile % card.multiple or not smallest <= tile <= settings.max_tile:
                raise OptionError(
                    "tile",
                    f"{tile} is not valid: use a multiple of {card.multiple} from {smallest} "
                    f"to {settings.max_tile}",
                )
        kwargs["tile"] = tile

    for name in ("strength", "denoise"):  # fractions: 0 to 1
        if name in text:
            value = float(_number(name, text[name], float))
            if not 0.0 <= value <= 1.0:
                raise OptionError(name, f"{text[name][:40]} is out of range: use 0 to 1")
            kwargs[name] = value

    if "level" in text:
        level = int(_number("level", text["level"], int))
        if level not in LEVELS:
            raise OptionError("level", f"{level} is out of range: use {LEVELS[0]} to {LEVELS[-1]}")
        kwargs["level"] = level

    for name in ("enhance_first", "compare"):
        if name in text:
            kwargs[name] = _yes_no(name, text[name])

    if "metadata" in text:
        mode = text["metadata"].lower()
        if mode not in METADATA_MODES:
            choices = ", ".join(METADATA_MODES)
            raise OptionError("metadata", f"'{text['metadata'][:40]}' is not one of {choices}")
        kwargs["metadata"] = mode

    if "faces" in text:
        mode = text["faces"].lower()
        if mode not in FACES_MODES:
            raise OptionError("faces", f"'{text['faces'][:40]}' is not one of auto, off")
        kwargs["faces"] = mode

    if "model" in text:
        kwargs["model"] = model_name(text["model"])

    return Options(**kwargs)  # type: ignore[arg-type]


def model_name(value: object) -> str:
    """The ``model`` option's raw value as a name (not yet checked against the served models).

    Raises:
        OptionError: (400) not text, or empty.
    """
    name = _text("model", value)
    if not name:
        raise OptionError("model", "is empty: name a served model, or leave the option out")
    return name


def smallest_tile(card: ModelCard) -> int:
    """The smallest tile whose core (tile minus context and blend on both sides) is non-empty:
    room for one step of ``multiple`` (windows start on its grid) after both contexts and the
    blend."""
    blend = card.overlap if card.blend is None else card.blend
    smallest = max(3 * card.overlap + 1, 2 * card.overlap + blend + card.multiple)
    return -(-smallest // card.multiple) * card.multiple
