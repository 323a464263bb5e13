"""HEIC/HEIF, AVIF and TIFF: read and written like the other formats (issue 12, part 1).

Fidelity (orientation, ICC, EXIF, XMP, gray, alpha, 16 bits, colours) and bad inputs (truncated,
bomb header, multi-frame, spoofed) through the engine, as the handler and the Triton binding run it.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from enhancer import contract
from enhancer.errors import BadRequest, PayloadTooLarge, UnsupportedMedia
from enhancer.imaging import load_picture, open_image
from tests.helpers.images import (
    MAKE,
    ORIENTATION,
    exif_block,
    ispe_declaring,
    open_bytes,
    photo_array,
    srgb_profile,
    tiff_bytes,
    to_bytes,
    xmp_packet,
)

CAP = 4096 * 4096
EXIF_IFD, DATE_TAKEN = 0x8769, 0x9003
# Pillow's name of each new input format, and what ``format=auto`` writes for it.
NEW_INPUTS = {"HEIF": "jpeg", "AVIF": "avif", "TIFF": "tiff"}


def photo(width: int = 40, height: int = 30, mode: str = "RGB", seed: int = 0) -> Image.Image:
    return Image.fromarray(photo_array(width, height, seed)).convert(mode)


def camera_exif(orientation: int | None = None) -> bytes:
    """EXIF as a camera writes it: a make, maybe an orientation, and a date in the EXIF sub-IFD."""
    exif = exif_block(orientation)
    exif[EXIF_IFD] = {DATE_TAKEN: "2024:05:06 07:08:09"}
    return exif.tobytes()


def encoded(fmt: str, image: Image.Image | None = None, **params) -> bytes:
    """``image`` (a photo by default) as HEIF, AVIF or TIFF, lossless where the format can be."""
    image = image or photo()
    if fmt in ("HEIF", "AVIF"):
        params.setdefault("quality", 95)
    return to_bytes(image, fmt, **params)


def mean_rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)


# -- recognised, allowed, and read -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(NEW_INPUTS))
def test_new_formats_are_sniffed_and_allowed(fmt):
    data = encoded(fmt)
    assert contract.sniff_format(data) == fmt
    assert contract.is_allowed_image(data)
    assert fmt in contract.ALLOWED_FORMATS and fmt in contract.INPUT_MEDIA_TYPES


def test_avif_under_a_mif1_major_brand_is_avif():
    box = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf"
    assert contract.sniff_format(box + b"\x00" * 16) == "AVIF"
    heic = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1heicmiaf"
    assert contract.sniff_format(heic + b"\x00" * 16) == "HEIF"


@pytest.mark.parametrize("fmt", sorted(NEW_INPUTS))
def test_round_trip_size_format_and_colour(enhancer, fmt):
    source = photo(40, 30)
    result = enhancer.enhance(encoded(fmt, source), {"scale": "2"})
    assert result.format == NEW_INPUTS[fmt]
    assert result.content_type == contract.CONTENT_TYPES[NEW_INPUTS[fmt]]
    out = open_bytes(result.data)
    assert out.size == (80, 60)
    # no colour shift: the enhanced image's mean colour is the input's (lossy codecs allowed for)
    assert np.abs(mean_rgb(out) - mean_rgb(source)).max() < 4.0


@pytest.mark.parametrize("fmt", sorted(NEW_INPUTS))
def test_orientation_icc_and_exif_are_kept(enhancer, fmt):
    data = encoded(fmt, photo(40, 30), exif=camera_exif(6), icc_profile=srgb_profile())
    result = enhancer.enhance(data, {"scale": "2", "format": "png"})
    out = open_bytes(result.data)
    assert out.size == (60, 80)  # turned upright: 30x40, then doubled
    assert out.info.get("icc_profile") == srgb_profile()
    exif = out.getexif()
    assert exif.get(MAKE) == "TestCam"
    assert exif.get(ORIENTATION, 1) == 1
    assert exif.get_ifd(EXIF_IFD).get(DATE_TAKEN) == "2024:05:06 07:08:09"


def test_upright_pixels_match_a_rotated_input(enhancer):
    upright = photo(40, 30).transpose(Image.Transpose.ROTATE_270)  # what orientation 6 shows
    for fmt in ("TIFF", "AVIF"):
        turned = enhancer.enhance(encoded(fmt, photo(40, 30), exif=camera_exif(6)), {"scale": "1"})
        plain = enhancer.enhance(encoded(fmt, upright), {"scale": "1"})
        a = np.asarray(open_bytes(turned.data).convert("RGB"), dtype=np.int16)
        b = np.asarray(open_bytes(plain.data).convert("RGB"), dtype=np.int16)
        assert np.abs(a - b).mean() < 3, fmt


@pytest.mark.parametrize("out_fmt", ["avif", "tiff"])
def test_avif_and_tiff_output_keep_metadata(enhancer, out_fmt):
    params = {"exif": camera_exif(6), "xmp": xmp_packet(6), "icc_profile": srgb_profile()}
    data = to_bytes(photo(40, 30), "JPEG", quality=95, **params)
    result = enhancer.enhance(data, {"scale": "2", "format": out_fmt})
    assert result.content_type == contract.CONTENT_TYPES[out_fmt]
    out = open_bytes(result.data)
    assert out.format == out_fmt.upper() and out.size == (60, 80)
    assert out.info.get("icc_profile") == srgb_profile()
    exif = out.getexif()
    assert exif.get(MAKE) == "TestCam" and exif.get(ORIENTATION, 1) == 1
    assert exif.get_ifd(EXIF_IFD).get(DATE_TAKEN) == "2024:05:06 07:08:09"
    assert b"fidelity-test" in out.info["xmp"] and b'tiff:Orientation="1"' in out.info["xmp"]


def test_tiff_output_keeps_dpi_and_is_lossless(enhancer):
    source = photo(24, 16)
    result = enhancer.enhance(to_bytes(source, dpi=(300, 300)), {"scale": "1", "format": "tiff"})
    out = open_bytes(result.data)
    assert out.info["dpi"] == pytest.approx((300, 300), abs=0.01)  # PNG stores dots per metre
    png = open_bytes(enhancer.enhance(to_bytes(source, dpi=(300, 300)), {"scale": "1"}).data)
    assert np.array_equal(np.asarray(out), np.asarray(png))  # the same pixels as PNG


def test_sixteen_bit_gray_tiff_stays_sixteen_bit(enhancer):
    ramp = np.linspace(0, 65535, 32 * 24).reshape(24, 32).astype(np.uint16)
    image, fmt = open_image(tiff_bytes(ramp), CAP)
    picture = load_picture(image, tiff_bytes(ramp), fmt)
    assert picture.bits == 16 and picture.grayscale
    result = enhancer.enhance(tiff_bytes(ramp), {"scale": "2"})
    assert result.format == "tiff"
    out = open_bytes(result.data)
    assert out.mode == "I;16" and out.size == (64, 48)
    values = np.asarray(out, dtype=np.float64)
    assert abs(values.mean() - ramp.mean()) < 0.05 * 65535  # not saturated, not 8-bit
    assert len(np.unique(values)) > 256


def test_sixteen_bit_colour_tiff_is_read(enhancer):
    rgb = photo_array(20, 14).astype(np.uint16) * 257
    out = open_bytes(enhancer.enhance(tiff_bytes(rgb), {"scale": "2"}).data)
    assert out.size == (40, 28)
    assert np.abs(mean_rgb(out) - rgb.reshape(-1, 3).mean(axis=0) / 257).max() < 4.0


@pytest.mark.parametrize("fmt", ["TIFF", "AVIF"])
def test_alpha_is_kept(enhancer, fmt):
    rgba = np.dstack([photo_array(24, 16), np.tile(np.linspace(0, 255, 24), (16, 1))])
    data = encoded(fmt, Image.fromarray(rgba.astype(np.uint8), "RGBA"))
    result = enhancer.enhance(data, {"scale": "2"})
    assert result.format == NEW_INPUTS[fmt]  # both formats hold alpha
    out = open_bytes(result.data)
    assert out.mode == "RGBA" and out.size == (48, 32)
    alpha = np.asarray(out)[..., 3].astype(np.float64)
    assert alpha[:, :4].mean() < 40 and alpha[:, -4:].mean() > 215


@pytest.mark.parametrize("fmt", ["TIFF", "AVIF", "HEIF"])
def test_gray_stays_gray(enhancer, fmt):
    out = open_bytes(enhancer.enhance(encoded(fmt, photo(24, 16, "L")), {"scale": "2"}).data)
    if fmt == "HEIF":
        rgb = np.asarray(out.convert("RGB"), dtype=np.int16)  # JPEG, gray or not
        assert np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 3
    else:
        assert out.mode == "L"


def test_auto_writes_heic_as_jpeg_and_png_when_it_has_alpha(enhancer):
    assert enhancer.enhance(encoded("HEIF"), {}).format == "jpeg"
    rgba = photo(24, 16, "RGBA")
    rgba.putalpha(128)
    assert enhancer.enhance(encoded("HEIF", rgba), {}).format == "png"


@pytest.mark.parametrize("out_fmt", ["avif", "tiff"])
def test_format_option_takes_the_new_outputs(enhancer, out_fmt):
    result = enhancer.enhance(to_bytes(photo()), {"format": out_fmt.upper()})
    assert result.format == out_fmt and open_bytes(result.data).format == out_fmt.upper()
    assert enhancer.enhance(to_bytes(photo()), {"format": "tif"}).format == "tiff"


def test_avif_quality_option_changes_the_size(enhancer):
    data = to_bytes(photo(64, 48))
    low = enhancer.enhance(data, {"format": "avif", "quality": "20"}).data
    high = enhancer.enhance(data, {"format": "avif", "quality": "95"}).data
    assert len(low) < len(high)


# -- bad inputs ------------------------------------------------------------------------------------


def _truncated(fmt: str) -> bytes:
    data = encoded(fmt, photo(64, 64))
    return data[: len(data) // 2]


@pytest.mark.parametrize("fmt", sorted(NEW_INPUTS))
def test_truncated_files_are_400(enhancer, fmt):
    with pytest.raises(BadRequest) as caught:
        enhancer.enhance(_truncated(fmt))
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "build",
    [
        lambda: tiff_bytes(photo_array(8, 8), declared=(5000, 5000)),
        lambda: tiff_bytes(photo_array(8, 8), declared=(20000, 20000)),
        lambda: ispe_declaring(encoded("HEIF", photo(64, 64)), 5000, 5000),
        lambda: ispe_declaring(encoded("HEIF", photo(64, 64)), 20000, 20000),
        lambda: ispe_declaring(encoded("AVIF", photo(64, 64)), 5000, 5000),
    ],
    ids=["tiff-25MP", "tiff-400MP", "heif-25MP", "heif-400MP", "avif-25MP"],
)
def test_bomb_headers_are_413_before_decoding(enhancer, build):
    with pytest.raises(PayloadTooLarge) as caught:
        enhancer.enhance(build())
    assert caught.value.status == 413 and "16,777,216" in caught.value.message


def test_avif_beyond_libavif_limits_is_refused_unread(enhancer):
    data = ispe_declaring(encoded("AVIF", photo(64, 64)), 20000, 20000)
    with pytest.raises((PayloadTooLarge, BadRequest)):
        enhancer.enhance(data)


@pytest.mark.parametrize("fmt", sorted(NEW_INPUTS))
def test_multi_frame_files_are_415(enhancer, fmt):
    frames = [photo(32, 32, seed=i) for i in range(3)]
    data = encoded(fmt, frames[0], save_all=True, append_images=frames[1:])
    with pytest.raises(UnsupportedMedia, match="3 frames"):
        enhancer.enhance(data)


def test_float_tiff_is_415(enhancer):
    data = to_bytes(Image.fromarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), "F"),
                    "TIFF")  # fmt: skip
    with pytest.raises(UnsupportedMedia, match="mode F"):
        enhancer.enhance(data)


@pytest.mark.parametrize(
    "data",
    [
        b"<!doctype html><html><body>not a photo</body></html>",
        b"8BPS\x00\x01" + b"\x00" * 40,
        b"\x00\x00\x00\x18ftypcrx " + b"\x00" * 40,
        b"II*\x00" + b"\x00" * 40,
    ],
    ids=["html-named-heic", "psd-named-tiff", "iso-media-not-heif", "tiff-magic-only"],
)
def test_spoofed_or_empty_files_are_refused(enhancer, data):
    with pytest.raises((UnsupportedMedia, BadRequest)) as caught:
        enhancer.enhance(data)
    assert caught.value.status in (400, 415)
