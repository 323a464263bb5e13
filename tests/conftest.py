"""Shared fixtures: tiny models made in code, generated images, and a TorchServe-like context."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.context import FakeContext
from tests.helpers.images import photo_array
from tests.helpers.tiny_models import tiny_restore, tiny_sr, tiny_sr4

pytest_plugins = ["tests.helpers.servers", "tests.helpers.browser"]  # real servers, Chromium


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A folder with the tiny scale-2 model as enhancer.pt + enhancer.json, and the SHA256SUMS
    manifest an unpacked archive holds (the handler checks it at start)."""
    from enhancer.integrity import write_manifest

    directory = tmp_path_factory.mktemp("model")
    tiny_sr(directory)
    write_manifest(directory)
    return directory


@pytest.fixture(scope="session")
def sr_model(model_dir) -> Path:
    """Path of the tiny scale-2 model (receptive field 3, card overlap 4, tile 32, dynamic)."""
    return model_dir / "enhancer.pt"


@pytest.fixture(scope="session")
def restore_model(tmp_path_factory) -> Path:
    """Path of the tiny scale-1 model (tile 32, overlap 4, dynamic)."""
    return tiny_restore(tmp_path_factory.mktemp("restore"))


@pytest.fixture(scope="session")
def sr4_model(tmp_path_factory) -> Path:
    """Path of a tiny scale-4 model (receptive field 3, tile 32, overlap 4, dynamic): the card
    a 4x Real-ESRGAN export has."""
    return tiny_sr4(tmp_path_factory.mktemp("sr4"))


@pytest.fixture(scope="session")
def enhancer(sr_model):
    """An Enhancer on the tiny scale-2 model, CPU, default settings."""
    from enhancer.engine import Enhancer

    return Enhancer.load(sr_model)


@pytest.fixture
def photo():
    """Factory: photo(width, height, mode="RGB", seed=0) -> PIL image with photo-like content."""

    def make(width: int = 40, height: int = 30, mode: str = "RGB", seed: int = 0) -> Image.Image:
        return Image.fromarray(photo_array(width, height, seed)).convert(mode)

    return make


@pytest.fixture
def fake_context(model_dir):
    """Factory: fake_context(handler_config=None, headers=None) -> FakeContext (tiny model)."""

    def make(handler_config: dict | None = None, headers: list[dict] | None = None) -> FakeContext:
        return FakeContext(model_dir, handler_config, headers)

    return make


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device, ``triton`` the triton extra: skip them otherwise."""
    import importlib.util

    import torch

    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    no_triton = pytest.mark.skip(reason="needs the triton extra: pip install -e '.[triton]'")
    has_triton = all(
        importlib.util.find_spec(name) is not None for name in ("pytriton", "tritonclient")
    )
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "triton" in item.keywords and not has_triton:
            item.add_marker(no_triton)
