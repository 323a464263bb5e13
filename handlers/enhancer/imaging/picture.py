"""What decoding produces and encoding consumes: an upright float picture and its metadata."""

from __future__ import annotations

import dataclasses

import torch

# Largest side each output format can store.
FORMAT_MAX_SIDE = {
    "png": 2**31 - 1,
    "jpeg": 65_500,
    "webp": 16_383,
    "avif": 65_536,
    "tiff": 2**31 - 1,
}


@dataclasses.dataclass
class Metadata:
    """What is carried from the input to the output besides pixels."""

    source_format: str
    icc: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None


@dataclasses.dataclass
class Picture:
    """A decoded image, upright.

    Attributes:
        color: float32 (3, H, W) in [0, 1]; gray images have three equal channels.
        alpha: float32 (1, H, W) in [0, 1], or None.
        grayscale: the input was gray (output stays gray where the format allows).
        bits: 8 or 16, the input's precision per channel.
        meta: metadata to write back.
    """

    color: torch.Tensor
    alpha: torch.Tensor | None
    grayscale: bool
    bits: int
    meta: Metadata

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.color.shape[2], self.color.shape[1]


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:160]
