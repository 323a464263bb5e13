"""Request options (enhancer.options): every bad value is a 400 that names the option."""

from __future__ import annotations

import pytest

from enhancer.card import ModelCard
from enhancer.contract import OPTION_HEADER_PREFIX
from enhancer.errors import BadRequest, OptionError
from enhancer.options import OPTION_NAMES, Options, parse_options, smallest_tile
from enhancer.serving.torchserve import split_request
from enhancer.settings import EnhancerSettings

PREFIX = OPTION_HEADER_PREFIX
IMAGE = b"\x89PNG\r\n\x1a\n..."


def card(**fields) -> ModelCard:
    data = {
        "name": "tiny",
        "version": "test",
        "scale": 2,
        "multiple": 1,
        "tile": 32,
        "overlap": 4,
        "dtypes": ["float32"],
        "sha256": "0" * 64,
        "dynamic": True,
    }
    data.update(fields)
    return ModelCard.from_dict(data)


DYNAMIC = card()  # smallest tile 3 * 4 + 1 = 13
MULTIPLE_8 = card(multiple=8, tile=64, overlap=8)  # smallest tile 32 (25 rounded up to 8)
FIXED = card(dynamic=False, tile=64, multiple=32, overlap=8)
SETTINGS = EnhancerSettings()


def parse(values, model_card=DYNAMIC, settings=SETTINGS) -> Options:
    return parse_options(values, model_card, settings)


def test_defaults():
    assert parse({}) == Options(scale=2.0, format="auto", quality=None, tile=None, strength=1.0)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("1", 1.0),
        ("2", 2.0),
        ("1.5", 1.5),
        (" 3.25 ", 3.25),
        ("8", 8.0),
        ("8.0", 8.0),
        ("4e0", 4.0),
    ],
)
def test_scale_accepts_floats_from_1_to_8(raw, expected):
    assert parse({"scale": raw}).scale == expected


@pytest.mark.parametrize(
    "raw", ["0", "0.99", "-2", "8.01", "9", "1e9", "nan", "inf", "-inf", "", "2x", "two", "0x2"]
)
def test_bad_scale_is_400_naming_scale(raw):
    with pytest.raises(OptionError) as caught:
        parse({"scale": raw})
    assert caught.value.status == 400
    assert caught.value.option == "scale"
    assert "'scale'" in caught.value.message


def test_scale_limit_follows_settings():
    assert parse({"scale": "4"}, settings=EnhancerSettings(max_scale=4.0)).scale == 4.0
    with pytest.raises(OptionError, match="use 1 to 4"):
        parse({"scale": "4.5"}, settings=EnhancerSettings(max_scale=4.0))


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("auto", "auto"),
        ("png", "png"),
        ("jpeg", "jpeg"),
        ("jpg", "jpeg"),
        ("JPG", "jpeg"),
        ("WebP", "webp"),
        (" PNG ", "png"),
    ],
)
def test_format_values(raw, expected):
    assert parse({"format": raw}).format == expected


@pytest.mark.parametrize("raw", ["gif", "bmp", "heic", "", "png; rm -rf /", "jpeg2000", "x" * 500])
def test_bad_format_is_400_naming_format(raw):
    with pytest.raises(OptionError) as caught:
        parse({"format": raw})
    assert caught.value.option == "format"
    assert "auto, png, jpeg, webp" in caught.value.message
    assert len(caught.value.message) < 200  # a long value is cut, not echoed whole


@pytest.mark.parametrize("raw,expected", [("1", 1), ("50", 50), ("100", 100), (" 85 ", 85)])
def test_quality_values(raw, expected):
    assert parse({"quality": raw}).quality == expected


@pytest.mark.parametrize("raw", ["0", "101", "-1", "90.5", "high", "", "1e2"])
def test_bad_quality_is_400_naming_quality(raw):
    with pytest.raises(OptionError) as caught:
        parse({"quality": raw})
    assert caught.value.option == "quality"


@pytest.mark.parametrize(
    "model_card,tile",
    [
        (DYNAMIC, 13),
        (DYNAMIC, 32),
        (DYNAMIC, 1024),
        (MULTIPLE_8, 32),
        (MULTIPLE_8, 64),
        (MULTIPLE_8, 1024),
        (FIXED, 64),
    ],
)
def test_valid_tiles(model_card, tile):
    assert parse({"tile": str(tile)}, model_card).tile == tile


