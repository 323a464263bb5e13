"""config.properties lint: loopback only, model API closed, token auth on, limits that fit the caps.

The limits are checked against handlers/model-config.yaml, so raising a pixel or byte cap there
without resizing TorchServe's limits here fails this file instead of killing workers in production.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest
import yaml

from scripts.ops import paths, properties

PROPS = properties.read_properties(paths.CONFIG)
MODEL_CONFIG = yaml.safe_load((paths.REPO / "handlers" / "model-config.yaml").read_text())
HANDLER = MODEL_CONFIG["handler"]
MiB = 1024 * 1024


def test_every_address_is_loopback():
    text = paths.CONFIG.read_text()
    assert "0.0.0.0" not in text and "[::]" not in text
    for key in ("inference_address", "management_address", "metrics_address"):
        assert urlparse(PROPS[key]).hostname == "127.0.0.1", key
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert PROPS[key] == "127.0.0.1", key


def test_model_api_closed_and_token_auth_on():
    assert PROPS.get("enable_model_api", "false").lower() == "false"
    assert PROPS.get("disable_token_authorization", "false").lower() == "false"
    assert PROPS.get("enable_envvars_config", "false").lower() == "false"  # no TS_* overrides
    assert PROPS.get("install_py_dep_per_model", "false").lower() == "false"
    assert 0 < float(PROPS["token_expiration_min"]) <= 24 * 60


def test_allowed_urls_only_the_model_store():
    default = r"file://.*|http(s)?://.*"
    pattern = PROPS["allowed_urls"]
    assert pattern != default
    assert re.fullmatch(pattern, "file:///srv/enhancer/model_store/enhancer.mar")
    for url in (
        "http://127.0.0.1:9/x.mar",
        "https://evil.example/enhancer.mar",
        "file:///etc/passwd",
        "file:///srv/model_store/../../etc/x.mar",
        "file:///tmp/enhancer.mar",
    ):
        assert not re.fullmatch(pattern, url), url


def test_request_limit_fits_any_8_bit_image_at_the_input_cap():
    # the worst case of an allowed format: an uncompressed RGBA BMP, plus multipart headers
    worst = HANDLER["max_input_pixels"] * 4 + 64 * 1024
    assert int(PROPS["max_request_size"]) >= worst


def test_response_limit_holds_the_largest_output_with_margin():
    # the handler answers 413 above max_output_bytes; TorchServe kills the worker above
    # max_response_size, so the handler's limit must stay clearly below it (RELIABILITY I9)
    assert HANDLER["max_output_bytes"] <= 0.8 * int(PROPS["max_response_size"])
    # an 8x output at the pixel cap fits as JPEG or WebP (a PNG of noise may not: that is the 413)
    assert HANDLER["max_output_bytes"] >= HANDLER["max_output_pixels"] * 3 // 2


def test_timeouts_match_the_model_config():
    assert int(PROPS["default_response_timeout"]) == MODEL_CONFIG["responseTimeout"]
    assert int(PROPS["default_startup_timeout"]) == MODEL_CONFIG["startupTimeout"]


def test_queue_is_small():
    assert 1 <= int(PROPS["job_queue_size"]) <= 32


def test_heap_holds_the_queue_and_a_response():
    match = re.search(r"-Xmx(\d+)([mMgG])", PROPS["vmargs"])
    assert match, "vmargs must set -Xmx"
    heap = int(match.group(1)) * (1024 if match.group(2) in "gG" else 1) * MiB
    queued = int(PROPS["job_queue_size"]) + MODEL_CONFIG["batchSize"]
    assert heap >= int(PROPS["max_response_size"]) + queued * int(PROPS["max_request_size"])


def test_metrics_in_prometheus_mode():
    assert PROPS["metrics_mode"] == "prometheus"


@pytest.mark.parametrize(
    "name",
    [
        "AWS_SECRET_ACCESS_KEY",
        "HF_TOKEN",
        "DB_PASSWORD",
        "API_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "BASIC_AUTH",
    ],
)
def test_blacklist_hides_secrets(name):
    assert re.fullmatch(PROPS["blacklist_env_vars"], name)


@pytest.mark.parametrize(
    "name",
    [
        "PATH",
        "HOME",
        "PYTHONPATH",
        "TMPDIR",
        "TEMP",
        "LD_LIBRARY_PATH",
        "CUDA_VISIBLE_DEVICES",
        "LANG",
    ],
)
def test_blacklist_keeps_what_the_worker_needs(name):
    assert not re.fullmatch(PROPS["blacklist_env_vars"], name)


def test_every_setting_says_why():
    """Each group of settings starts with a comment (one line at least) explaining it."""
    blocks = paths.CONFIG.read_text().split("\n\n")
    for block in blocks:
        lines = [line for line in block.strip().splitlines() if line.strip()]
        if any("=" in line and not line.startswith("#") for line in lines):
            assert lines[0].startswith("#"), f"setting without a comment:\n{block}"


def test_properties_parser_unescapes_like_java(tmp_path):
    path = tmp_path / "c.properties"
    path.write_text("# comment\n! also comment\nallowed_urls=file://.*/x/[^/]+\\\\.mar\n a = b \n")
    assert properties.read_properties(path) == {"allowed_urls": r"file://.*/x/[^/]+\.mar", "a": "b"}
    assert properties.escape_property(r"a\.b") == r"a\\.b"
