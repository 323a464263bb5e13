"""Encoding: float planes to PNG (8 or 16 bit), JPEG or WebP, with the input's metadata."""

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


def resolve_format(requested: str, picture: Picture) -> str:
    """The format for ``format=auto``: the input's, or PNG for alpha, 16-bit and non-web inputs."""
    if requested != "auto":
        return requested
    if picture.alpha is not None or picture.bits == 16:
        return "png"
    return {"JPEG": "jpeg", "WEBP": "webp"}.get(picture.meta.source_format, "png")


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
    """Encode float planes in [0, 1] (on any device) to PNG, JPEG or WebP bytes.

    16 bits survive only in PNG; gray stays gray in PNG and JPEG (WebP has no gray); alpha stays in
    PNG and WebP and is flattened onto white for JPEG.
    """
    if grayscale:
        color = luma(color)
    if fmt == "jpeg" and alpha is not None:
        color = color * alpha + (1.0 - alpha)  # JPEG has no alpha: composite onto white
        alpha = None
    if fmt == "webp" and grayscale:
        color, grayscale = color.expand(3, -1, -1), False
    wide = bits == 16 and fmt == "png"
    planes = color if alpha is None else torch.cat([color, alpha])
    array = _quantize(planes, 65535 if wide else 255)
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
    if meta.dpi and fmt in ("png", "jpeg"):
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
    else:
        if meta.xmp:
            params["xmp"] = meta.xmp
        image.save(out, format="WEBP", quality=quality, method=4, **params)
    return out.getvalue()
