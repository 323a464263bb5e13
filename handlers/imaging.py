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

from __future__ import annotations

import dataclasses
import io
import logging
import math
import re
import struct
import warnings
import zlib

import numpy as np
import torch
from PIL import Image, ImageCms, PngImagePlugin

from errors import BadRequest, PayloadTooLarge, UnsupportedMedia

logger = logging.getLogger(__name__)

# Pillow plugins we let parse untrusted bytes. Everything else is refused before Pillow sees it.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
ALLOWED_TEXT = "PNG, JPEG, WebP, GIF or BMP"
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# Largest side each output format can store.
FORMAT_MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65_500, "webp": 16_383}
# Recognised but refused: named in the 415 so the user knows what they sent.
_OTHER_SIGNATURES = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "HDR"),
)
_TEXT_MARKERS = (b"<svg", b"<?xml", b"<!doctype", b"<html", b"<head", b"<body", b"{", b"[")
_ORIENTATION = 0x0112
_JPEG_SEGMENT_BYTES = 65_533  # payload of one APP marker segment (its length field counts itself)
_XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = (
    re.compile(rb'tiff:Orientation="([0-9])"'),
    re.compile(rb"<tiff:Orientation>([0-9])</tiff:Orientation>"),
)


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


def sniff_format(data: bytes) -> str | None:
    """The format named by the leading bytes: an allowed Pillow name, another format, or None."""
    head = data[:32]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    for signature, name in _OTHER_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand.startswith(b"avi"):
            return "AVIF"
        return "HEIF" if brand[:3] in (b"hei", b"hev", b"mif") else "ISO media"
    text = head.lstrip().lower()
    if any(text.startswith(marker) for marker in _TEXT_MARKERS):
        return "text (HTML, SVG, XML or JSON)"
    return None


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
            f"animated images are not supported ({fmt} with {frames} frames): send a single frame"
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


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:160]


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
    orientation, meta.exif = _exif_upright(image)
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


def _exif_upright(image: Image.Image) -> tuple[int, bytes | None]:
    """The EXIF orientation, and the EXIF block rewritten to say the pixels are upright."""
    # Pillow warns (UserWarning) about a corrupt EXIF block and keeps what it could read: log it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exif = image.getexif()
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


def _png_bit_depth(data: bytes) -> int:
    return data[24] if len(data) > 25 and data[12:16] == b"IHDR" else 0


def _png_color_type(data: bytes) -> int:
    return data[25] if len(data) > 25 and data[12:16] == b"IHDR" else -1


def _png_chunks(data: bytes) -> list[tuple[bytes, memoryview]]:
    """The (type, payload) chunks of a PNG up to IEND, each CRC-checked (payloads are not copied).

    Pillow does not check the CRC of IDAT chunks, so a damaged PNG would otherwise decode into
    damaged pixels and be served as if it were fine.

    Raises:
        BadRequest: a chunk with a bad CRC, or one cut short (400).
    """
    chunks = []
    view = memoryview(data)
    position = 8
    while position + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        kind = bytes(view[position + 4 : position + 8])
        end = position + 8 + length
        if length > 2**31 - 1 or end + 4 > len(data):
            raise BadRequest(f"image data is truncated: PNG chunk {_chunk_name(kind)} is cut short")
        payload = view[position + 8 : end]
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(payload, zlib.crc32(kind)) != crc:
            raise BadRequest(f"image data is corrupt: PNG chunk {_chunk_name(kind)} has a bad CRC")
        chunks.append((kind, payload))
        if kind == b"IEND":
            break
        position = end + 4
    return chunks


def _chunk_name(kind: bytes) -> str:
    return kind.decode("ascii", "replace") if kind.isalpha() else repr(kind)


def _decode_png16(data: bytes) -> tuple[torch.Tensor, torch.Tensor | None, bool, int]:
    """16-bit gray+alpha, RGB and RGBA PNGs through libspng (Pillow reduces them to 8 bits)."""
    # a small libspng binding, imported here so 8-bit work never needs it. Its public load() picks
    # RGBA16 for 16-bit RGB (an opaque alpha plane appears) and refuses gray+alpha, so ask libspng
    # for RGBA16 always and keep the planes the PNG really has.
    from pyspng import _pyspng_c as spng

    try:
        array = spng.spng_decode_image_bytes(data, spng.SPNG_FMT_RGBA16)
    except Exception as error:  # noqa: BLE001 - libspng reports corrupt data as generic errors
        raise BadRequest(f"image data is truncated or corrupt: {_short(error)}") from None
    if array.dtype != np.uint16 or array.ndim != 3 or array.shape[2] != 4:
        raise BadRequest("PNG header says 16-bit but the pixel data is not")
    color_type = _png_color_type(data)
    planes = torch.from_numpy(array.astype(np.float32) / 65535.0).permute(2, 0, 1)
    gray = color_type == 4
    color = planes[:1].expand(3, -1, -1) if gray else planes[:3]
    if color_type in (4, 6):
        alpha = planes[3:].contiguous()
    else:
        alpha = _colour_key_alpha(array[:, :, :3], data)
    return color.contiguous(), alpha, gray, 16


