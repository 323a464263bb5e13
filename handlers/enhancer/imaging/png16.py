"""16-bit PNG, which Pillow reads as 8 bits and cannot write: chunks, reading through libspng,
and a writer."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import torch

from enhancer.errors import BadRequest
from enhancer.imaging.picture import _short


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