@pytest.mark.parametrize(
    "model_card,raw,words",
    [
        (DYNAMIC, "12", "from 13 to 1024"),  # core would be empty
        (DYNAMIC, "1025", "from 13 to 1024"),  # over max_tile
        (DYNAMIC, "0", "from 13"),
        (DYNAMIC, "-32", "from 13"),
        (MULTIPLE_8, "36", "multiple of 8"),  # not a multiple
        (MULTIPLE_8, "24", "multiple of 8 from 32"),  # a multiple, but too small
        (MULTIPLE_8, "1032", "to 1024"),
        (FIXED, "32", "only at tile 64"),  # a traced-at-one-shape model
        (FIXED, "128", "only at tile 64"),
        (DYNAMIC, "32.0", "integer"),
        (DYNAMIC, "big", "integer"),
    ],
)
def test_bad_tile_is_400_naming_tile(model_card, raw, words):
    with pytest.raises(OptionError) as caught:
        parse({"tile": raw}, model_card)
    assert caught.value.option == "tile"
    assert words in caught.value.message


def test_smallest_tile():
    assert smallest_tile(DYNAMIC) == 13
    assert smallest_tile(MULTIPLE_8) == 32
    # windows start on the multiple's grid: after 2 x 16 of context and 16 of blend, one step of 32
    assert smallest_tile(card(multiple=32, tile=128, overlap=16)) == 96
    assert smallest_tile(card(multiple=32, tile=128, overlap=16, blend=0)) == 64


@pytest.mark.parametrize("raw,expected", [("0", 0.0), ("1", 1.0), ("0.25", 0.25), (".5", 0.5)])
def test_strength_values(raw, expected):
    assert parse({"strength": raw}).strength == expected


@pytest.mark.parametrize("raw", ["-0.01", "1.01", "2", "nan", "inf", "half", ""])
def test_bad_strength_is_400_naming_strength(raw):
    with pytest.raises(OptionError) as caught:
        parse({"strength": raw})
    assert caught.value.option == "strength"


@pytest.mark.parametrize("kind", [bytes, bytearray, str])
def test_values_may_be_bytes_bytearray_or_text(kind):
    def value(text):
        return text if kind is str else kind(text.encode())

    options = parse(
        {
            "scale": value("3"),
            "format": value("webp"),
            "quality": value("70"),
            "tile": value("16"),
            "strength": value("0.5"),
        }
    )
    assert options == Options(scale=3.0, format="webp", quality=70, tile=16, strength=0.5)


@pytest.mark.parametrize("value", [b"\xff\xfe", 3, 2.0, None, {"x": 1}, ["2"]])
def test_values_that_are_not_text_are_400_naming_the_option(value):
    with pytest.raises(OptionError) as caught:
        parse({"scale": value})
    assert caught.value.option == "scale"


@pytest.mark.parametrize("name", ["size", "Scale", "output", "data", ""])
def test_unknown_option_is_400_naming_it(name):
    with pytest.raises(OptionError) as caught:
        parse({name: "2"})
    assert caught.value.option == name
    assert f"'{name}'" in caught.value.message
    for known in OPTION_NAMES:
        assert known in caught.value.message


# -- split_request: TorchServe's fields and headers -> image and options --------------------------


def test_raw_body_with_header_options():
    headers = {
        "X-Enhance-Scale": "4",
        "x-enhance-format": "webp",
        "Content-Type": "image/png",
        "body": {"content-type": "image/png"},
        "User-Agent": "curl/8",
    }
    image, options = split_request({"body": bytearray(IMAGE)}, headers)
    assert image == IMAGE and isinstance(image, bytes)
    assert options == {"scale": "4", "format": "webp"}


def test_multipart_with_field_options():
    fields = {"data": bytearray(IMAGE), "scale": bytearray(b"3"), "quality": bytearray(b"80")}
    image, options = split_request(fields, {"data": {"content-type": "image/png"}})
    assert image == IMAGE
    assert options == {"scale": bytearray(b"3"), "quality": bytearray(b"80")}


def test_prefix_is_the_contracts_one_constant():
    assert PREFIX == "X-Enhance-"
    _, options = split_request({"body": IMAGE}, {"X-Up-Scale": "2", "X-Enhance-Scale": "3"})
    assert options == {"scale": "3"}  # another prefix is just another header


@pytest.mark.parametrize(
    "fields,words",
    [
        ({}, "no image"),
        ({"scale": b"2"}, "no image"),
        ({"file": b"\x89PNG"}, "got field 'file'"),
        ({"body": IMAGE, "data": IMAGE}, "one image"),
        ({"body": "\x89PNG\r\n text"}, "arrived as text"),
        ({"data": "some text"}, "arrived as text"),
        ({"body": {"image": "aGVsbG8="}}, "arrived as JSON"),
        ({"body": [1, 2, 3]}, "arrived as JSON"),
        ({"body": b""}, "empty"),
        ({"data": bytearray()}, "empty"),
    ],
)
def test_missing_double_text_or_empty_image_is_400(fields, words):
    with pytest.raises(BadRequest) as caught:
        split_request(fields, {})
    assert caught.value.status == 400
    assert words in caught.value.message


