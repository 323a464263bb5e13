"""Decoding and encoding (enhancer.imaging): allow-list, limits, modes, orientation, metadata."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image, ImageCms, ImageOps, TiffImagePlugin

from enhancer.contract import ALLOWED_TEXT
from enhancer.errors import BadRequest, PayloadTooLarge, UnsupportedMedia
from enhancer.imaging import (
    Metadata,
    Picture,
    check_output_format,
    encode_picture,
    fill_transparent,
    load_picture,
    open_image,
    png16,
    resize,
    resolve_format,
    sniff_format,
)
from tests.helpers.images import (
    MAGENTA,
    MAKE,
    ORIENTATION,
    animated,
    cmyk_profile,
    exif_block,
    gradient,
    open_bytes,
    png_bytes,
    png_chunks,
    png_header,
    png_ihdr,
    read_png,
    srgb_profile,
    to_bytes,
    xmp_packet,
    xmp_params,
)

CAP = 4096 * 4096


def decode(data: bytes, cap: int = CAP) -> Picture:
    image, fmt = open_image(data, cap)
    return load_picture(image, data, fmt)


def as_uint8(planes: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) uint8, rounded."""
    return (planes.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def rgb_image(width: int = 9, height: int = 7, seed: int = 0) -> Image.Image:
    return Image.fromarray(gradient(width, height, seed))


# -- the allow-list --------------------------------------------------------------------------------


def _ico() -> bytes:
    return to_bytes(rgb_image(16, 16), "ICO")


REFUSED = {
    "psd": (lambda: b"8BPS\x00\x01" + b"\x00" * 40, "PSD"),
    "eps": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "EPS"),
    "eps-binary": (lambda: b"\xc5\xd0\xd3\xc6" + b"\x00" * 40, "EPS"),
    "pdf": (lambda: b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n", "PDF"),
    "svg": (
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
        "SVG",
    ),
    "svg-xml": (lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    "html-renamed-png": (
        lambda: b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
        "HTML",
    ),
    "html-leading-space": (lambda: b"\n  <html><script>alert(1)</script></html>", "HTML"),
    "ico": (_ico, "ICO"),
    "jpeg2000": (lambda: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 32, "JPEG 2000"),
    "qoi": (lambda: b"qoif\x00\x00\x00\x04\x00\x00\x00\x04\x03\x00" + b"\x00" * 8, "QOI"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_formats_outside_the_allow_list_are_415_naming_the_format(name):
    build, named = REFUSED[name]
    with pytest.raises(UnsupportedMedia) as caught:
        open_image(build(), CAP)
    assert caught.value.status == 415
    assert named in caught.value.message
    assert ALLOWED_TEXT in caught.value.message  # says what to send instead


def test_ghostscript_is_switched_off():
    assert EpsImagePlugin.gs_binary is False


@pytest.mark.parametrize(
    "fmt,params,name",
    [
        ("PNG", {}, "PNG"),
        ("JPEG", {}, "JPEG"),
        ("WEBP", {}, "WEBP"),
        ("GIF", {}, "GIF"),
        ("BMP", {}, "BMP"),
    ],
)
def test_allowed_formats_are_sniffed_from_their_bytes(fmt, params, name):
    data = to_bytes(rgb_image(), fmt, **params)
    assert sniff_format(data) == name
    image, found = open_image(data, CAP)
    assert found == name and image.size == (9, 7)


def _truncated_jpeg() -> bytes:
    data = to_bytes(Image.fromarray(gradient(64, 48)), "JPEG", quality=90)
    return data[: len(data) // 2]


def _png_bad_crc(chunk: bytes) -> bytes:
    data = bytearray(to_bytes(rgb_image(20, 10)))
    at = data.index(chunk)
    (length,) = struct.unpack(">I", data[at - 4 : at])
    data[at + 4 + length] ^= 0x5A  # first CRC byte
    return bytes(data)


def _png_cut_in_idat() -> bytes:
    data = to_bytes(Image.fromarray(gradient(40, 30)))
    at = data.index(b"IDAT")
    return data[: at + 20]


UNREADABLE = {
    "empty": lambda: b"",
    "one-byte-png": lambda: b"\x89",
    "one-byte-jpeg": lambda: b"\xff",
    "garbage": lambda: np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "text": lambda: b"hello, this is not an image",
    "truncated-jpeg": _truncated_jpeg,
    "jpeg-garbage-after-soi": lambda: b"\xff\xd8\xff" + np.random.default_rng(3).bytes(2000),
    "png-signature-only": lambda: b"\x89PNG\r\n\x1a\n",
    "png-bad-crc-ihdr": lambda: _png_bad_crc(b"IHDR"),
    "png-bad-crc-idat": lambda: _png_bad_crc(b"IDAT"),
    "png-cut-in-idat": _png_cut_in_idat,
    "png-zero-width": lambda: png_header(0, 5),
    "gif-header-only": lambda: b"GIF89a",
    "webp-header-only": lambda: b"RIFF\x10\x00\x00\x00WEBPVP8 ",
    "bmp-header-only": lambda: b"BM" + b"\x00" * 30,
}


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_data_is_400(name):
    with pytest.raises(BadRequest) as caught:
        decode(UNREADABLE[name]())
    assert caught.value.status == 400
    message = caught.value.message
    assert "BytesIO" not in message and "0x" not in message  # no Python object reprs
    assert any(word in message for word in ("not a readable image", "truncated", "corrupt"))


def test_bad_idat_crc_names_the_chunk():
    with pytest.raises(BadRequest, match="IDAT.*CRC"):
        decode(_png_bad_crc(b"IDAT"))


# -- pixel caps from the header --------------------------------------------------------------------


def _patched_jpeg(width: int, height: int) -> bytes:
    data = bytearray(to_bytes(rgb_image(16, 12), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _patched_gif(width: int, height: int) -> bytes:
    data = bytearray(to_bytes(rgb_image(16, 12).convert("P"), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    descriptor = data.index(b"\x2c", 13)
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def _patched_bmp(width: int, height: int) -> bytes:
    data = bytearray(to_bytes(rgb_image(16, 12), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


HUGE = {
    "png-20000x20000": (lambda: png_header(20000, 20000), "20000x20000"),
    "png-1x200000000": (lambda: png_header(1, 200_000_000), "1x200000000"),
    "png-200000000x1": (lambda: png_header(200_000_000, 1), "200000000x1"),
    "png-just-over": (lambda: png_header(4097, 4096), "4097x4096"),
    "png-16bit-rgba": (lambda: png_header(30000, 30000, depth=16, color_type=6), "30000x30000"),
    "png-max-ihdr": (lambda: png_header(2**31 - 1, 2**31 - 1), None),
    "jpeg-20000x20000": (lambda: _patched_jpeg(20000, 20000), None),
    "jpeg-just-over": (lambda: _patched_jpeg(4097, 4096), "4097x4096"),
    "gif-65535x65535": (lambda: _patched_gif(65535, 65535), None),
    "bmp-20000x20000": (lambda: _patched_bmp(20000, 20000), None),
}


@pytest.mark.parametrize("name", sorted(HUGE))
def test_header_declared_huge_sizes_are_413_giving_the_limit_before_decoding(name):
    build, size_text = HUGE[name]
    data = build()
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge) as caught:
        decode(data)  # open_image refuses it; load_picture is never reached
    elapsed = time.perf_counter() - started
    assert caught.value.status == 413
    assert "16,777,216" in caught.value.message  # the limit
    if size_text:
        assert size_text in caught.value.message  # and, where the header is ours to read, the size
    # nothing was decoded or allocated (a 20000x20000 RGB decode takes seconds and 1.2 GB)
    assert elapsed < 2.0


def test_pixel_cap_is_inclusive():
    data = to_bytes(rgb_image(12, 10))
    assert decode(data, cap=120).size == (12, 10)
    with pytest.raises(PayloadTooLarge, match="12x10 = 120 pixels; the limit is 119 pixels"):
        decode(data, cap=119)


# -- animation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
@pytest.mark.parametrize("frames", [2, 5])
def test_animated_images_are_415_naming_the_frame_count(fmt, frames):
    with pytest.raises(UnsupportedMedia) as caught:
        open_image(animated(fmt, frames), CAP)
    assert caught.value.status == 415
    assert f"{frames} frames" in caught.value.message
    assert "animated" in caught.value.message


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_a_single_frame_of_an_animation_format_is_fine(fmt):
    picture = decode(animated(fmt, 1))
    assert picture.size == (16, 12)


# -- modes -----------------------------------------------------------------------------------------


def _pillow_reference(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """What the Picture should hold, by Pillow's own conversions: (RGB uint8, alpha uint8, gray)."""
    has_alpha = image.mode in ("LA", "RGBA", "PA") or "transparency" in image.info
    gray = image.mode in ("1", "L", "LA")
    rgba = np.array(image.convert("LA" if gray else "RGBA"))
    if gray:
        rgb = np.repeat(rgba[..., :1], 3, axis=2)
    else:
        rgb = rgba[..., :3]
    return rgb, (rgba[..., -1] if has_alpha else None), gray


def _mode_image(mode: str) -> Image.Image:
    base = rgb_image(11, 8)
    if mode == "LA":
        image = base.convert("L")
        image.putalpha(Image.fromarray(np.linspace(0, 255, 88).reshape(8, 11).astype(np.uint8)))
        return image
    if mode == "RGBA":
        image = base.copy()
        image.putalpha(Image.fromarray(np.linspace(255, 0, 88).reshape(8, 11).astype(np.uint8)))
        return image
    if mode == "P":
        return base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return base.convert(mode)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA"])
def test_png_modes_decode_as_pillow_converts_them(mode):
    image = _mode_image(mode)
    picture = decode(to_bytes(image))
    rgb, alpha, gray = _pillow_reference(image)
    assert picture.bits == 8
    assert picture.grayscale is gray
    np.testing.assert_array_equal(as_uint8(picture.color), rgb)
    if alpha is None:
        assert picture.alpha is None
    else:
        np.testing.assert_array_equal(as_uint8(picture.alpha)[..., 0], alpha)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_gets_an_alpha_plane(fmt):
    palette = Image.new("P", (10, 6))
    palette.putpalette([*MAGENTA, 200, 30, 40, 10, 200, 90])
    pixels = np.array([[1, 2, 0] * 3 + [1]] * 6, dtype=np.uint8)
    palette.putdata(pixels.ravel().tolist())
    data = to_bytes(palette, fmt, transparency=0)
    picture = decode(data)
    reference = np.array(open_bytes(data).convert("RGBA"))
    assert picture.alpha is not None and not picture.grayscale
    np.testing.assert_array_equal(as_uint8(picture.alpha)[..., 0], reference[..., 3])
    visible = reference[..., 3] > 0
    np.testing.assert_array_equal(as_uint8(picture.color)[visible], reference[..., :3][visible])
    assert (reference[..., 3] == 0).sum() == 18  # the test really has transparent pixels


@pytest.mark.parametrize("mode", ["RGB", "L", "1"])
def test_a_png_colour_key_becomes_alpha(mode):
    image = rgb_image(8, 6).convert(mode)
    key = image.getpixel((2, 3))
    data = to_bytes(image, transparency=key)
    picture = decode(data)
    assert picture.alpha is not None
    expected = np.array(open_bytes(data).convert("RGBA"))[..., 3]
    np.testing.assert_array_equal(as_uint8(picture.alpha)[..., 0], expected)
    assert picture.alpha[0, 3, 2] == 0
    assert picture.grayscale is (mode != "RGB")


def test_a_16_bit_gray_colour_key_becomes_alpha():
    ramp = np.tile(np.arange(0, 60000, 5000, dtype=np.uint16), (3, 1))
    picture = decode(to_bytes(Image.fromarray(ramp), transparency=5000))
    assert picture.bits == 16 and picture.grayscale
    expected = (ramp != 5000).astype(np.float32)
    np.testing.assert_array_equal(picture.alpha[0].numpy(), expected)
    assert expected.min() == 0  # the key is really in the image


def test_cmyk_without_a_profile_matches_pillows_conversion():
    cmyk = rgb_image(12, 9).convert("CMYK")
    data = to_bytes(cmyk, "JPEG", quality=95)
    picture = decode(data)
    reference = np.array(open_bytes(data).convert("RGB"))
    np.testing.assert_array_equal(as_uint8(picture.color), reference)
    assert picture.meta.icc is None and picture.alpha is None and not picture.grayscale


def test_cmyk_with_a_profile_is_converted_through_it_to_srgb():
    profile = cmyk_profile()
    cmyk = Image.fromarray(
        np.stack(np.meshgrid(np.linspace(0, 255, 6), np.linspace(0, 200, 5)) * 2, axis=-1).astype(
            np.uint8
        ),
        "CMYK",
    )
    data = to_bytes(cmyk, "JPEG", quality=100, icc_profile=profile)
    decoded = open_bytes(data)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    reference = np.array(
        ImageCms.profileToProfile(
            decoded, ImageCms.ImageCmsProfile(io.BytesIO(profile)), srgb, outputMode="RGB"
        )
    )
    naive = np.array(decoded.convert("RGB"))
    assert np.abs(reference.astype(int) - naive).max() > 40  # the profile matters for this image
    picture = decode(data)
    assert np.abs(as_uint8(picture.color).astype(int) - reference).max() <= 1
    # the pixels are sRGB now, so the output must say so (not carry the CMYK profile)
    assert picture.meta.icc is not None and picture.meta.icc != profile
    description = ImageCms.getProfileDescription(
        ImageCms.ImageCmsProfile(io.BytesIO(picture.meta.icc))
    )
    assert "sRGB" in description


def test_16_bit_gray_ramp_keeps_its_values():
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (5, 1))
    data = to_bytes(Image.fromarray(ramp))
    assert png_ihdr(data)[2:] == (16, 0)
    picture = decode(data)
    assert picture.bits == 16 and picture.grayscale and picture.alpha is None
    np.testing.assert_allclose(picture.color[0].numpy(), ramp / 65535.0, atol=1e-6)
    assert picture.color.max() == 1.0  # not clamped to 255/65535


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_colour_and_gray_alpha_pngs_keep_16_bits(channels):
    rng = np.random.default_rng(channels)
    array = rng.integers(0, 65536, (6, 9, channels), dtype=np.uint16)
    array[0, 0, : min(channels, 3)] = 257  # a value 8 bits cannot hold exactly (257 = 1/255)
    array[0, 1, : min(channels, 3)] = 1000
    data = png_bytes(array)
    picture = decode(data)
    assert picture.bits == 16
    expected = array.astype(np.float32) / 65535.0
    color = picture.color.permute(1, 2, 0).numpy()
    if channels == 2:
        assert picture.grayscale
        np.testing.assert_allclose(color, np.repeat(expected[..., :1], 3, axis=2), atol=1e-6)
    else:
        assert not picture.grayscale
        np.testing.assert_allclose(color, expected[..., :3], atol=1e-6)
    if channels in (2, 4):
        np.testing.assert_allclose(picture.alpha[0].numpy(), expected[..., -1], atol=1e-6)
    else:
        assert picture.alpha is None  # an RGB PNG has no alpha, even if a decoder adds one


def test_16_bit_rgb_colour_key_becomes_alpha():
    array = np.full((4, 5, 3), 30000, dtype=np.uint16)
    array[1, 2] = (1000, 2000, 3000)
    data = png_bytes(array, extra_chunks=((b"tRNS", struct.pack(">3H", 1000, 2000, 3000)),))
    picture = decode(data)
    expected = np.ones((4, 5), np.float32)
    expected[1, 2] = 0
    np.testing.assert_array_equal(picture.alpha[0].numpy(), expected)


def test_modes_without_a_meaning_here_are_415():
    from enhancer.imaging.decode import _from_pillow

    floats = Image.fromarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), "F")
    with pytest.raises(UnsupportedMedia, match="mode F"):
        _from_pillow(floats, None)
    wide = Image.fromarray(np.array([[0, 70000]], dtype=np.int32), "I")
    with pytest.raises(UnsupportedMedia, match="32-bit"):
        _from_pillow(wide, None)
    negative = Image.fromarray(np.array([[-5, 10]], dtype=np.int32), "I")
    with pytest.raises(UnsupportedMedia):
        _from_pillow(negative, None)
    within = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    color, _, gray, bits, _ = _from_pillow(within, None)
    assert gray and bits == 16 and color[0, 0, 1] == 1.0
    with pytest.raises(UnsupportedMedia, match="mode HSV"):
        _from_pillow(Image.new("HSV", (2, 2)), None)


# -- orientation and metadata ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_exif_transpose(fmt, orientation):
    params = {"quality": 100} if fmt == "WEBP" else {}
    data = to_bytes(rgb_image(7, 4), fmt, exif=exif_block(orientation), **params)
    reference = ImageOps.exif_transpose(open_bytes(data)).convert("RGB")
    picture = decode(data)
    assert picture.size == reference.size == ((7, 4) if orientation <= 4 else (4, 7))
    np.testing.assert_array_equal(as_uint8(picture.color), np.array(reference))
    exif = Image.Exif()
    exif.load(picture.meta.exif)
    assert exif[ORIENTATION] == 1  # the pixels are upright now
    assert exif[MAKE] == "TestCam"  # and the other tags are kept


def test_xmp_orientation_is_reset_too():
    data = to_bytes(rgb_image(), "JPEG", exif=exif_block(6), xmp=xmp_packet(6))
    picture = decode(data)
    assert b'tiff:Orientation="1"' in picture.meta.xmp
    assert b'tiff:Orientation="6"' not in picture.meta.xmp
    assert b'xmp:Label="fidelity-test"' in picture.meta.xmp


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_icc_exif_xmp_and_dpi_are_read(fmt):
    icc = srgb_profile()
    params = {"icc_profile": icc, "exif": exif_block(1), **xmp_params(fmt, xmp_packet())}
    if fmt != "WEBP":
        params["dpi"] = (300, 300)
    picture = decode(to_bytes(rgb_image(), fmt, **params))
    assert picture.meta.icc == icc
    assert picture.meta.source_format == fmt
    assert b"fidelity-test" in picture.meta.xmp
    exif = Image.Exif()
    exif.load(picture.meta.exif)
    assert exif[MAKE] == "TestCam"
    if fmt != "WEBP":
        assert picture.meta.dpi == pytest.approx((300, 300), abs=0.01)


def _exif_with_resolution(dpi: float) -> Image.Exif:
    exif = exif_block(1)
    exif[0x011A] = exif[0x011B] = TiffImagePlugin.IFDRational(dpi)  # X and Y resolution
    exif[0x0128] = 2  # inches
    return exif


@pytest.mark.parametrize("dpi", [4e9, 0.001, 70_000])
def test_an_absurd_resolution_is_ignored_not_written(dpi):
    data = to_bytes(rgb_image(), "JPEG", exif=_exif_with_resolution(dpi))
    assert open_bytes(data).info["dpi"] == pytest.approx((dpi, dpi))  # what Pillow passes on
    picture = decode(data)
    assert picture.meta.dpi is None
    for fmt in ("png", "jpeg"):  # 4e9 dpi once made the PNG encoder raise OverflowError
        open_bytes(_encode(picture.color, fmt=fmt, meta=picture.meta))


def test_a_sane_resolution_from_exif_is_kept():
    picture = decode(to_bytes(rgb_image(), "JPEG", exif=_exif_with_resolution(240)))
    assert picture.meta.dpi == (240.0, 240.0)


def test_jpeg_leaves_out_metadata_too_big_for_one_segment_and_keeps_the_rest():
    xmp = b"<x:xmpmeta>" + b"x" * 70_000 + b"</x:xmpmeta>"
    exif = exif_block(1)
    exif[0x9286] = b"ASCII\x00\x00\x00" + b"c" * 70_000  # UserComment
    meta = Metadata("PNG", icc=srgb_profile(), exif=exif.tobytes(), xmp=xmp, dpi=(96.0, 96.0))
    image = open_bytes(_encode(_planes(8, 5, 3), fmt="jpeg", meta=meta))
    assert image.info["icc_profile"] == meta.icc and image.info["dpi"] == (96, 96)
    assert "xmp" not in image.info and "exif" not in image.info
    fitting = Metadata(
        "PNG", exif=exif_block(1).tobytes(), xmp=b"<x:xmpmeta>" + b"x" * 65_000 + b"</x>"
    )
    image = open_bytes(_encode(_planes(8, 5, 3), fmt="jpeg", meta=fitting))
    assert len(image.info["xmp"]) == len(fitting.xmp) and image.getexif()[MAKE] == "TestCam"
    for fmt in ("png", "webp"):  # these hold any size
        image = open_bytes(_encode(_planes(8, 5, 3), fmt=fmt, meta=meta))
        assert len(_xmp_of(image)) == len(xmp) and len(image.info["exif"]) > 70_000


def test_a_broken_exif_block_costs_the_exif_not_the_photo():
    data = to_bytes(rgb_image(), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        picture = decode(data)
    assert picture.size == (9, 7)
    assert not caught  # Pillow's "Corrupt EXIF data" warning is logged, not leaked


# -- encoding --------------------------------------------------------------------------------------


def _planes(width: int, height: int, channels: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(
        np.random.default_rng(seed).random((channels, height, width), dtype=np.float32)
    )


def _encode(
    color, alpha=None, *, grayscale=False, bits=8, fmt="png", quality=90, meta=None
) -> bytes:
    return encode_picture(
        color,
        alpha,
        grayscale=grayscale,
        bits=bits,
        fmt=fmt,
        quality=quality,
        meta=meta or Metadata("PNG"),
    )


@pytest.mark.parametrize(
    "grayscale,has_alpha,fmt,mode",
    [
        (False, False, "png", "RGB"),
        (False, True, "png", "RGBA"),
        (True, False, "png", "L"),
        (True, True, "png", "LA"),
        (False, False, "jpeg", "RGB"),
        (True, False, "jpeg", "L"),
        (False, True, "jpeg", "RGB"),
        (True, True, "jpeg", "L"),
        (False, False, "webp", "RGB"),
        (False, True, "webp", "RGBA"),
        (True, False, "webp", "RGB"),
        (True, True, "webp", "RGBA"),
    ],
)
def test_8_bit_output_modes(grayscale, has_alpha, fmt, mode):
    gray = _planes(10, 6, 1)
    color = gray.expand(3, -1, -1) if grayscale else _planes(10, 6, 3)
    alpha = _planes(10, 6, 1, seed=1) if has_alpha else None
    data = _encode(color, alpha, grayscale=grayscale, fmt=fmt)
    image = open_bytes(data)
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    assert image.mode == mode and image.size == (10, 6)
    if fmt == "png":
        expected = (
            np.round(gray.numpy()[0] * 255)
            if grayscale
            else np.round(color.permute(1, 2, 0).numpy() * 255)
        )
        got = np.array(image)
        got = got[..., 0] if grayscale and got.ndim == 3 else got
        got = got[..., :3] if not grayscale else got
        assert np.abs(got.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("channels,grayscale", [(1, True), (2, True), (3, False), (4, False)])
def test_16_bit_png_output_keeps_16_bits(channels, grayscale):
    rng = np.random.default_rng(channels)
    values = rng.integers(0, 65536, (6, 9), dtype=np.uint16)
    values[0, 0], values[0, 1] = 257, 1000
    gray = torch.from_numpy(values.astype(np.float32) / 65535.0)[None]
    color = gray.expand(3, -1, -1) if grayscale else torch.cat([gray, 1 - gray, gray.flip(2)])
    alpha = (
        torch.from_numpy(rng.random((1, 6, 9), dtype=np.float32)) if channels in (2, 4) else None
    )
    data = _encode(color, alpha, grayscale=grayscale, bits=16)
    width, height, depth, color_type = png_ihdr(data)
    assert (width, height, depth) == (9, 6, 16)
    assert color_type == {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    got = read_png(data)  # an independent reader
    assert got.dtype == np.uint16
    assert np.abs(got[..., 0].astype(int) - values).max() <= 1
    if alpha is not None:
        expected_alpha = np.round(alpha[0].numpy() * 65535)
        assert np.abs(got[..., -1].astype(int) - expected_alpha).max() <= 1


def test_16_bit_input_as_jpeg_or_webp_is_8_bit():
    color = _planes(8, 5, 3)
    for fmt in ("jpeg", "webp"):
        image = open_bytes(_encode(color, bits=16, fmt=fmt))
        assert image.mode == "RGB"


def test_jpeg_flattens_alpha_onto_white():
    red = torch.zeros(3, 4, 6)
    red[0] = 1.0
    alpha = torch.zeros(1, 4, 6)
    alpha[:, :, 2:4] = 0.5
    alpha[:, :, 4:] = 1.0
    image = np.array(open_bytes(_encode(red, alpha, fmt="jpeg", quality=100))).astype(int)
    assert np.abs(image[:, 0] - [255, 255, 255]).max() <= 3  # transparent -> white, not black
    assert np.abs(image[:, 2] - [255, 128, 128]).max() <= 4  # half -> pink
    assert np.abs(image[:, 5] - [255, 0, 0]).max() <= 4


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lower_quality_gives_smaller_files(fmt):
    color = torch.from_numpy(gradient(48, 32).astype(np.float32) / 255).permute(2, 0, 1)
    color = (color + 0.1 * _planes(48, 32, 3)).clamp(0, 1)
    sizes = [len(_encode(color, fmt=fmt, quality=q)) for q in (10, 50, 95)]
    assert sizes[0] < sizes[1] < sizes[2]


META = Metadata("JPEG", icc=None, exif=None, xmp=None, dpi=(300.0, 150.0))


@pytest.mark.parametrize("fmt,bits", [("png", 8), ("png", 16), ("jpeg", 8), ("webp", 8)])
@pytest.mark.parametrize("grayscale,has_alpha", [(False, False), (False, True), (True, False)])
def test_metadata_is_written_in_every_format_that_holds_it(fmt, bits, grayscale, has_alpha):
    exif = exif_block(1)
    meta = Metadata(
        "JPEG", icc=srgb_profile(), exif=exif.tobytes(), xmp=xmp_packet(), dpi=(300.0, 150.0)
    )
    color = _planes(8, 5, 3)
    alpha = _planes(8, 5, 1, seed=3) if has_alpha else None
    data = _encode(color, alpha, grayscale=grayscale, bits=bits, fmt=fmt, meta=meta)
    image = open_bytes(data)
    assert image.info.get("icc_profile") == meta.icc
    assert image.getexif().get(MAKE) == "TestCam"
    assert b"fidelity-test" in _xmp_of(image)
    if fmt != "webp":  # WebP has no resolution field
        assert image.info["dpi"] == pytest.approx((300, 150), abs=0.05)  # PNG stores dots per metre
    if fmt == "png" and bits == 16:
        assert png_ihdr(data)[2] == 16


def _xmp_of(image: Image.Image) -> bytes:
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp") or b""
    return xmp.encode() if isinstance(xmp, str) else xmp


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_writes_exact_samples_and_chunks(channels):
    array = np.random.default_rng(channels).integers(0, 65536, (7, 5, channels), dtype=np.uint16)
    icc, xmp = srgb_profile(), xmp_packet()
    data = png16(
        array,
        icc=icc,
        exif=b"Exif\x00\x00" + exif_block(1).tobytes()[6:],
        xmp=xmp,
        dpi=(72.0, 72.0),
    )
    np.testing.assert_array_equal(read_png(data), array)
    chunks = png_chunks(data)
    iccp = chunks[b"iCCP"][0]
    assert zlib.decompress(iccp[iccp.index(b"\x00") + 2 :]) == icc
    assert not chunks[b"eXIf"][0].startswith(b"Exif")  # the PNG chunk holds the TIFF block itself
    assert struct.unpack(">IIB", chunks[b"pHYs"][0]) == (2835, 2835, 1)
    assert chunks[b"iTXt"][0].endswith(xmp)


def test_png16_chunks_are_read_back_by_pillow():
    data = png16(
        np.zeros((2, 3, 3), np.uint16),
        icc=srgb_profile(),
        exif=exif_block(1).tobytes(),
        xmp=xmp_packet(),
        dpi=(300.0, 300.0),
    )
    image = open_bytes(data)
    assert image.info["icc_profile"] == srgb_profile()
    assert image.getexif()[MAKE] == "TestCam"
    assert b"fidelity-test" in _xmp_of(image)
    assert image.info["dpi"] == pytest.approx((300, 300), abs=0.01)


def _picture(fmt: str, *, alpha: bool = False, bits: int = 8) -> Picture:
    return Picture(
        color=torch.zeros(3, 2, 2),
        alpha=torch.ones(1, 2, 2) if alpha else None,
        grayscale=False,
        bits=bits,
        meta=Metadata(fmt),
    )


@pytest.mark.parametrize(
    "source,alpha,bits,expected",
    [
        ("JPEG", False, 8, "jpeg"),
        ("WEBP", False, 8, "webp"),
        ("PNG", False, 8, "png"),
        ("GIF", False, 8, "png"),
        ("BMP", False, 8, "png"),
        ("WEBP", True, 8, "png"),
        ("JPEG", False, 16, "png"),
    ],
)
def test_auto_format(source, alpha, bits, expected):
    assert resolve_format("auto", _picture(source, alpha=alpha, bits=bits)) == expected
    assert resolve_format("webp", _picture(source, alpha=alpha, bits=bits)) == "webp"


@pytest.mark.parametrize(
    "fmt,side,refused",
    [
        ("webp", 16383, False),
        ("webp", 16384, True),
        ("jpeg", 65500, False),
        ("jpeg", 65501, True),
        ("png", 100_000, False),
    ],
)
def test_output_side_limits_per_format(fmt, side, refused):
    if refused:
        with pytest.raises(PayloadTooLarge, match=f"too large for {fmt}"):
            check_output_format(fmt, (side, 10))
    else:
        check_output_format(fmt, (10, side))


# -- resize and transparent fill -----------------------------------------------------------------


def test_resize_keeps_a_flat_colour_and_stays_in_range():
    flat = torch.tensor([0.2, 0.5, 1.0])[:, None, None].expand(3, 7, 5)
    for size in [(5, 7), (11, 17), (3, 2), (1, 1)]:
        out = resize(flat, size)
        assert out.shape == (3, size[1], size[0])
        torch.testing.assert_close(out, flat[:, :1, :1].expand_as(out), atol=1e-6, rtol=0)
    sharp = torch.zeros(3, 8, 8)
    sharp[:, :, 4:] = 1.0
    up = resize(sharp, (29, 29))
    assert up.min() >= 0.0 and up.max() <= 1.0  # bicubic overshoot is clamped


def test_fill_transparent_takes_the_visible_colour_not_the_garbage():
    rgba = np.zeros((12, 16, 4), np.float32)
    rgba[..., :3] = np.array(MAGENTA) / 255
    rgba[:, :5, :3] = (0.9, 0.1, 0.1)  # red on the left
    rgba[:, 11:, :3] = (0.1, 0.1, 0.9)  # blue on the right
    rgba[:, :5, 3] = 1.0
    rgba[:, 11:, 3] = 1.0
    planes = torch.from_numpy(rgba).permute(2, 0, 1)
    filled = fill_transparent(planes[:3].contiguous(), planes[3:].contiguous())
    torch.testing.assert_close(filled[:, :, :5], planes[:3, :, :5])  # visible pixels untouched
    torch.testing.assert_close(filled[:, :, 11:], planes[:3, :, 11:])
    hidden = filled[:, :, 5:11]
    assert not bool(((hidden[0] > 0.8) & (hidden[2] > 0.8)).any())  # nothing magenta is left
    next_to_red, next_to_blue = filled[:, :, 5], filled[:, :, 10]
    assert float(next_to_red[0].mean()) > float(next_to_red[2].mean())
    assert float(next_to_blue[2].mean()) > float(next_to_blue[0].mean())


def test_fill_transparent_edge_cases():
    color = torch.rand(3, 4, 4)
    opaque = torch.ones(1, 4, 4)
    assert fill_transparent(color, opaque) is color
    nothing = fill_transparent(color, torch.zeros(1, 4, 4))
    assert torch.isfinite(nothing).all() and nothing.min() >= 0 and nothing.max() <= 1
    one = torch.zeros(1, 1, 7)
    one[0, 0, 3] = 1.0
    line = fill_transparent(torch.rand(3, 1, 7), one)
    assert torch.isfinite(line).all()
