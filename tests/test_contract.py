"""enhancer.contract and the torch-free core: the one copy of the request contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from enhancer import contract
from enhancer.errors import OptionError
from tests.helpers.images import encode, photo_array

TORCH_FREE = (
    "enhancer.contract",
    "enhancer.errors",
    "enhancer.card",
    "enhancer.settings",
    "enhancer.options",
    "enhancer.passes",
    "enhancer.windows",
    "enhancer.admission",
    "enhancer.client",
    "frontend",
)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_imports_without_torch_from_any_folder(module, tmp_path):
    """Installed by name (no import path tricks), and torch-free: the page and the clients need no
    torch to know the contract."""
    code = (
        f"import sys, {module}; "
        "heavy = sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "torch" not in done.stdout.split(","), f"{module} imports torch"


def test_one_copy_of_the_option_names_and_prefix():
    from enhancer import options
    from enhancer.serving import torchserve
    from frontend import views
    from scripts import triton_client

    assert options.OPTION_NAMES is contract.OPTION_NAMES
    assert views.OPTION_NAMES is contract.OPTION_NAMES
    assert triton_client.OPTION_NAMES is contract.OPTION_NAMES
    assert torchserve.OPTION_HEADER_PREFIX is contract.OPTION_HEADER_PREFIX
    assert contract.option_header("scale") == "X-Enhance-Scale"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF"])
def test_sniffs_every_accepted_format(fmt):
    from PIL import Image

    data = encode(Image.fromarray(photo_array(9, 7)), fmt)
    assert contract.sniff_format(data) == fmt
    assert contract.is_allowed_image(data)


@pytest.mark.parametrize(
    "data,name",
    [
        (b"8BPS\x00\x01" + b"\x00" * 40, "PSD"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "text (HTML, SVG, XML or JSON)"),
        (b"\x00\x00\x00\x18ftypcrx " + b"\x00" * 20, "ISO media"),  # a Canon raw file
        (b"BMW 320i, 2004, good condition" + b" " * 40, None),  # starts like a BMP, is not one
        (b"", None),
    ],
)
def test_names_what_it_refuses(data, name):
    assert contract.sniff_format(data) == name
    assert not contract.is_allowed_image(data)


def test_error_body_is_the_one_shape():
    error = OptionError("scale", "is out of range")
    assert json.loads(error.to_json()) == contract.error_body(400, "BadRequest", error.message)
    body = contract.error_body(415, "UnsupportedMediaType", "x")
    assert list(body) == ["code", "type", "message"]
