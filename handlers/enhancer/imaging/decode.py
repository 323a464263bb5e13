"""Decoding: bytes to an upright float Picture, refusing what is not a safe, single-frame image.

The format is checked from its magic bytes against the allow-list (``enhancer.contract``), the size
is read from the header and the pixel cap enforced before any pixel is decoded, every PNG chunk's
CRC is checked, animated images (and multi-page TIFF, multi-image HEIF) are refused, and the EXIF
orientation is applied. HEIC/HEIF is read by pillow-heif (registered here; libheif applies the
file's own rotation and mirroring and resets the EXIF orientation to 1), AVIF by Pillow's own
plugin, TIFF by Pillow (16-bit gray stays 16-bit; Pillow reads 16-bit colour TIFF at 8 bits).
"""

from __future__ import annotations

import io
import logging
import math
import re
import struct
import warnings

import numpy as np
import pillow_heif
import torch
from PIL import Image, ImageCms

from enhancer.contract import ALLOWED_FORMATS, ALLOWED_TEXT, sniff_format
from enhancer.errors import BadRequest, PayloadTooLarge, UnsupportedMedia
from enhancer.imaging.picture import Metadata, Picture, _short
from enhancer.imaging.png16 import _decode_png16, _png_bit_depth, _png_chunks, _png_color_type

logger = logging.getLogger(__name__)

# HEIC/HEIF through libheif; thumbnails and depth maps are never needed, so never decoded.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

_ORIENTATION = 0x0112
# What a TIFF's own first directory says about the photo (the rest of it, strip offsets, sizes and
# compression, describes the file and must not be copied into another one), and its EXIF and GPS
# sub-directories.
_TIFF_DESCRIPTIVE = (0x010E, 0x010F, 0x0110, 0x0112, 0x0131, 0x0132, 0x013B, 0x8298)
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_XMP_ORIENTATION = (
    re.compile(rb'tiff:Orientation="([0-9])"'),
    re.compile(rb"<tiff:Orientation>([0-9])</tiff:Orientation>"),
)


def open_image(data: bytes, max_input_pixels: int) -> tuple[Image.Image, str]:
    """Identify and open (lazily) an image, enforcing the allow-list, the pixel cap and one frame.

    Args:
        data: the encoded image.
        max_input_pixels: the input pixel cap, checked against the header before decoding.

    Returns:
        The opened (not yet decoded) image and its format name.

    Raises:
        BadRequest: unreadable data (400).
        UnsupportedMedia: a format outside the allow-list, or an animated image (415).
        PayloadTooLarge: more pixels than the cap (413).
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise BadRequest(f"not a readable image: the data is not {ALLOWED_TEXT}")
    if fmt not in ALLOWED_FORMATS:
        raise UnsupportedMedia(f"{fmt} is not supported: send {ALLOWED_TEXT}")
    if fmt == "PNG" and data[12:16] == b"IHDR" and len(data) >= 24:
        # the exact declared size, before Pillow (whose own bomb check names no size) sees the file
        declared = struct.unpack(">II", data[16:24])
        if declared[0] * declared[1] > max_input_pixels:
            raise PayloadTooLarge(_too_many_pixels_message(declared, max_input_pixels))
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Pillow only warns between 89 and 179 MP; our own cap is far lower, so make it an error
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
        _log_warnings(caught)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(_too_many_pixels_message(None, max_input_pixels)) from None
    except Image.UnidentifiedImageError:
        # its text names a BytesIO object, which tells the user nothing
        raise BadRequest(f"not a readable image: the {fmt} header is corrupt") from None
    except Exception as error:  # noqa: BLE001 - any parser failure on untrusted bytes is a bad image
        reason = _short(error)
        raise BadRequest(f"not a readable image: {fmt} header is corrupt ({reason})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise BadRequest(f"not a readable image: {fmt} declares a {width}x{height} size")
    if width * height > max_input_pixels:
        raise PayloadTooLarge(_too_many_pixels_message((width, height), max_input_pixels))
    try:
        frames = getattr(image, "n_frames", 1)
    except Exception as error:  # noqa: BLE001 - counting GIF frames parses the whole file
        raise BadRequest(f"not a readable image: {fmt} data is corrupt ({_short(error)})") from None
    if frames > 1:
        raise UnsupportedMedia(
            f"animated images are not supported ({fmt} with {frames} frames; multi-page TIFF and "
            "multi-image HEIF count as animated): send a single frame"
        )
    if fmt == "PNG":
        _png_chunks(data)  # CRCs, which Pillow skips for the pixel data
    return image, fmt


def _too_many_pixels_message(size: tuple[int, int] | None, limit: int) -> str:
    if size:
        what = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels"
    else:
        what = "far more pixels than allowed"
    return f"input image too large: {what}; the limit is {limit:,} pixels"


def _log_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Pillow warns about damaged metadata (corrupt EXIF, odd chunks) and goes on: log, not leak."""
    for warning in caught:
        logger.info("Pillow: %s", str(warning.message)[:160])


