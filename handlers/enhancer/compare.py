"""The ``compare`` option: the plain resize and the enhanced result side by side, in one image.

Layout, for a result of W x H: a canvas of (2W + gap) x (H + strip), dark grey; the plain
(bicubic, antialiased) resize to W x H on the left, the result on the right, each under a label
strip of ``strip`` pixels with its name in white ("Plain resize", "Enhanced"). ``strip`` is 6% of
H, at least 14 and at most 120 pixels; ``gap`` is a quarter of it (at least 2). Transparent images
are shown flattened onto white, as JPEG output is; gray and 16-bit pictures stay so.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, features

LABELS = ("Plain resize", "Enhanced")
BACKGROUND = 0.15  # the canvas and label strips, in [0, 1]
_TEXT = 255


def layout(width: int, height: int) -> tuple[int, int]:
    """(strip, gap) in pixels for a result of ``width`` x ``height``."""
    strip = min(120, max(14, round(0.06 * height)))
    return strip, max(2, strip // 4)


def compare_size(width: int, height: int) -> tuple[int, int]:
    """The compare image's (width, height) for a result of ``width`` x ``height``."""
    strip, gap = layout(width, height)
    return 2 * width + gap, height + strip


def _label(text: str, width: int, strip: int) -> torch.Tensor:
    """A (1, strip, width) plane in [0, 1]: ``text`` in white on the background, clipped."""
    plane = Image.new("L", (width, strip), round(BACKGROUND * 255))
    size = max(8, round(strip * 0.6))
    if features.check("freetype2"):
        font = ImageFont.load_default(size=size)
    else:  # Pillow without FreeType: its small bitmap font
        font = ImageFont.load_default()
    origin = (max(2, strip // 4), strip // 2)
    ImageDraw.Draw(plane).text(origin, text, fill=_TEXT, font=font, anchor="lm")
    return torch.from_numpy(np.asarray(plane, dtype=np.float32) / 255.0)[None]


def side_by_side(
    plain: torch.Tensor, enhanced: torch.Tensor, alpha: torch.Tensor | None = None
) -> torch.Tensor:
    """The compare canvas of two (3, H, W) float pictures in [0, 1] of the same size.

    Args:
        plain: the plain resize.
        enhanced: the result.
        alpha: their (1, H, W) alpha, if any: both are flattened onto white.

    Returns:
        float32 (3, H + strip, 2W + gap), on the pictures' device.
    """
    if plain.shape != enhanced.shape:
        raise ValueError(f"sizes differ: {tuple(plain.shape)} and {tuple(enhanced.shape)}")
    _, height, width = enhanced.shape
    if alpha is not None:
        plain = plain * alpha + (1.0 - alpha)
        enhanced = enhanced * alpha + (1.0 - alpha)
    strip, gap = layout(width, height)
    shape = (3, height + strip, 2 * width + gap)
    canvas = torch.full(shape, BACKGROUND, dtype=torch.float32, device=enhanced.device)
    for left, picture, text in ((0, plain, LABELS[0]), (width + gap, enhanced, LABELS[1])):
        canvas[:, strip:, left : left + width] = picture
        canvas[:, :strip, left : left + width] = _label(text, width, strip).to(canvas.device)
    return canvas
