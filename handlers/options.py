"""Request options: parse and check ``scale``, ``format``, ``quality``, ``tile`` and ``strength``.

Options arrive as multipart form fields or, for a raw body, as headers with a fixed prefix
(``X-Enhance-Scale: 4``). Anything unknown is an error that names it, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from card import ModelCard
from errors import BadRequest, OptionError
from settings import EnhancerSettings

OPTION_NAMES = ("scale", "format", "quality", "tile", "strength")
FORMATS = ("auto", "png", "jpeg", "webp")
FORMAT_ALIASES = {"jpg": "jpeg"}
# Field names that carry the image: "data" for multipart (DESIGN 4), "body" for a raw body.
IMAGE_FIELDS = ("data", "body")


@dataclasses.dataclass(frozen=True)
class Options:
    """Validated options of one request.

    Attributes:
        scale: output size / input size, 1 to ``max_scale``; 1 restores without enlarging.
        format: "auto", "png", "jpeg" or "webp".
        quality: 1-100 for jpeg and webp; None means the service default. Ignored for png.
        tile: tile side in input pixels, or None for the model card's.
        strength: 0-1; the result is ``strength * model + (1 - strength) * plain resize``.
    """

    scale: float = 2.0
    format: str = "auto"
    quality: int | None = None
    tile: int | None = None
    strength: float = 1.0


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

    if "scale" in text:
        scale = float(_number("scale", text["scale"], float))
        if not 1.0 <= scale <= settings.max_scale:
            raise OptionError(
                "scale", f"{text['scale'][:40]} is out of range: use 1 to {settings.max_scale:g}"
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

    if "strength" in text:
        strength = float(_number("strength", text["strength"], float))
        if not 0.0 <= strength <= 1.0:
            raise OptionError("strength", f"{text['strength'][:40]} is out of range: use 0 to 1")
        kwargs["strength"] = strength

    return Options(**kwargs)  # type: ignore[arg-type]


def smallest_tile(card: ModelCard) -> int:
    """The smallest tile whose core (tile minus context and blend on both sides) is non-empty."""
    smallest = 3 * card.overlap + 1
    return -(-smallest // card.multiple) * card.multiple


def split_request(
    fields: Mapping[str, object], headers: Mapping[str, object] | None, prefix: str
) -> tuple[bytes, dict[str, object]]:
    """Separate the image from the options of one TorchServe-style request.

    Args:
        fields: what TorchServe hands the handler for one request: the raw body under "body", or
            multipart fields by name (the image under "data").
        headers: request headers (name -> value); those starting with ``prefix`` (any case) are
            options for a raw body. Other headers are ignored.
        prefix: the option header prefix, e.g. "X-Enhance-".

    Returns:
        The image bytes and the raw option values.

    Raises:
        BadRequest: no image, two images, or an option given twice.
        OptionError: an unknown field or option header.
    """
    images = [name for name in IMAGE_FIELDS if name in fields]
    if not images:
        unknown = [name for name in fields if name not in OPTION_NAMES]
        hint = f" (got field '{unknown[0]}')" if unknown else ""
        raise BadRequest(
            f"no image: send it as the request body or as the multipart field 'data'{hint}"
        )
    if len(images) > 1:
        raise BadRequest("send one image: both a body and a 'data' field were given")
    data = fields[images[0]]
    if not isinstance(data, (bytes, bytearray)):
        # TorchServe decodes a text/* or application/json body before the handler sees it
        kind = "text" if isinstance(data, str) else "JSON"
        raise BadRequest(
            f"the image arrived as {kind}, not bytes: send it as binary "
            "(curl -T file or -F data=@file, with no text or JSON Content-Type)"
        )
    if len(data) == 0:
        raise BadRequest("empty image: the request body has no bytes")

    known = ", ".join(OPTION_NAMES)
    options: dict[str, object] = {}
    for name, value in fields.items():
        if name in IMAGE_FIELDS:
            continue
        if name not in OPTION_NAMES:
            raise OptionError(name, f"unknown field (send the image as 'data'; options: {known})")
        options[name] = value
    low_prefix = prefix.lower()
    for key, value in (headers or {}).items():
        # TorchServe also lists each multipart field's own headers here, as dicts: not options
        if not isinstance(key, str) or not isinstance(value, str):
            continue
        if not key.lower().startswith(low_prefix):
            continue
        name = key[len(prefix) :].lower()
        if name not in OPTION_NAMES:
            header = f"{prefix}{key[len(prefix) :]}"
            raise OptionError(header, f"unknown option header (known: {known})")
        if name in options:
            raise BadRequest(f"option '{name}' given twice (as a field and as a header)")
        options[name] = value
    return bytes(data), options
