"""Shared fixtures: tiny models made in code, generated images, and a TorchServe-like context."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # tiny_models and other test helpers import flat
pytest_plugins = ["servers"]  # real TorchServe fixtures: tests/servers.py

from tiny_models import tiny_restore, tiny_sr  # noqa: E402


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


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A folder with the tiny scale-2 model as enhancer.pt + enhancer.json."""
    directory = tmp_path_factory.mktemp("model")
    tiny_sr(directory)
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
def enhancer(sr_model):
    """An Enhancer on the tiny scale-2 model, CPU, default settings."""
    from engine import Enhancer

    return Enhancer.load(sr_model)


@pytest.fixture
def photo():
    """Factory: photo(width, height, mode="RGB", seed=0) -> PIL image with photo-like content."""

    def make(width: int = 40, height: int = 30, mode: str = "RGB", seed: int = 0) -> Image.Image:
        return Image.fromarray(photo_array(width, height, seed)).convert(mode)

    return make


class FakeContext:
    """What EnhancerHandler touches of TorchServe's Context, recording what it sets.

    Args:
        model_dir: the unpacked archive folder.
        handler_config: the ``handler:`` section of model-config.yaml.
        headers: per request, the request properties TorchServe would pass (header name -> value).
    """

    def __init__(
        self, model_dir: Path, handler_config: dict | None = None, headers: list[dict] | None = None
    ):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 4}
        self.manifest = {"model": {"serializedFile": "enhancer.pt", "modelName": "enhancer"}}
        self.model_yaml_config = {"handler": handler_config or {}}
        self.headers = headers or []
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}
        self.metrics = _FakeMetrics()

    def get_all_request_header(self, idx: int) -> dict:
        return self.headers[idx] if idx < len(self.headers) else {}

    def get_request_header(self, idx: int, key: str):
        return self.get_all_request_header(idx).get(key)

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value


class _FakeMetrics:
    def add_time(self, *args, **kwargs) -> None:
        pass


@pytest.fixture
def fake_context(model_dir):
    """Factory: fake_context(handler_config=None, headers=None) -> FakeContext (tiny model)."""

    def make(handler_config: dict | None = None, headers: list[dict] | None = None) -> FakeContext:
        return FakeContext(model_dir, handler_config, headers)

    return make
