"""Image builders for the tests, all made in code, in memory.

What Pillow cannot make is written by hand here, independently of the engine's own writers, so a
test never checks the engine against itself:
- ``cmyk_profile``: an ICC v2 CMYK input profile (a lut16 A2B0 table to Lab), since
  ``ImageCms.createProfile`` only makes sRGB, Lab and XYZ profiles;
- ``png_bytes`` / ``read_png``: a minimal PNG writer and reader (any bit depth and colour type, all
  five row filters when reading), for 16-bit RGB(A) and gray+alpha, which Pillow reads as 8-bit;
- ``png_header``: a PNG that declares any size in its IHDR but carries almost no pixel data.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
import pillow_heif
from PIL import Image, ImageCms, PngImagePlugin

# HEIC/HEIF for the builders below (Pillow reads and writes AVIF and TIFF itself)
pillow_heif.register_heif_opener()

ORIENTATION = 0x0112
MAKE = 0x010F
MAGENTA = (255, 0, 255)


def to_bytes(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    """Encode ``image`` as ``fmt`` with Pillow save parameters."""
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def open_bytes(data: bytes) -> Image.Image:
    """Decode bytes with Pillow (fully loaded)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: smooth colour ramps plus a little noise; no two corners alike."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 30 + 190 * x / max(width - 1, 1)
    g = 40 + 170 * y / max(height - 1, 1)
    b = 220 - 150 * (x + y) / max(width + height - 2, 1)
    rgb = np.stack([r, g, b], axis=-1) + rng.normal(0, 2, (height, width, 3))
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


@functools.cache
def srgb_profile() -> bytes:
    """An sRGB ICC profile made by LittleCMS, once per process: LittleCMS stamps the creation time
    into the header, so two calls a second apart differ (a test comparing them would be flaky)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_block(orientation: int | None = None, make: str | None = "TestCam") -> Image.Exif:
    """An EXIF block with an orientation and a camera make (to see that other tags survive)."""
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    if make is not None:
        exif[MAKE] = make
    return exif


def xmp_packet(orientation: int = 1, label: str = "fidelity-test") -> bytes:
    """A small XMP packet with a tiff:Orientation attribute and a recognisable label."""
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        f' tiff:Orientation="{orientation}" xmp:Label="{label}"/></rdf:RDF></x:xmpmeta>'
    ).encode()


def xmp_params(fmt: str, xmp: bytes) -> dict:
    """Pillow save parameters that embed ``xmp``: iTXt for PNG, ``xmp=`` for JPEG and WebP."""
    if fmt.upper() == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp.decode())
        return {"pnginfo": info}
    return {"xmp": xmp}


def animated(fmt: str, frames: int = 3, size: tuple[int, int] = (16, 12)) -> bytes:
    """An animated GIF, APNG ("PNG") or WebP with ``frames`` visibly different frames."""
    images = [Image.new("RGB", size, (40 * i % 256, 255 - 50 * i % 256, 90)) for i in range(frames)]
    return to_bytes(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0)


def halo_rgba(size: int = 24, colour: tuple[int, int, int] = (0, 160, 0)) -> Image.Image:
    """An opaque ``colour`` square, half-transparent rim, on fully transparent MAGENTA garbage."""
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = MAGENTA
    lo, hi = size // 3, size - size // 3
    rgba[lo - 1 : hi + 1, lo - 1 : hi + 1, :3] = colour
    rgba[lo - 1 : hi + 1, lo - 1 : hi + 1, 3] = 128
    rgba[lo:hi, lo:hi, 3] = 255
    return Image.fromarray(rgba, "RGBA")


# -- PNG by hand ---------------------------------------------------------------------------------

_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_bytes(array: np.ndarray, *, extra_chunks: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A PNG of ``array`` (H, W) or (H, W, C), uint8 or uint16 (the bit depth), rows unfiltered.

    ``extra_chunks`` (type, payload) go between IHDR and IDAT (iCCP, tRNS, pHYs, ...).
    """
    if array.ndim == 2:
        array = array[:, :, None]
    height, width, channels = array.shape
    depth = 16 if array.dtype == np.uint16 else 8
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = np.ascontiguousarray(array, dtype=">u2" if depth == 16 else np.uint8).view(np.uint8)
    rows = np.concatenate([np.zeros((height, 1), np.uint8), raw.reshape(height, -1)], axis=1)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", png_chunk(b"IHDR", ihdr)]
    parts += [png_chunk(kind, payload) for kind, payload in extra_chunks]
    parts += [png_chunk(b"IDAT", zlib.compress(rows.tobytes())), png_chunk(b"IEND", b"")]
    return b"".join(parts)


