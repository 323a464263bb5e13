"""Encoding: float planes to PNG (8 or 16 bit), JPEG, WebP, AVIF or TIFF (8 bit, or 16-bit gray),
with the input's metadata."""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from enhancer.errors import PayloadTooLarge
from enhancer.imaging.picture import FORMAT_MAX_SIDE, Metadata, Picture
from enhancer.imaging.planes import luma
from enhancer.imaging.png16 import png16

logger = logging.getLogger(__name__)

_JPEG_SEGMENT_BYTES = 65_533  # payload of one APP marker segment (its length field counts itself)
_XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_TIFF_TAG = 700
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825


def check_output_format(fmt: str, size: tuple[int, int]) -> None:
    """Refuse, before any work, an output the format cannot store.

    Raises:
        PayloadTooLarge: a side beyond the format's limit (413).
    """
    limit = FORMAT_MAX_SIDE[fmt]
    if max(size) > limit:
        raise PayloadTooLarge(
            f"output {size[0]}x{size[1]} is too large for {fmt}: its limit is {limit} pixels "
            "per side; ask for png or a smaller scale"
        )


# ``format=auto``: the input's own format where it can be written; HEIC as JPEG (the service writes
# no HEIC: its HEVC encoder is patent-encumbered, and JPEG is what a phone shares a HEIC photo as).
_AUTO_FORMATS = {"JPEG": "jpeg", "WEBP": "webp", "AVIF": "avif", "TIFF": "tiff", "HEIF": "jpeg"}


def resolve_format(requested: str, picture: Picture) -> str:
    """The format for ``format=auto``: the input's where it can hold the picture (JPEG for HEIC),
    PNG for alpha or 16 bits that JPEG, WebP or TIFF cannot hold, and for PNG, GIF and BMP."""
    if requested != "auto":
        return requested
    source = picture.meta.source_format
    if source == "AVIF":
        return "avif"  # read at 8 bits; AVIF keeps alpha
    if source == "TIFF" and (picture.bits == 8 or picture.grayscale and picture.alpha is None):
        return "tiff"  # 8-bit with or without alpha, or 16-bit gray
    if picture.alpha is not None or picture.bits == 16:
        return "png"
    return _AUTO_FORMATS.get(source, "png")


def encode_picture(
    color: torch.Tensor,
    alpha: torch.Tensor | None,
    *,
    grayscale: bool,
    bits: int,
    fmt: str,
    quality: int,
    meta: Metadata,
    png_compress_level: int = 3,
) -> bytes:
    """Encode float planes in [0, 1] (on any device) to PNG, JPEG, WebP, AVIF or TIFF bytes.

    16 bits survive in PNG, and in TIFF for gray without alpha (Pillow has no 16-bit colour TIFF
    writer); gray stays gray in PNG, JPEG, AVIF and TIFF (WebP has no gray); alpha stays in PNG,
    WebP, AVIF and TIFF and is flattened onto white for JPEG.
    """
    if grayscale:
        color = luma(color)
    if fmt == "jpeg" and alpha is not None:
        color = color * alpha + (1.0 - alpha)  # JPEG has no alpha: composite onto white
        alpha = None
    if fmt == "webp" and grayscale:
        color, grayscale = color.expand(3, -1, -1), False
    wide = bits == 16 and (fmt == "png" or (fmt == "tiff" and grayscale and alpha is None))
    planes = color if alpha is None else torch.cat([color, alpha])
    array = _quantize(planes, 65535 if wide else 255)
    if wide and fmt == "tiff":
        return _save_pillow(Image.fromarray(array[:, :, 0]), fmt, quality, meta, png_compress_level)
    if wide:
        if array.shape[2] == 1:
            gray16 = Image.fromarray(array[:, :, 0])
            return _save_pillow(gray16, "png", quality, meta, png_compress_level)
        return png16(
            array,
            icc=meta.icc,
            exif=meta.exif,
            xmp=meta.xmp,
            dpi=meta.dpi,
            compress_level=png_compress_level,
        )
    # uint8 (H, W) is L, and (H, W, 2|3|4) is LA, RGB, RGBA
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    return _save_pillow(image, fmt, quality, meta, png_compress_level)


def _quantize(planes: torch.Tensor, top: int) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) uint8/uint16, rounding on the planes' own device."""
    scaled = planes.nan_to_num(0.0).clamp(0.0, 1.0).mul(top).add_(0.5).floor_()
    if top == 255:
        return scaled.to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
    return scaled.to(torch.int32).permute(1, 2, 0).contiguous().cpu().numpy().astype(np.uint16)


def _save_pillow(
    image: Image.Image, fmt: str, quality: int, meta: Metadata, png_compress_level: int
) -> bytes:
    out = io.BytesIO()
    params: dict[str, object] = {}
    if meta.icc:
        params["icc_profile"] = meta.icc
    if meta.exif:
        params["exif"] = meta.exif
    if meta.dpi and fmt in ("png", "jpeg", "tiff"):
        params["dpi"] = meta.dpi
    if fmt == "png":
        if meta.xmp:
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", meta.xmp.decode("utf-8", "replace"))
            params["pnginfo"] = info
        image.save(out, format="PNG", compress_level=png_compress_level, **params)
    elif fmt == "jpeg":
        # one JPEG APP segment holds 65,533 bytes; Pillow raises ValueError beyond that, which
        # would fail the request for want of metadata. Keep the pixels; log what is left out.
        if meta.exif and len(meta.exif) > _JPEG_SEGMENT_BYTES:
            logger.info("EXIF of %d bytes does not fit a JPEG segment: left out", len(meta.exif))
            del params["exif"]
        if meta.xmp and len(meta.xmp) <= _JPEG_SEGMENT_BYTES - len(_XMP_JPEG_HEADER):
            params["xmp"] = meta.xmp
        elif meta.xmp:
            logger.info("XMP of %d bytes does not fit a JPEG segment: left out", len(meta.xmp))
        # full-resolution chroma at high quality: colour detail is what an enhancer is for
        subsampling = 0 if quality >= 90 else 2
        image.save(out, format="JPEG", quality=quality, subsampling=subsampling, **params)
    elif fmt == "tiff":
        _save_tiff(image, out, meta, params)
    elif fmt == "avif":
        if meta.xmp:
            params["xmp"] = meta.xmp
        # speed 6: libavif's middle ground (0 is hours per photo, 10 visibly worse)
        image.save(out, format="AVIF", quality=quality, speed=6, **params)
    else:
        if meta.xmp:
            params["xmp"] = meta.xmp
        image.save(out, format="WEBP", quality=quality, method=4, **params)
    return out.getvalue()


def _save_tiff(image: Image.Image, out: io.BytesIO, meta: Metadata, params: dict) -> None:
    """TIFF, deflate-compressed; uncompressed when the EXIF has sub-directories (camera settings,
    dates, GPS), which Pillow writes only without libtiff, i.e. only without compression."""
    exif = Image.Exif()
    if meta.exif:
        exif.load(meta.exif)
    if meta.xmp:
        exif[_XMP_TIFF_TAG] = meta.xmp  # a TIFF carries XMP in its own directory
    params.pop("exif", None)
    if exif:
        params["exif"] = exif
    nested = any(tag in exif for tag in (_EXIF_IFD, _GPS_IFD))
    compression = None if nested else "tiff_adobe_deflate"
    image.save(out, format="TIFF", compression=compression, **params)
