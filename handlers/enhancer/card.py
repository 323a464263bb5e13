"""The model card: the JSON file beside a TorchScript model that says how to run it.

A model is ``<name>.pt`` (TorchScript) plus ``<name>.json``. The engine reads only the fields below;
anything else in the file (training details, measured quality) is kept verbatim for people to read.

Required fields:
    name (str), version (str)
    scale (int): 1 (output the input's size; the engine resizes first), 2 (a sub-pixel 2x head),
        or 3, 4, 8 (models from elsewhere, e.g. a 4x Real-ESRGAN exported with
        ``scripts/export.py --spandrel``; passes.py plans their passes).
    multiple (int): input height and width must be multiples of this.
    tile (int): the tile side, in input pixels, the model was traced and tested at.
    overlap (int): input pixels of context each tile needs on every side so that seams vanish.
    dtypes (list of str): the precisions the model is valid in ("float32", "float16", "bfloat16").
    sha256 (str): hex digest of the .pt file.
Optional fields read by the engine:
    dynamic (bool, default false): the traced graph is valid at any size that is a multiple of
        ``multiple`` (pure convolutions, no shape branches), so smaller tiles may be used.
    blend (int, default ``overlap``): input pixels over which neighbouring tiles cross-fade, on
        top of the ``overlap`` of context on each side. A card whose overlap was measured to hold
        the receptive field (scripts/overlap.py) needs only a few: the tiles already agree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

DTYPES = ("float32", "float16", "bfloat16")
SCALES = (1, 2, 3, 4, 8)


@dataclasses.dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    scale: int
    multiple: int
    tile: int
    overlap: int
    dtypes: tuple[str, ...]
    sha256: str
    dynamic: bool = False
    blend: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Validate a parsed card.

        Raises:
            ValueError: naming the first missing or invalid field.
        """

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            if key not in data:
                raise ValueError(f"model card: missing field '{key}'")
            value = data[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise ValueError(f"model card: field '{key}' has the wrong type ({value!r})")
            return value

        scale = need("scale", int)
        if scale not in SCALES:
            raise ValueError(f"model card: 'scale' must be one of {SCALES}, not {scale}")
        multiple = need("multiple", int)
        tile = need("tile", int)
        overlap = need("overlap", int)
        if multiple < 1:
            raise ValueError("model card: 'multiple' must be at least 1")
        if tile < multiple or tile % multiple:
            raise ValueError(f"model card: 'tile' {tile} must be a positive multiple of {multiple}")
        if overlap < 0 or 3 * overlap >= tile:
            raise ValueError(f"model card: 'overlap' {overlap} must be in [0, tile/3)")
        dtypes = tuple(need("dtypes", list))
        if not dtypes or any(d not in DTYPES for d in dtypes) or "float32" not in dtypes:
            raise ValueError(f"model card: 'dtypes' must include float32 and only {DTYPES}")
        sha = need("sha256", str).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError("model card: 'sha256' must be 64 hex digits")
        dynamic = data.get("dynamic", False)
        if not isinstance(dynamic, bool):
            raise ValueError("model card: 'dynamic' must be true or false")
        blend = data.get("blend")
        if blend is not None:
            if not isinstance(blend, int) or isinstance(blend, bool) or blend < 0:
                raise ValueError(f"model card: 'blend' must be a whole number >= 0, not {blend!r}")
            if 2 * overlap + blend + multiple > tile:
                raise ValueError(
                    f"model card: 'tile' {tile} leaves no step after 2 x overlap {overlap} "
                    f"+ blend {blend}"
                )
        known = {
            "blend",
            "name",
            "version",
            "scale",
            "multiple",
            "tile",
            "overlap",
            "dtypes",
            "sha256",
            "dynamic",
        }
        return cls(
            name=need("name", str),
            version=need("version", str),
            scale=scale,
            multiple=multiple,
            tile=tile,
            overlap=overlap,
            dtypes=dtypes,
            sha256=sha,
            dynamic=dynamic,
            blend=blend,
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read and validate a card file."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready data, engine fields first."""
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"
        }
        data["dtypes"] = list(self.dtypes)
        if self.blend is None:
            del data["blend"]
        data.update(self.extra)
        return data

    def verify(self, model_path: str | Path) -> None:
        """Check the .pt against the card's digest.

        Raises:
            ValueError: the file is not the one the card describes (tampered or mismatched).
        """
        digest = file_sha256(model_path)
        if digest != self.sha256:
            raise ValueError(
                f"model file {model_path} has sha256 {digest}, but its card says {self.sha256}: "
                "refusing to load a model that does not match its card"
            )


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