def png_header(width: int, height: int, *, depth: int = 8, color_type: int = 2) -> bytes:
    """A well-formed PNG (valid CRCs) declaring ``width`` x ``height`` but holding one row of data.

    Decoding it would need width*height pixels of memory; a correct service refuses it from the
    header alone.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    row = b"\x00" * (1 + min(width, 64) * _CHANNELS[color_type] * depth // 8)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            png_chunk(b"IHDR", ihdr),
            png_chunk(b"IDAT", zlib.compress(row)),
            png_chunk(b"IEND", b""),
        ]
    )


def png_chunks(data: bytes) -> dict[bytes, list[bytes]]:
    """Chunk payloads of a PNG by type, in order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks: dict[bytes, list[bytes]] = {}
    position = 8
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        kind = data[position + 4 : position + 8]
        payload = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack_from(">I", data, position + 8 + length)
        assert zlib.crc32(kind + payload) == crc, f"bad CRC in {kind!r}"
        chunks.setdefault(kind, []).append(payload)
        position += 12 + length
        if kind == b"IEND":
            break
    return chunks


def png_ihdr(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR."""
    width, height, depth, color_type = struct.unpack(">IIBB", png_chunks(data)[b"IHDR"][0][:10])
    return width, height, depth, color_type


def read_png(data: bytes) -> np.ndarray:
    """Decode a non-interlaced 8- or 16-bit gray/GA/RGB/RGBA PNG to (H, W, C) uint8 or uint16.

    An independent reader (no Pillow, no libspng) that undoes all five PNG row filters.
    """
    chunks = png_chunks(data)
    width, height, depth, color_type = struct.unpack(">IIBB", chunks[b"IHDR"][0][:10])
    assert chunks[b"IHDR"][0][12] == 0, "interlaced PNGs are not supported here"
    assert depth in (8, 16) and color_type in (0, 2, 4, 6)
    channels = _CHANNELS[color_type]
    bpp = channels * depth // 8
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(chunks[b"IDAT"])), dtype=np.uint8).reshape(
        height, stride + 1
    )
    out = np.zeros((height, stride), dtype=np.int32)
    previous = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        row = np.zeros(stride, dtype=np.int32)
        for x in range(stride):
            left = row[x - bpp] if x >= bpp else 0
            up = previous[x]
            up_left = previous[x - bpp] if x >= bpp else 0
            if kind == 0:
                predictor = 0
            elif kind == 1:
                predictor = left
            elif kind == 2:
                predictor = up
            elif kind == 3:
                predictor = (left + up) // 2
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
            else:
                raise AssertionError(f"unknown PNG filter {kind}")
            row[x] = (line[x] + predictor) & 0xFF
        out[y] = row
        previous = row
    samples = out.astype(np.uint8)
    if depth == 16:
        return (
            samples.reshape(height, width * channels, 2)
            .view(">u2")[..., 0]
            .astype(np.uint16)
            .reshape(height, width, channels)
        )
    return samples.reshape(height, width, channels)


# -- a CMYK ICC profile by hand ------------------------------------------------------------------


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _lab_corner(c: int, m: int, y: int, k: int) -> tuple[float, float, float]:
    """Lab of one corner of the CMYK cube for a made-up press with dull, realistic inks."""
    # press inks are far from the naive 255 - CMYK primaries (pure cyan is not (0, 255, 255))
    if k:
        return 8.0, 0.0, 0.0
    lightness = 94.0 - 40.0 * c - 45.0 * m - 8.0 * y + 12.0 * c * m * y
    a = 4.0 - 35.0 * c + 60.0 * m - 5.0 * y
    b = 14.0 - 45.0 * c - 5.0 * m + 75.0 * y
    return max(lightness, 10.0), a, b


def cmyk_profile() -> bytes:
    """An ICC v2 CMYK -> Lab input profile (class 'scnr') with a 2-point-per-axis lut16 A2B0.

    It is a made-up press, not a standard one, whose inks convert to visibly different colours than
    Pillow's naive (profile-less) CMYK -> RGB: through it, full cyan is about (0, 144, 181) in sRGB.
    """
    # lut16Type: 4 inputs, 3 outputs, 2 grid points, identity matrix and linear 2-entry curves
    clut = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    lightness, a, b = _lab_corner(c, m, y, k)
                    clut += [
                        round(lightness * 652.8),
                        round((a + 128) * 256),
                        round((b + 128) * 256),
                    ]
    lut = b"".join(
        [
            b"mft2",
            b"\x00" * 4,
            bytes([4, 3, 2, 0]),
            _s15(1) + _s15(0) + _s15(0) + _s15(0) + _s15(1) + _s15(0) + _s15(0) + _s15(0) + _s15(1),
            struct.pack(">HH", 2, 2),
            struct.pack(">8H", *([0, 65535] * 4)),
            struct.pack(f">{len(clut)}H", *clut),
            struct.pack(">6H", *([0, 65535] * 3)),
        ]
    )
    text = b"hand-made CMYK test press\x00"
    desc = (
        b"desc"
        + b"\x00" * 4
        + struct.pack(">I", len(text))
        + text
        + b"\x00" * 4
        + b"\x00" * 4
        + b"\x00" * 3
        + b"\x00" * 67
    )
    wtpt = b"XYZ " + b"\x00" * 4 + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    cprt = b"text" + b"\x00" * 4 + b"public domain\x00"
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"cprt", cprt), (b"A2B0", lut)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = [struct.pack(">I", len(tags))], b""
    for signature, payload in tags:
        payload += b"\x00" * (-len(payload) % 4)
        table.append(signature + struct.pack(">II", offset + len(body), len(payload)))
        body += payload
    size = offset + len(body)
    header = b"".join(
        [
            struct.pack(">I", size),
            b"\x00" * 4,
            b"\x02\x10\x00\x00",
            b"scnr",
            b"CMYK",
            b"Lab ",
            struct.pack(">6H", 2024, 1, 1, 0, 0, 0),
            b"acsp",
            b"\x00" * 4,
            b"\x00" * 4,
            b"\x00" * 4,
            b"\x00" * 4,
            b"\x00" * 8,
            b"\x00" * 4,
            _s15(0.9642) + _s15(1.0) + _s15(0.8249),
            b"\x00" * 4,
            b"\x00" * 16,
            b"\x00" * 28,
        ]
    )
    assert len(header) == 128
    return header + b"".join(table) + body


def photo_array(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like (height, width, 3) uint8 array: smooth gradients, edges and fine texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.4 * np.sin(x / max(width, 1) * 3.1 + 0.3)
    g = 0.5 + 0.4 * np.cos(y / max(height, 1) * 2.7)
    b = 0.5 + 0.3 * np.sin((x + y) / 9.0)
    rgb = np.stack([r, g, b], axis=-1)
    rgb[(x // 7 + y // 5) % 2 == 0] *= 0.85  # hard edges
    rgb += rng.normal(0, 0.03, rgb.shape)  # texture
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    """Image -> bytes in ``fmt`` with Pillow save parameters."""
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def webp_ending_in_nul() -> bytes:
    """A lossless WebP whose RIFF chunk ends in its NUL pad byte (odd-sized payload)."""
    for width in range(8, 64):
        data = encode(Image.fromarray(photo_array(width, 7)), "WEBP", lossless=True)
        if data.endswith(b"\x00"):
            return data
    raise AssertionError("no WebP with a pad byte found")


def incompressible(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that do not compress: what the inside of a real JPEG or PNG looks like to a
    parser (line breaks anywhere, no long runs)."""
    import random

    return random.Random(seed).randbytes(size)


def padded(image: bytes, size: int) -> bytes:
    """A valid PNG or JPEG ``image`` padded with incompressible bytes to exactly ``size`` bytes:
    a private ancillary PNG chunk, or JPEG comment segments after the SOI marker."""
    if image.startswith(b"\x89PNG"):
        data = incompressible(size - len(image) - 12)  # chunk length + type + CRC
        chunk = png_chunk(b"prVt", data)
        end = image.rindex(b"IEND") - 4
        return image[:end] + chunk + image[end:]
    left, segments, k = size - len(image), [], 0
    assert left == 0 or left >= 4, f"{size} bytes cannot be reached from {len(image)}"
    while left:
        n = min(left, 65535 + 2)
        if 0 < left - n < 4:  # keep room for one more segment header
            n = left - 4
        segments.append(b"\xff\xfe" + (n - 2).to_bytes(2, "big") + incompressible(n - 4, k))
        left, k = left - n, k + 1
    return image[:2] + b"".join(segments) + image[2:]


def tiff_bytes(array: np.ndarray, *, declared: tuple[int, int] | None = None) -> bytes:
    """A minimal uncompressed little-endian TIFF of a (H, W) or (H, W, C) uint8/uint16 array
    (C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA), written by hand (Pillow cannot write 16-bit colour);
    ``declared`` makes the header claim another (width, height) than the pixels it carries."""
    if array.ndim == 2:
        array = array[:, :, None]
    height, width, channels = array.shape
    bits = array.dtype.itemsize * 8
    pixels = array.astype(array.dtype.newbyteorder("<")).tobytes()
    width, height = declared or (width, height)
    entries = [
        (256, 4, [width]),
        (257, 4, [height]),
        (258, 3, [bits] * channels),
        (259, 3, [1]),
        (262, 3, [2 if channels >= 3 else 1]),
        (273, 4, [0]),  # strip offset, filled in below
        (277, 3, [channels]),
        (278, 4, [height]),
        (279, 4, [len(pixels)]),
        (284, 3, [1]),
    ]
    if channels in (2, 4):
        entries.append((338, 3, [2]))  # unassociated alpha
    ifd_size = 2 + 12 * len(entries) + 4
    extra = b""
    extra_at = 8 + ifd_size
    body = []
    for tag, kind, values in entries:
        size = {3: 2, 4: 4}[kind]
        packed = b"".join(v.to_bytes(size, "little") for v in values)
        if len(packed) > 4:
            body.append((tag, kind, len(values), (extra_at + len(extra)).to_bytes(4, "little")))
            extra += packed
        else:
            body.append((tag, kind, len(values), packed.ljust(4, b"\x00")))
    strip_at = extra_at + len(extra)
    ifd = len(entries).to_bytes(2, "little")
    for tag, kind, count, value in body:
        if tag == 273:
            value = strip_at.to_bytes(4, "little")
        ifd += struct.pack("<HHI", tag, kind, count) + value
    ifd += b"\x00\x00\x00\x00"
    return b"II*\x00" + (8).to_bytes(4, "little") + ifd + extra + pixels


def ispe_declaring(data: bytes, width: int, height: int) -> bytes:
    """A HEIF or AVIF whose ``ispe`` box (the image's spatial extent) claims another size."""
    at = data.index(b"ispe") + 8  # box type, then version and flags
    return data[:at] + struct.pack(">II", width, height) + data[at + 8 :]