def load_picture(image: Image.Image, data: bytes, fmt: str) -> Picture:
    """Decode an image opened by ``open_image`` into an upright float Picture.

    Raises:
        BadRequest: truncated or corrupt pixel data (400).
        UnsupportedMedia: a mode the service does not take (415).
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
        _log_warnings(caught)
    except Exception as error:  # noqa: BLE001 - decoders raise many types on hostile data
        raise BadRequest(f"image data is truncated or corrupt: {_short(error)}") from None
    meta = Metadata(source_format=fmt)
    meta.icc = image.info.get("icc_profile") or None
    meta.dpi = _dpi(image.info.get("dpi"))
    orientation, meta.exif = _exif_upright(image, fmt)
    meta.xmp = _xmp_upright(image.info.get("xmp") or image.info.get("XML:com.adobe.xmp"))

    wide_png = fmt == "PNG" and _png_bit_depth(data) == 16 and _png_color_type(data) in (2, 4, 6)
    if wide_png:
        color, alpha, gray, bits = _decode_png16(data)
    else:
        color, alpha, gray, bits, converted_icc = _from_pillow(image, meta.icc)
        meta.icc = converted_icc
    color, alpha = _orient(color, orientation), _orient(alpha, orientation)
    return Picture(color=color, alpha=alpha, grayscale=gray, bits=bits, meta=meta)


def _dpi(value: object) -> tuple[float, float] | None:
    """A usable (x, y) resolution, or None.

    Pillow passes on whatever the file claims (an EXIF rational can say 4e9 or 0), and writing an
    absurd value fails in the encoder (a PNG pHYs field holds 32 bits); JPEG's holds 16 bits of dpi.
    """
    if not isinstance(value, tuple) or len(value) != 2:
        return None
    try:
        dpi = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(d) and 1.0 <= d <= 65_535.0 for d in dpi):
        logger.info("ignoring a resolution of %r dpi", value)
        return None
    return dpi


def _exif_upright(image: Image.Image, fmt: str = "") -> tuple[int, bytes | None]:
    """The EXIF orientation, and the EXIF block rewritten to say the pixels are upright."""
    # Pillow warns (UserWarning) about a corrupt EXIF block and keeps what it could read: log it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exif = image.getexif()
            if fmt == "TIFF":
                exif = _tiff_exif(exif)
            orientation = int(exif.get(_ORIENTATION, 1) or 1)
            if _ORIENTATION in exif:
                exif[_ORIENTATION] = 1
            block = exif.tobytes() if exif else None
        except Exception as error:  # noqa: BLE001 - a broken EXIF block should not cost the photo
            logger.info("dropping unreadable EXIF: %s", _short(error))
            return 1, None
    _log_warnings(caught)
    if block is None:
        return 1, None
    return (orientation if 1 <= orientation <= 8 else 1), block


def _tiff_exif(tags: Image.Exif) -> Image.Exif:
    """The photo's own tags of a TIFF's first directory, with its EXIF and GPS sub-directories."""
    exif = Image.Exif()
    for tag in _TIFF_DESCRIPTIVE:
        if tag in tags:
            exif[tag] = tags[tag]
    for tag in (_EXIF_IFD, _GPS_IFD):
        if tag in tags:
            directory = dict(tags.get_ifd(tag))
            if directory:
                exif[tag] = directory
    return exif


def _xmp_upright(xmp: object) -> bytes | None:
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if not isinstance(xmp, bytes) or not xmp:
        return None
    xmp = _XMP_ORIENTATION[0].sub(b'tiff:Orientation="1"', xmp)
    return _XMP_ORIENTATION[1].sub(b"<tiff:Orientation>1</tiff:Orientation>", xmp)


def _orient(plane: torch.Tensor | None, orientation: int) -> torch.Tensor | None:
    """Apply an EXIF orientation (1-8) to a (C, H, W) tensor, as ImageOps.exif_transpose does."""
    if plane is None or orientation == 1:
        return plane
    turned = {
        2: lambda x: x.flip(2),
        3: lambda x: x.flip(1).flip(2),
        4: lambda x: x.flip(1),
        5: lambda x: x.transpose(1, 2),
        6: lambda x: x.transpose(1, 2).flip(2),
        7: lambda x: x.transpose(1, 2).flip(1).flip(2),
        8: lambda x: x.transpose(1, 2).flip(1),
    }[orientation](plane)
    return turned.contiguous()


def _from_pillow(
    image: Image.Image, icc: bytes | None
) -> tuple[torch.Tensor, torch.Tensor | None, bool, int, bytes | None]:
    """Pixels of any accepted Pillow mode as (color, alpha, grayscale, bits, icc to write)."""
    mode = image.mode
    # a PNG tRNS chunk (or GIF transparency) names one transparent gray level or colour
    colour_key = image.info.get("transparency")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        array = np.array(image)  # a writable copy: torch refuses read-only buffers
        if mode == "I" and (array.min() < 0 or array.max() > 65535):
            raise UnsupportedMedia(
                "32-bit integer images are not supported: send 8 or 16 bits per channel"
            )
        plane = torch.from_numpy(array.astype(np.float32) / 65535.0)[None]
        alpha = None
        if isinstance(colour_key, int):
            alpha = torch.from_numpy((array != colour_key).astype(np.float32))[None]
        return plane.expand(3, -1, -1).contiguous(), alpha, True, 16, icc
    if mode == "CMYK":
        return _cmyk_to_rgb(image, icc)
    if mode in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "YCbCr"):
        if mode in ("1", "L") and colour_key is not None:
            image = image.convert("LA")
        elif mode == "RGB" and colour_key is not None:
            image = image.convert("RGBA")
        elif mode == "1":
            image = image.convert("L")
        elif mode == "La":
            image = image.convert("LA")
        elif mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in image.info or image.palette.mode == "RGBA"
            image = image.convert("RGBA" if has_alpha else "RGB")
        elif mode in ("RGBa",):
            image = image.convert("RGBA")
        elif mode in ("RGBX", "YCbCr"):
            image = image.convert("RGB")
        array = np.array(image)  # a writable copy: torch refuses read-only buffers
        planes = torch.from_numpy(array).float().div_(255.0)
        planes = planes.permute(2, 0, 1) if planes.ndim == 3 else planes[None]
        gray = image.mode in ("L", "LA")
        color = planes[:1].expand(3, -1, -1) if gray else planes[:3]
        alpha = planes[-1:] if image.mode in ("LA", "RGBA") else None
        return color.contiguous(), (alpha.contiguous() if alpha is not None else None), gray, 8, icc
    raise UnsupportedMedia(
        f"images in Pillow mode {mode} are not supported: send 8- or 16-bit gray, RGB or RGBA"
    )


def _cmyk_to_rgb(
    image: Image.Image, icc: bytes | None
) -> tuple[torch.Tensor, None, bool, int, bytes | None]:
    """CMYK through its own profile to sRGB when it has one (then the output carries sRGB)."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            rgb = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
            out_icc = srgb.tobytes()
        except (ImageCms.PyCMSError, OSError, ValueError) as error:
            logger.info("CMYK profile unusable (%s); converting without it", _short(error))
            rgb, out_icc = image.convert("RGB"), None
    else:
        rgb, out_icc = image.convert("RGB"), None
    planes = torch.from_numpy(np.array(rgb)).float().div_(255.0).permute(2, 0, 1).contiguous()
    return planes, None, False, 8, out_icc
