"""scale=auto, level, enhance_first, compare and metadata through the engine (tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from enhancer.compare import BACKGROUND, compare_size, layout, side_by_side
from enhancer.engine import Enhancer
from enhancer.errors import PayloadTooLarge
from enhancer.imaging.metadata import EXIF_IFD, GPS_IFD
from enhancer.settings import EnhancerSettings
from tests.helpers.images import encode, open_bytes, photo_array, srgb_profile, xmp_params

MAKE, MODEL, ORIENTATION = 0x010F, 0x0110, 0x0112
BODY_SERIAL, LENS_SERIAL, OWNER, MAKER_NOTE, DATE_TAKEN = 0xA431, 0xA435, 0xA430, 0x927C, 0x9003
GPS_XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="52,31.2N" '
    b'exif:GPSLongitude="13,24.6E"/></rdf:RDF></x:xmpmeta>'
)
PLAIN_XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Label="holiday"/></rdf:RDF></x:xmpmeta>'
)


def with_settings(enhancer: Enhancer, **settings) -> Enhancer:
    return Enhancer(enhancer.runner, enhancer.card, EnhancerSettings(**settings))


def photo(width: int, height: int) -> Image.Image:
    return Image.fromarray(photo_array(width, height))


def gps_exif() -> Image.Exif:
    """EXIF as a phone writes it: make, model, date, position, serial numbers, maker note."""
    exif = Image.Exif()
    exif[MAKE] = "TestCam"
    exif[MODEL] = "TC-1"
    exif[ORIENTATION] = 1
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[2] = "N", (52.0, 31.0, 12.5)
    gps[3], gps[4] = "E", (13.0, 24.0, 36.0)
    sub = exif.get_ifd(EXIF_IFD)
    sub[DATE_TAKEN] = "2026:07:01 10:00:00"
    sub[BODY_SERIAL] = "SERIAL-123456"
    sub[LENS_SERIAL] = "LENS-987654"
    sub[OWNER] = "Jane Doe"
    sub[MAKER_NOTE] = b"MAKERNOTE-SERIAL-123456"
    return exif


def tagged_jpeg(xmp: bytes | None = None) -> bytes:
    params = {"exif": gps_exif().tobytes(), "icc_profile": srgb_profile()}
    if xmp is not None:
        params.update(xmp_params("JPEG", xmp))
    return encode(photo(20, 14), "JPEG", quality=95, **params)


# -- scale=auto -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size,chosen", [((540, 20), 1), ((20, 14), 8), ((300, 200), 6)])
def test_scale_auto_answers_its_choice(enhancer, size, chosen):
    # 540 x 20 (short side 20) wants 8x: 4320 x 160 fits; 20 x 14 -> 8x; 200 px short side -> 6x
    limit = {(540, 20): 20_000}.get(size)  # a small output cap forces 1 for the first
    engine = with_settings(enhancer, max_output_pixels=limit) if limit else enhancer
    result = engine.enhance(encode(photo(*size)), {"scale": "auto"})
    assert result.headers["X-Enhance-Scale-Used"] == f"{chosen}"
    assert (result.width, result.height) == (size[0] * chosen, size[1] * chosen)
    assert open_bytes(result.data).size == (result.width, result.height)


def test_a_given_scale_is_reported_too(enhancer):
    result = enhancer.enhance(encode(photo(10, 8)), {"scale": "2.5"})
    assert result.headers["X-Enhance-Scale-Used"] == "2.5"


def test_scale_auto_follows_the_output_format_side_limit(enhancer):
    # 4 x 1000 wants 8x (270 -> 1080 needs 8x... short side 4): 8000 px long is within WebP's 16,383
    result = enhancer.enhance(encode(photo(1000, 4)), {"scale": "auto", "format": "webp"})
    assert result.headers["X-Enhance-Scale-Used"] == "8"
    engine = with_settings(enhancer)
    tall = engine.prepare(encode(photo(4, 2100)), {"scale": "auto", "format": "webp"})
    assert tall.options.scale == 7  # 8x would be 16,800 px tall: over WebP's 16,383


# -- level and enhance_first ----------------------------------------------------------------------


def test_level_and_enhance_first_plan_and_change_the_result(enhancer):
    data = encode(photo(12, 10))
    job = enhancer.prepare(data, {"scale": "2", "level": "3", "enhance_first": "true"})
    assert [(step.src, step.dst) for step in job.plan] == [
        ((12, 10), (12, 10)),
        ((12, 10), (24, 20)),
        ((24, 20), (24, 20)),
        ((24, 20), (24, 20)),
    ]
    base = np.asarray(open_bytes(enhancer.enhance(data, {"format": "png"}).data))
    more = enhancer.enhance(data, {"format": "png", "level": "3", "enhance_first": "1"})
    assert (more.width, more.height) == (24, 20)
    assert not np.array_equal(np.asarray(open_bytes(more.data)), base)


def test_level_above_1_is_refused_when_its_passes_pass_the_output_cap(enhancer):
    # the scale-2 model restores a 40 x 40 output at 80 x 80 inside: 6,400 pixels
    engine = with_settings(enhancer, max_output_pixels=6_399)
    with pytest.raises(PayloadTooLarge, match="level 2"):
        engine.prepare(encode(photo(20, 20)), {"level": "2"})
    with_settings(enhancer, max_output_pixels=6_400).prepare(encode(photo(20, 20)), {"level": "2"})
    engine.prepare(encode(photo(20, 20)), {"level": "1"})  # level 1 needs only the output


# -- compare --------------------------------------------------------------------------------------


def test_compare_layout():
    assert layout(100, 100) == (14, 3)
    assert layout(4000, 1080) == (65, 16)
    assert layout(4000, 8000) == (120, 30)
    assert compare_size(24, 20) == (2 * 24 + 3, 20 + 14)
    plain, enhanced = torch.zeros(3, 20, 24), torch.ones(3, 20, 24)
    canvas = side_by_side(plain, enhanced)
    assert canvas.shape == (3, 34, 51)
    assert torch.equal(canvas[:, 14:, :24], plain)  # left: the plain resize
    assert torch.equal(canvas[:, 14:, 27:], enhanced)  # right: the result
    assert torch.allclose(canvas[:, 14:, 24:27], torch.tensor(BACKGROUND))  # the gap
    assert canvas[:, :14].max() > 0.5  # light label text in the strips


def test_compare_returns_both_images_side_by_side(enhancer):
    data = encode(photo(30, 20))
    single = enhancer.enhance(data, {"format": "png"})
    both = enhancer.enhance(data, {"format": "png", "compare": "true"})
    strip, gap = layout(60, 40)
    assert (both.width, both.height) == (2 * 60 + gap, 40 + strip)
    image = np.asarray(open_bytes(both.data).convert("RGB"))
    assert image.shape == (40 + strip, 2 * 60 + gap, 3)
    np.testing.assert_array_equal(image[strip:, 60 + gap :], np.asarray(open_bytes(single.data)))
    plain = np.asarray(photo(30, 20).resize((60, 40), Image.BICUBIC), dtype=np.int16)
    assert np.abs(image[strip:, :60].astype(np.int16) - plain).mean() < 3  # a plain bicubic


def test_compare_of_a_transparent_image_is_flattened_and_sized(enhancer):
    rgba = photo(16, 12).convert("RGBA")
    result = enhancer.enhance(encode(rgba), {"compare": "yes"})
    image = open_bytes(result.data)
    assert image.size == compare_size(32, 24) == (result.width, result.height)
    assert image.mode == "RGB"


def test_compare_counts_against_the_output_cap(enhancer):
    width, height = compare_size(40, 40)
    engine = with_settings(enhancer, max_output_pixels=width * height - 1)
    with pytest.raises(PayloadTooLarge, match="compare"):
        engine.prepare(encode(photo(20, 20)), {"compare": "true"})
    engine.prepare(encode(photo(20, 20)), {})


# -- metadata -------------------------------------------------------------------------------------


def _exif(result) -> Image.Exif:
    return open_bytes(result.data).getexif()


def test_strip_location_is_the_default_and_keeps_the_rest(enhancer):
    result = enhancer.enhance(tagged_jpeg(PLAIN_XMP), {"format": "jpeg"})
    exif = _exif(result)
    assert exif[MAKE] == "TestCam" and exif[MODEL] == "TC-1"
    assert GPS_IFD not in exif and not exif.get_ifd(GPS_IFD)
    sub = exif.get_ifd(EXIF_IFD)
    assert sub[DATE_TAKEN] == "2026:07:01 10:00:00"
    for tag in (BODY_SERIAL, LENS_SERIAL, OWNER, MAKER_NOTE):
        assert tag not in sub
    for secret in (b"SERIAL-123456", b"LENS-987654", b"Jane Doe", b"MAKERNOTE"):
        assert secret not in result.data
    image = open_bytes(result.data)
    assert image.info["icc_profile"] == srgb_profile()
    assert b"holiday" in result.data  # harmless XMP stays


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_strip_location_leaves_out_xmp_that_names_a_position(enhancer, fmt):
    result = enhancer.enhance(tagged_jpeg(GPS_XMP), {"format": fmt})
    assert b"GPSLatitude" not in result.data and b"52,31.2N" not in result.data
    assert _exif(result)[MAKE] == "TestCam"
    assert not _exif(result).get_ifd(GPS_IFD)


def test_keep_keeps_everything(enhancer):
    result = enhancer.enhance(tagged_jpeg(GPS_XMP), {"format": "jpeg", "metadata": "keep"})
    exif = _exif(result)
    assert exif.get_ifd(GPS_IFD)[2] == (52.0, 31.0, 12.5)
    assert exif.get_ifd(EXIF_IFD)[BODY_SERIAL] == "SERIAL-123456"
    assert b"GPSLatitude" in result.data


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_strip_removes_exif_and_xmp_but_keeps_colour_and_orientation(enhancer, fmt):
    exif = gps_exif()
    exif[ORIENTATION] = 6  # rotated 90 degrees: the output must come out upright
    data = encode(
        photo(20, 14),
        "JPEG",
        quality=95,
        exif=exif.tobytes(),
        icc_profile=srgb_profile(),
        **xmp_params("JPEG", PLAIN_XMP),
    )
    result = enhancer.enhance(data, {"format": fmt, "metadata": "strip"})
    image = open_bytes(result.data)
    assert image.size == (28, 40)  # turned upright, then 2x
    assert not image.getexif()
    assert b"holiday" not in result.data and b"TestCam" not in result.data
    assert image.info["icc_profile"] == srgb_profile()
