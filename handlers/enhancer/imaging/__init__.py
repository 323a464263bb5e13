"""Bytes to tensors and back, keeping what makes a photo itself.

Decoding checks the format from its magic bytes against an allow-list, reads the size from the
header and enforces the pixel cap before any pixel is decoded, checks every PNG chunk's CRC (Pillow
skips those of the pixel data), refuses animated images, applies the EXIF orientation, and turns
every mode into float RGB in [0, 1] plus, where present, an alpha plane: 1/L/LA/P/PA/RGB/RGBA/CMYK
(through its ICC profile when it has one), 16-bit grayscale and 16-bit gray+alpha, RGB and RGBA PNG
(read with libspng, since Pillow reads those as 8-bit); a PNG/GIF colour key (tRNS) becomes alpha.
Float images (Pillow mode F) and 32-bit integer ones beyond 16 bits are refused with 415, as is
every other mode. Encoding writes PNG (8 or 16 bit, gray or colour, with or without alpha), JPEG or
WebP with the ICC profile, EXIF (orientation reset, since the pixels are now upright), XMP and DPI
of the input; JPEG leaves out an EXIF or XMP block too big for its one 64 kB segment.
"""

from enhancer.contract import ALLOWED_FORMATS, ALLOWED_TEXT, CONTENT_TYPES, sniff_format
from enhancer.imaging.decode import load_picture, open_image
from enhancer.imaging.encode import check_output_format, encode_picture, resolve_format
from enhancer.imaging.picture import FORMAT_MAX_SIDE, Metadata, Picture
from enhancer.imaging.planes import fill_transparent, luma, resize
from enhancer.imaging.png16 import png16

__all__ = [
    "ALLOWED_FORMATS",
    "ALLOWED_TEXT",
    "CONTENT_TYPES",
    "FORMAT_MAX_SIDE",
    "Metadata",
    "Picture",
    "check_output_format",
    "encode_picture",
    "fill_transparent",
    "load_picture",
    "luma",
    "open_image",
    "png16",
    "resize",
    "resolve_format",
    "sniff_format",
]


def suppress_pillow_ghostscript() -> None:
    """Make sure Pillow never runs Ghostscript (EPS is refused anyway: this is belt and braces)."""
    from PIL import EpsImagePlugin

    EpsImagePlugin.gs_binary = False  # type: ignore[attr-defined]


suppress_pillow_ghostscript()
