"""The TorchServe adapter (handlers/enhancer_handler.py): each request of a batch gets its answer.

Most tests drive the handler with conftest's ``FakeContext``; the last ones use TorchServe's own
``Context`` and wire-format helpers, so the fake cannot drift from what the worker really does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from enhancer.integrity import MANIFEST_FILE, ArchiveDamagedError, verify_folder, write_manifest
from tests.helpers.context import FakeContext, load_handler_class
from tests.helpers.images import animated, gradient, open_bytes, png_header, to_bytes

EnhancerHandler = load_handler_class()  # TorchServe imports it by its bare name

HANDLERS = Path(__file__).resolve().parent.parent / "handlers"


def photo(width: int = 12, height: int = 9, seed: int = 0) -> Image.Image:
    return Image.fromarray(gradient(width, height, seed))


@pytest.fixture(scope="module")
def handler(model_dir) -> EnhancerHandler:
    """A handler initialised once on the tiny model with the default settings."""
    worker = EnhancerHandler()
    worker.initialize(FakeContext(model_dir))
    return worker


def handle(handler: EnhancerHandler, model_dir: Path, requests: list[tuple[dict, dict]]):
    """Run one batch of (fields, headers) requests; returns (outputs, context)."""
    context = FakeContext(model_dir, headers=[headers for _, headers in requests])
    outputs = handler.handle([fields for fields, _ in requests], context)
    assert len(outputs) == len(requests)  # one response per request, always
    return outputs, context


def error_of(outputs, context, idx) -> dict:
    """The JSON error body of request ``idx``, checked against its status and content type."""
    body = json.loads(outputs[idx])
    assert set(body) == {"code", "type", "message"}
    assert context.statuses[idx][0] == body["code"]
    assert context.content_types[idx] == "application/json"
    return body


def test_initialize_on_the_tiny_model(handler):
    assert handler.initialized
    assert handler.enhancer.card.scale == 2 and handler.enhancer.card.tile == 32
    assert handler.device.type == "cpu"


def test_a_raw_body_with_option_headers(handler, model_dir):
    data = to_bytes(photo(12, 9))
    outputs, context = handle(
        handler,
        model_dir,
        [
            (
                {"body": bytearray(data)},
                {
                    "X-Enhance-Scale": "3",
                    "x-enhance-format": "webp",
                    "body": {"content-type": "application/octet-stream"},
                },
            ),
        ],
    )
    assert context.statuses == {}  # 200
    assert context.content_types[0] == "image/webp"
    image = open_bytes(bytes(outputs[0]))
    assert image.format == "WEBP" and image.size == (36, 27)


def test_multipart_with_option_fields(handler, model_dir):
    data = to_bytes(photo(12, 9), "JPEG")
    fields = {
        "data": bytearray(data),
        "scale": bytearray(b"1.5"),
        "format": bytearray(b"png"),
        "strength": bytearray(b"0.5"),
    }
    outputs, context = handle(
        handler, model_dir, [(fields, {"data": {"content-type": "image/jpeg"}})]
    )
    assert context.content_types[0] == "image/png"
    # 12 x 9 at 1.5: round(13.5) is 14, since Python rounds halves to even
    assert open_bytes(bytes(outputs[0])).size == (18, 14)


BAD = [
    # (name, fields, headers, status, type, words in the message)
    (
        "garbage",
        {"body": bytearray(b"\x00\x01garbage" * 20)},
        {},
        400,
        "BadRequest",
        "not a readable image",
    ),
    ("empty", {"body": bytearray()}, {}, 400, "BadRequest", "empty"),
    ("text-not-bytes", {"body": "iVBORw0KGgo="}, {}, 400, "BadRequest", "text"),
    ("no-image", {"scale": bytearray(b"2")}, {}, 400, "BadRequest", "no image"),
    (
        "two-images",
        {"body": bytearray(b"\x89PNG"), "data": bytearray(b"\x89PNG")},
        {},
        400,
        "BadRequest",
        "one image",
    ),
    (
        "unknown-field",
        {"data": None, "colour": bytearray(b"red")},
        {},
        400,
        "BadRequest",
        "'colour'",
    ),
    (
        "unknown-header",
        {"body": None},
        {"X-Enhance-Colour": "red"},
        400,
        "BadRequest",
        "X-Enhance-Colour",
    ),
    (
        "field-and-header",
        {"data": None, "scale": bytearray(b"2")},
        {"X-Enhance-Scale": "3"},
        400,
        "BadRequest",
        "twice",
    ),
    ("bad-scale", {"body": None}, {"X-Enhance-Scale": "0.5"}, 400, "BadRequest", "'scale'"),
    ("bad-format", {"data": None, "format": bytearray(b"gif")}, {}, 400, "BadRequest", "'format'"),
    ("bad-quality", {"data": None, "quality": bytearray(b"0")}, {}, 400, "BadRequest", "'quality'"),
    ("bad-tile", {"data": None, "tile": bytearray(b"7")}, {}, 400, "BadRequest", "'tile'"),
    (
        "bad-strength",
        {"data": None, "strength": bytearray(b"1.5")},
        {},
        400,
        "BadRequest",
        "'strength'",
    ),
    ("tiff", {"body": "tiff"}, {}, 415, "UnsupportedMediaType", "TIFF"),
    ("animated", {"body": "gif"}, {}, 415, "UnsupportedMediaType", "3 frames"),
    ("huge-header", {"body": "huge"}, {}, 413, "PayloadTooLarge", "16,777,216"),
    (
        "output-too-large",
        {"body": "big"},
        {"X-Enhance-Scale": "8"},
        413,
        "PayloadTooLarge",
        "67,108,864",
    ),
]
PHRASES = {400: "Bad Request", 413: "Request Entity Too Large", 415: "Unsupported Media Type"}


def _fill(fields: dict, special: dict[str, bytes]) -> dict:
    """Put real image bytes where the table says None (a small JPEG) or names one of ``special``."""
    filled = {}
    for name, value in fields.items():
        if value is None or isinstance(value, str) and value in special:
            value = bytearray(special[value])
        filled[name] = value
    return filled


def test_a_batch_where_some_requests_are_bad(handler, model_dir):
    good_png, good_jpeg = to_bytes(photo(12, 9, seed=1)), to_bytes(photo(10, 7, seed=2), "JPEG")
    special = {
        None: good_jpeg,
        "tiff": to_bytes(photo(), "TIFF"),
        "gif": animated("GIF", 3),
        "huge": png_header(20000, 20000),
        "big": png_header(
            1100, 1000
        ),  # fits the input cap; x8 is over the 67,108,864 output pixels
    }
    requests = [({"body": bytearray(good_png)}, {"X-Enhance-Scale": "2"})]
    requests += [(_fill(fields, special), headers) for _, fields, headers, *_ in BAD]
    requests.append(({"data": bytearray(good_jpeg), "format": bytearray(b"jpg")}, {}))
    outputs, context = handle(handler, model_dir, requests)

    assert context.content_types[0] == "image/png"
    assert open_bytes(bytes(outputs[0])).size == (24, 18)
    last = len(requests) - 1
    assert context.content_types[last] == "image/jpeg"
    assert open_bytes(bytes(outputs[last])).size == (20, 14)
    assert 0 not in context.statuses and last not in context.statuses

    for idx, (name, _, _, status, kind, words) in enumerate(BAD, start=1):
        body = error_of(outputs, context, idx)
        assert (body["code"], body["type"]) == (status, kind), name
        assert words in body["message"], (name, body["message"])
        assert context.statuses[idx] == (status, PHRASES[status]), name


def test_the_worker_survives_an_all_bad_batch(handler, model_dir):
    outputs, context = handle(handler, model_dir, [({"body": bytearray(b"x")}, {}), ({}, {})])
    assert [error_of(outputs, context, i)["code"] for i in range(2)] == [400, 400]
    outputs, context = handle(handler, model_dir, [({"body": bytearray(to_bytes(photo()))}, {})])
    assert context.content_types[0] == "image/png" and open_bytes(bytes(outputs[0])).size == (
        24,
        18,
    )


def test_good_results_do_not_depend_on_their_batch(handler, model_dir):
    data = to_bytes(photo(15, 11, seed=3))
    alone, _ = handle(handler, model_dir, [({"body": bytearray(data)}, {})])
    mixed, _ = handle(
        handler,
        model_dir,
        [
            ({"body": bytearray(to_bytes(photo(30, 20, seed=4)))}, {"X-Enhance-Scale": "3"}),
            ({"body": bytearray(b"junk")}, {}),
            ({"body": bytearray(data)}, {}),
        ],
    )
    a, b = (
        np.array(open_bytes(bytes(alone[0]))).astype(int),
        np.array(open_bytes(bytes(mixed[2]))).astype(int),
    )
    assert np.abs(a - b).max() <= 1


# -- settings and the model file -------------------------------------------------------------------


def test_settings_from_the_handler_section_are_applied(model_dir):
    worker = EnhancerHandler()
    worker.initialize(FakeContext(model_dir, {"max_input_pixels": 100, "max_scale": 4}))
    assert worker.settings.max_input_pixels == 100
    requests = [
        ({"body": bytearray(to_bytes(photo(11, 10)))}, {}),  # 110 pixels
        ({"body": bytearray(to_bytes(photo(10, 10)))}, {"X-Enhance-Scale": "4"}),
        ({"body": bytearray(to_bytes(photo(10, 10)))}, {"X-Enhance-Scale": "5"}),
        (
            {"body": bytearray(to_bytes(photo(10, 10)))},
            {"X-Enhance-Quality": "50", "X-Enhance-Format": "jpeg"},
        ),
        ({"body": bytearray(to_bytes(photo(10, 10)))}, {"X-Enhance-Colour": "red"}),
    ]
    outputs, context = handle(worker, model_dir, requests)
    too_big = error_of(outputs, context, 0)
    assert too_big["code"] == 413 and "the limit is 100 pixels" in too_big["message"]
    assert open_bytes(bytes(outputs[1])).size == (40, 40)
    assert (
        error_of(outputs, context, 2)["code"] == 400
        and "use 1 to 4" in json.loads(outputs[2])["message"]
    )
    assert context.content_types[3] == "image/jpeg"
    assert "X-Enhance-Colour" in error_of(outputs, context, 4)["message"]


def test_the_shipped_model_config_is_valid(model_dir):
    config = yaml.safe_load((HANDLERS / "model-config.yaml").read_text())
    worker = EnhancerHandler()
    context = FakeContext(model_dir, config["handler"])
    worker.initialize(context)
    for key, value in config["handler"].items():
        assert getattr(worker.settings, key) == value


@pytest.mark.parametrize(
    "config,words",
    [
        ({"max_pixels": 10}, "max_pixels"),
        ({"max_input_pixels": "many"}, "max_input_pixels"),
        ({"max_input_pixels": 0}, "max_input_pixels"),
        ({"precision": "float8"}, "precision"),
        ({"max_scale": 100.0}, "max_scale"),
    ],
)
def test_bad_settings_fail_initialize(model_dir, config, words):
    with pytest.raises(ValueError, match=words):
        EnhancerHandler().initialize(FakeContext(model_dir, config))


@pytest.fixture
def copied_model(model_dir, tmp_path) -> Path:
    for name in ("enhancer.pt", "enhancer.json", MANIFEST_FILE):
        shutil.copy(model_dir / name, tmp_path / name)
    return tmp_path


def test_a_file_that_differs_from_the_manifest_fails_initialize_naming_it(copied_model):
    with open(copied_model / "enhancer.pt", "ab") as f:
        f.write(b"\x00")  # one extra byte: the archive is not what was built
    with pytest.raises(ArchiveDamagedError, match="damaged: enhancer.pt has sha256"):
        EnhancerHandler().initialize(FakeContext(copied_model))


def test_a_missing_or_unlisted_file_or_no_manifest_fails_initialize(copied_model):
    (copied_model / "extra.py").write_text("print('not built by the archiver')\n")
    with pytest.raises(ArchiveDamagedError, match="extra.py is not listed"):
        EnhancerHandler().initialize(FakeContext(copied_model))
    (copied_model / "extra.py").unlink()
    (copied_model / "enhancer.json").unlink()
    with pytest.raises(ArchiveDamagedError, match="enhancer.json is listed .* but missing"):
        EnhancerHandler().initialize(FakeContext(copied_model))
    (copied_model / MANIFEST_FILE).unlink()
    with pytest.raises(ArchiveDamagedError, match=f"no {MANIFEST_FILE}"):
        EnhancerHandler().initialize(FakeContext(copied_model))


def test_files_a_running_worker_writes_are_not_checked(copied_model):
    for folder in ("__pycache__", ".backend-cache"):
        (copied_model / folder).mkdir()
        (copied_model / folder / "x.bin").write_bytes(b"cache")
    assert verify_folder(copied_model) == 2


def test_a_tampered_model_file_fails_initialize(copied_model):
    with open(copied_model / "enhancer.pt", "ab") as f:
        f.write(b"\x00")  # one extra byte: the archive is not what the card describes
    write_manifest(copied_model)  # even with a manifest made to match, the card's sha256 holds
    with pytest.raises(ValueError, match="sha256.*refusing to load"):
        EnhancerHandler().initialize(FakeContext(copied_model))


def test_a_card_with_another_digest_fails_initialize(copied_model):
    card_path = copied_model / "enhancer.json"
    card = json.loads(card_path.read_text())
    card["sha256"] = "f" * 64
    card_path.write_text(json.dumps(card))
    write_manifest(copied_model)
    with pytest.raises(ValueError, match="f" * 64):
        EnhancerHandler().initialize(FakeContext(copied_model))


def test_a_missing_card_fails_initialize(copied_model):
    (copied_model / "enhancer.json").unlink()
    write_manifest(copied_model)
    with pytest.raises(FileNotFoundError):
        EnhancerHandler().initialize(FakeContext(copied_model))


# -- TorchServe's own Context and wire format ------------------------------------------------------


class _Metrics:
    def add_time(self, *args, **kwargs) -> None:
        pass


def test_with_torchserves_own_context_and_wire_format(handler, model_dir):
    from ts.context import Context
    from ts.protocol.otf_message_handler import create_predict_response
    from ts.service import Service

    good = to_bytes(photo(12, 9))
    batch = [
        {
            "requestId": b"r0",
            "headers": [{"name": b"X-Enhance-Scale", "value": b"3"}],
            "parameters": [
                {
                    "name": "body",
                    "contentType": "application/octet-stream",
                    "value": bytearray(good),
                }
            ],
        },
        {
            "requestId": b"r1",
            "headers": [],
            "parameters": [
                {
                    "name": "body",
                    "contentType": "application/octet-stream",
                    "value": bytearray(b"junk"),
                }
            ],
        },
        {
            "requestId": b"r2",
            "headers": [],
            "parameters": [
                {"name": "data", "contentType": "image/png", "value": bytearray(good)},
                {"name": "format", "contentType": "", "value": bytearray(b"jpeg")},
            ],
        },
    ]
    headers, inputs, ids = Service.retrieve_data_for_inference(batch)
    context = Context(
        "enhancer",
        str(model_dir),
        {"model": {"serializedFile": "enhancer.pt"}},
        3,
        None,
        "0.12.0",
        metrics=_Metrics(),
        model_yaml_config={},
    )
    context.request_processor = headers
    outputs = handler.handle(inputs, context)

    assert (
        context.get_response_status(0)[0] == 200
        and context.get_response_content_type(0) == "image/png"
    )
    assert open_bytes(bytes(outputs[0])).size == (36, 27)
    assert context.get_response_status(1) == (400, "Bad Request")
    assert context.get_response_content_type(1) == "application/json"
    assert json.loads(outputs[1])["code"] == 400
    assert context.get_response_content_type(2) == "image/jpeg"
    message = create_predict_response(outputs, ids, "Prediction success", 200, context=context)
    assert b"application/json" in message and b"Bad Request" in message and b"image/jpeg" in message
