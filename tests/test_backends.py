"""CPU backends: OpenVINO matches TorchScript within 1/255, falls back with one log line, and
caches its conversion under the model's hash."""

from __future__ import annotations

import logging

import pytest
import torch

from enhancer import backends
from enhancer.engine import Enhancer
from enhancer.settings import EnhancerSettings
from tests.helpers.tiny_models import TinySR, save_model, tiny_restore, tiny_sr

pytest.importorskip("openvino")

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)


def load(model, backend: str, **settings) -> Enhancer:
    return Enhancer.load(model, settings=EnhancerSettings(backend=backend, **settings))


@pytest.fixture
def fresh_sr(tmp_path):
    """A tiny scale-2 model in its own folder (so its conversion cache starts empty)."""
    return tiny_sr(tmp_path / "model", seed=3)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same tiny model loaded with OpenVINO and with TorchScript."""
    model = tiny_sr(tmp_path_factory.mktemp("pair"), seed=5)
    return load(model, "openvino"), load(model, "torchscript")


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (130, 70), (64, 64)])
@pytest.mark.parametrize("scale", [2, 3])
def test_openvino_matches_torchscript(pair, size, scale):
    fast, reference = pair
    assert (fast.runner.backend, reference.runner.backend) == ("openvino", "torchscript")
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(sum(size)))
    got, want = fast.upscale(image, scale), reference.upscale(image, scale)
    assert got.shape == want.shape == (3, round(size[0] * scale), round(size[1] * scale))
    assert float((got - want).abs().max()) <= 1 / 255


def test_scale_1_models(tmp_path):
    model = tiny_restore(tmp_path / "restore")
    fast, reference = load(model, "auto"), load(model, "torchscript")
    assert fast.runner.backend == "openvino"
    image = torch.rand(3, 45, 61)
    assert float((fast.upscale(image, 1) - reference.upscale(image, 1)).abs().max()) <= 1 / 255


def test_auto_is_openvino_on_cpu_and_torchscript_when_asked(fresh_sr):
    assert load(fresh_sr, "auto").runner.backend == "openvino"
    assert load(fresh_sr, "torchscript").runner.backend == "torchscript"


def test_a_model_that_cannot_be_converted_falls_back_with_one_line(fresh_sr, monkeypatch, caplog):
    import openvino

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operation aten::fancy")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    with caplog.at_level(logging.WARNING, logger="enhancer.backends"):
        enhancer = load(fresh_sr, "auto")
    assert enhancer.runner.backend == "torchscript"
    lines = [r.getMessage() for r in caplog.records if r.name == "enhancer.backends"]
    assert len(lines) == 1
    assert "staying on TorchScript" in lines[0] and "aten::fancy" in lines[0]
    assert enhancer.upscale(torch.rand(3, 8, 8), 2).shape == (3, 16, 16)
    # asked for by name, the same failure is an error at load, not a silent fallback
    with pytest.raises(backends.BackendError, match="aten::fancy"):
        load(fresh_sr, "openvino")


def test_no_openvino_installed_falls_back(fresh_sr, monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)
    with caplog.at_level(logging.WARNING, logger="enhancer.backends"):
        assert load(fresh_sr, "auto").runner.backend == "torchscript"
    assert "openvino is not installed" in caplog.text


def test_a_parity_miss_falls_back(fresh_sr, monkeypatch, caplog):
    monkeypatch.setattr(backends, "parity_error", lambda *args: 3 / 255)
    with caplog.at_level(logging.WARNING, logger="enhancer.backends"):
        assert load(fresh_sr, "auto").runner.backend == "torchscript"
    assert "differs from TorchScript's by 3.00/255" in caplog.text


def test_conversion_is_cached_by_the_models_hash(tmp_path, monkeypatch):
    import openvino

    first = tiny_sr(tmp_path / "a", seed=1)
    load(first, "openvino")
    cached = sorted(p.name for p in (first.parent / ".backend-cache").iterdir())
    digest = first.with_suffix(".json").read_text().split('"sha256": "')[1][:32]
    assert [p for p in cached if p.endswith(".xml")] == [
        f"{digest}-openvino-{openvino.__version__.split('-')[0]}.xml"
    ]
    assert not [p for p in cached if p.startswith(".")]  # no temporary file left behind

    # a second load reads the cache: converting again would fail here
    monkeypatch.setattr(openvino, "convert_model", lambda *a, **k: 1 / 0)
    assert load(first, "openvino").runner.backend == "openvino"

    # another model (other weights, so another hash) in the same folder is converted afresh
    other = save_model(first.parent, TinySR(depth=2), name="other", seed=2)
    with pytest.raises(backends.BackendError):
        load(other, "openvino")


def test_unwritable_model_folder_uses_the_user_cache(tmp_path, monkeypatch):
    model = tiny_sr(tmp_path / "ro", seed=4)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(backends.os, "access", lambda path, mode: False)
    assert load(model, "openvino").runner.backend == "openvino"
    assert list((tmp_path / "xdg" / "image-enhancer").glob("*.xml"))
    assert not (model.parent / ".backend-cache").exists()


def test_backend_setting_is_checked():
    with pytest.raises(ValueError, match="'backend' must be one of"):
        EnhancerSettings.from_mapping({"backend": "tensorrt"})
    assert EnhancerSettings.from_mapping({"backend": "torchscript"}).backend == "torchscript"


def test_openvino_runs_dynamic_models_at_its_own_tile(fresh_sr):
    assert load(fresh_sr, "auto").tile == 1024
    assert load(fresh_sr, "auto", openvino_tile=0).tile == 32  # the card's
    assert load(fresh_sr, "torchscript").tile == 32
    with pytest.raises(ValueError, match="openvino_tile"):
        EnhancerSettings.from_mapping({"openvino_tile": 4})