@pytest.mark.parametrize("field", ["file", "scales", "Scale", "image", "token"])
def test_unknown_field_is_400_naming_it(field):
    with pytest.raises(OptionError) as caught:
        split_request({"data": IMAGE, field: b"1"}, {})
    assert caught.value.option == field
    assert f"'{field}'" in caught.value.message


@pytest.mark.parametrize(
    "header", ["X-Enhance-Size", "x-enhance-colour", "X-ENHANCE-Q", "X-Enhance-"]
)
def test_unknown_option_header_is_400_naming_it(header):
    with pytest.raises(OptionError) as caught:
        split_request({"body": IMAGE}, {header: "1"})
    assert caught.value.status == 400
    assert header[len(PREFIX) :] in caught.value.message
    assert "X-Enhance-" in caught.value.message


def test_option_header_names_are_case_insensitive():
    _, options = split_request({"body": IMAGE}, {"X-ENHANCE-SCALE": "3", "x-enhance-quality": "60"})
    assert options == {"scale": "3", "quality": "60"}


@pytest.mark.parametrize("header", ["X-Enhance-Scale", "x-enhance-scale"])
def test_option_as_field_and_header_is_400(header):
    with pytest.raises(BadRequest) as caught:
        split_request({"data": IMAGE, "scale": b"2"}, {header: "4"})
    assert caught.value.status == 400
    assert "'scale'" in caught.value.message and "twice" in caught.value.message


def test_other_headers_and_per_field_content_types_are_ignored():
    headers = {
        "Accept": "*/*",
        "Content-Length": "10",
        "data": {"content-type": "image/png"},
        "scale": {"content-type": "text/plain"},
        "X-Request-Id": "abc",
    }
    _, options = split_request({"data": IMAGE, "scale": "2"}, headers)
    assert options == {"scale": "2"}


# -- scale=auto, level, enhance_first, compare, metadata ---------------------------------------


@pytest.mark.parametrize("raw", ["auto", "AUTO", " Auto "])
def test_scale_auto(raw):
    options = parse({"scale": raw})
    assert options.scale_auto is True


def test_new_options_defaults():
    options = parse({})
    assert (options.scale_auto, options.level, options.enhance_first, options.compare) == (
        False,
        1,
        False,
        False,
    )
    assert options.metadata == "strip-location"


@pytest.mark.parametrize("raw,expected", [("1", 1), ("2", 2), (" 4 ", 4)])
def test_level_values(raw, expected):
    assert parse({"level": raw}).level == expected


@pytest.mark.parametrize("raw", ["0", "5", "-1", "1.5", "max", ""])
def test_bad_level_is_400_naming_level_and_its_range(raw):
    with pytest.raises(OptionError) as caught:
        parse({"level": raw})
    assert caught.value.option == "level"
    assert "'level'" in caught.value.message


@pytest.mark.parametrize("name", ["enhance_first", "compare"])
@pytest.mark.parametrize(
    "raw,expected",
    [("true", True), ("True", True), ("1", True), ("yes", True), ("on", True)]
    + [("false", False), ("0", False), ("no", False), ("OFF", False)],
)
def test_yes_no_values(name, raw, expected):
    assert getattr(parse({name: raw}), name) is expected


@pytest.mark.parametrize("name", ["enhance_first", "compare"])
@pytest.mark.parametrize("raw", ["2", "maybe", "", "y"])
def test_bad_yes_no_is_400_naming_the_option_and_its_values(name, raw):
    with pytest.raises(OptionError) as caught:
        parse({name: raw})
    assert caught.value.option == name
    assert "true" in caught.value.message and "false" in caught.value.message


@pytest.mark.parametrize("raw", ["keep", "strip-location", "STRIP", "strip"])
def test_metadata_values(raw):
    assert parse({"metadata": raw}).metadata == raw.lower()


@pytest.mark.parametrize("raw", ["none", "strip_location", "gps", ""])
def test_bad_metadata_is_400_naming_metadata_and_its_values(raw):
    with pytest.raises(OptionError) as caught:
        parse({"metadata": raw})
    assert caught.value.option == "metadata"
    for mode in ("keep", "strip-location", "strip"):
        assert mode in caught.value.message


def test_bad_scale_message_offers_auto():
    with pytest.raises(OptionError, match="or auto"):
        parse({"scale": "big"})
    with pytest.raises(OptionError, match="or auto"):
        parse({"scale": "9"})


def test_underscored_options_travel_as_hyphenated_headers():
    from enhancer.contract import option_header

    assert option_header("enhance_first") == "X-Enhance-Enhance-First"
    headers = {
        "X-Enhance-Enhance-First": "true",
        "x-enhance-metadata": "strip",
        "X-Enhance-Level": "2",
    }
    _, options = split_request({"body": IMAGE}, headers)
    assert options == {"enhance_first": "true", "metadata": "strip", "level": "2"}