def _colour_key_alpha(rgb: np.ndarray, data: bytes) -> torch.Tensor | None:
    """The alpha plane of a 16-bit RGB PNG whose tRNS chunk names one transparent colour."""
    key = next((payload for kind, payload in _png_chunks(data) if kind == b"tRNS"), None)
    if key is None or len(key) != 6:
        return None
    transparent = (rgb == np.array(struct.unpack(">3H", key), dtype=np.uint16)).all(axis=2)
    return torch.from_numpy((~transparent).astype(np.float32))[None]


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


def luma(color: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of (3, H, W) RGB, as (1, H, W)."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=color.dtype, device=color.device)
    return (color * weights[:, None, None]).sum(0, keepdim=True)


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


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def png16(
    array: np.ndarray,
    *,
    icc: bytes | None = None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
    dpi: tuple[float, float] | None = None,
    compress_level: int = 3,
) -> bytes:
    """Write a 16-bit PNG (gray+alpha, RGB or RGBA), which Pillow cannot.

    Rows use PNG's "Sub" filter, computed for the whole image at once with numpy.

    Args:
        array: (H, W, C) uint16 with C in 1-4.
        icc: ICC profile to embed (iCCP chunk).
        exif: EXIF block (with or without the "Exif\\0\\0" prefix) for the eXIf chunk.
        xmp: XMP packet for an iTXt chunk keyed "XML:com.adobe.xmp", as Pillow and Adobe write it.
        dpi: (x, y) dots per inch for the pHYs chunk.
    """
    height, width, channels = array.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    # big-endian samples as bytes: one row is width * channels * 2 bytes
    samples = np.ascontiguousarray(array, dtype=">u2")
    raw = samples.view(np.uint8).reshape(height, width * channels * 2)
    bpp = channels * 2
    filtered = raw.copy()
    filtered[:, bpp:] = raw[:, bpp:] - raw[:, :-bpp]  # uint8 arithmetic wraps mod 256, as PNG wants
    rows = np.empty((height, 1 + filtered.shape[1]), dtype=np.uint8)
    rows[:, 0] = 1  # filter type Sub
    rows[:, 1:] = filtered
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header)]
    if icc:
        parts.append(_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    if exif:
        parts.append(_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    if dpi:
        per_metre = (round(dpi[0] / 0.0254), round(dpi[1] / 0.0254))
        parts.append(_chunk(b"pHYs", struct.pack(">IIB", per_metre[0], per_metre[1], 1)))
    if xmp:
        # iTXt: keyword, 0, uncompressed, method 0, no language, 0, no translation, 0, text
        parts.append(_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp))
    parts.append(_chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def resize(planes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of (C, H, W) to (width, height) = ``size``; antialiased, clamped to [0, 1]."""
    if (planes.shape[2], planes.shape[1]) == size:
        return planes
    out = torch.nn.functional.interpolate(
        planes[None].float(),
        size=(size[1], size[0]),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )[0]
    return out.clamp_(0.0, 1.0)


def fill_transparent(color: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Give fully transparent pixels the colour of their visible neighbourhood (push-pull).

    Their RGB is invisible but arbitrary (often black or white); left as is, the model and the
    resize would smear it into visible edges as a halo. Colours are averaged premultiplied by alpha
    over a pyramid, so only visible pixels contribute; each hole takes the finest level's estimate.
    """
    if bool((alpha > 0).all()):
        return color
    levels = []
    premultiplied, weight = color * alpha, alpha
    while True:
        levels.append((premultiplied, weight))
        if min(weight.shape[-2:]) == 1:
            break
        premultiplied = torch.nn.functional.avg_pool2d(premultiplied[None], 2, ceil_mode=True)[0]
        weight = torch.nn.functional.avg_pool2d(weight[None], 2, ceil_mode=True)[0]
    estimate = None
    for premultiplied, weight in reversed(levels):
        here = premultiplied / weight.clamp_min(1e-12)
        if estimate is None:
            coarse = torch.full_like(here, 0.5)
            # the coarsest level may still be wider than 1 pixel on one side
            visible = weight.sum() > 0
            if bool(visible):
                coarse[:] = (premultiplied.sum(dim=(1, 2)) / weight.sum())[:, None, None]
        else:
            coarse = torch.nn.functional.interpolate(
                estimate[None], size=here.shape[-2:], mode="nearest"
            )[0]
        estimate = torch.where(weight > 0, here, coarse)
    return torch.where(alpha > 0, color, estimate)


def suppress_pillow_ghostscript() -> None:
    """Make sure Pillow never runs Ghostscript (EPS is refused anyway: this is belt and braces)."""
    from PIL import EpsImagePlugin

    EpsImagePlugin.gs_binary = False  # type: ignore[attr-defined]


suppress_pillow_ghostscript()
