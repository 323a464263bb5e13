"""Network interpolation: the denoise option moves between a clean and a restore model by blending
their weights, computed once at load, one model run per tile."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from enhancer import family
from enhancer.card import file_sha256
from enhancer.engine import Enhancer
from enhancer.errors import OptionError
from enhancer.integrity import write_manifest
from enhancer.settings import EnhancerSettings
from tests.helpers.context import FakeContext, load_handler_class
from tests.helpers.images import gradient, open_bytes, to_bytes
from tests.helpers.tiny_models import TinySR, save_model, tiny_restore, tiny_sr

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)

TORCHSCRIPT = EnhancerSettings(backend="torchscript")


def png(width: int, height: int) -> bytes:
    return to_bytes(Image.fromarray(gradient(width, height)))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """clean.pt and restore.pt: one architecture, different weights, in one folder."""
    folder = tmp_path_factory.mktemp("family")
    clean = tiny_sr(folder, name="clean", seed=1)
    restore = tiny_sr(folder, name="restore", seed=2)
    return clean, restore


def test_blend_is_exact_at_the_ends_and_the_average_between(pair):
    clean, restore = (torch.jit.load(str(p)) for p in pair)
    a, b = clean.state_dict(), restore.state_dict()
    for weight, expected in ((0.0, a), (1.0, b)):
        mixed = family.blend(clean, restore, weight).state_dict()
        assert all(torch.equal(mixed[k], expected[k]) for k in a)
    half = family.blend(clean, restore, 0.5).state_dict()
    for name in a:
        torch.testing.assert_close(half[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-7)
    # the inputs are left as they were
    assert all(torch.equal(clean.state_dict()[k], a[k]) for k in a)


def test_levels_run_the_blended_networks(pair, tmp_path):
    clean, restore = pair
    both = Enhancer.load(clean, settings=TORCHSCRIPT, restore_path=restore)
    assert sorted(both.levels) == list(family.DENOISE_LEVELS)
    image = torch.rand(3, 23, 31, generator=torch.Generator().manual_seed(0))
    alone = {
        0.0: Enhancer.load(clean, settings=TORCHSCRIPT).upscale(image, 2),
        1.0: Enhancer.load(restore, settings=TORCHSCRIPT).upscale(image, 2),
    }
    for level, want in alone.items():
        assert torch.equal(both.upscale(image, 2, denoise=level), want)
    # 0.5 runs the model whose weights are the two models' average
    mixed = family.blend(torch.jit.load(str(clean)), torch.jit.load(str(restore)), 0.5)
    torch.jit.save(mixed, str(tmp_path / "mixed.pt"))
    card = json.loads(clean.with_suffix(".json").read_text())
    card["sha256"] = file_sha256(tmp_path / "mixed.pt")
    (tmp_path / "mixed.json").write_text(json.dumps(card))
    average = Enhancer.load(tmp_path / "mixed.pt", settings=TORCHSCRIPT).upscale(image, 2)
    torch.testing.assert_close(both.upscale(image, 2, denoise=0.5), average, rtol=0, atol=1e-6)
    # values between levels snap to the nearest; the default is the settings' level
    assert torch.equal(both.upscale(image, 2, denoise=0.55), both.upscale(image, 2, denoise=0.5))
    assert torch.equal(both.upscale(image, 2), both.upscale(image, 2, denoise=0.5))


def test_cpu_backend_serves_the_blends_too(pair):
    pytest.importorskip("openvino")
    clean, restore = pair
    fast = Enhancer.load(clean, restore_path=restore)
    slow = Enhancer.load(clean, settings=TORCHSCRIPT, restore_path=restore)
    assert {r.backend for r in fast.levels.values()} == {"openvino"}
    image = torch.rand(3, 40, 33)
    for level in family.DENOISE_LEVELS:
        got, want = fast.upscale(image, 2, denoise=level), slow.upscale(image, 2, denoise=level)
        assert float((got - want).abs().max()) <= 1 / 255


def test_one_model_refuses_denoise_with_a_clear_400(pair):
    one = Enhancer.load(pair[0], settings=TORCHSCRIPT)
    with pytest.raises(OptionError, match="denoise needs its clean and restore pair") as caught:
        one.prepare(png(8, 8), {"denoise": "0.5"})
    assert caught.value.status == 400


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "lots"])
def test_denoise_out_of_range_is_400(pair, value):
    both = Enhancer.load(pair[0], settings=TORCHSCRIPT, restore_path=pair[1])
    with pytest.raises(OptionError, match="denoise"):
        both.prepare(png(8, 8), {"denoise": value})


def test_models_of_another_family_are_refused(pair, tmp_path):
    other = save_model(tmp_path, TinySR(depth=2), name="restore", seed=3)
    with pytest.raises(ValueError, match="not one family"):
        Enhancer.load(pair[0], settings=TORCHSCRIPT, restore_path=other)
    scale_1 = tiny_restore(tmp_path / "s1")
    with pytest.raises(ValueError, match="'scale' is 2 and 1"):
        Enhancer.load(pair[0], settings=TORCHSCRIPT, restore_path=scale_1)


def test_the_handler_serves_the_family_and_says_the_level(pair, tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    for path in pair:
        for suffix in (".pt", ".json"):
            (folder / path.with_suffix(suffix).name).write_bytes(
                path.with_suffix(suffix).read_bytes()
            )
    write_manifest(folder)
    context = FakeContext(folder, {"backend": "torchscript", "denoise": 0.25})
    context.manifest["model"]["serializedFile"] = "clean.pt"
    handler = load_handler_class()()
    handler.initialize(context)
    requests = [
        {"data": png(12, 9)},
        {"data": png(12, 9), "denoise": b"1"},
        {"data": png(12, 9), "denoise": b"0.6"},
    ]
    context = FakeContext(folder, headers=[{}, {}, {}])
    outputs = handler.handle(requests, context)
    assert [context.response_headers[i]["X-Enhance-Denoise"] for i in range(3)] == [
        "0.25",
        "1",
        "0.5",
    ]
    assert all(open_bytes(out).size == (24, 18) for out in outputs)
    assert outputs[0] != outputs[1]


def test_the_triton_binding_serves_the_pair_beside_its_model(pair):
    """scripts/triton_serve.py loads through ops.triton.load_enhancer: a restore.pt beside the
    model makes the same clean/restore family the TorchServe archive serves."""
    from scripts.ops.triton import load_enhancer

    clean, _ = pair
    engine = load_enhancer(clean, "cpu", TORCHSCRIPT)
    assert sorted(engine.levels) == list(family.DENOISE_LEVELS)
    assert engine.default_denoise == TORCHSCRIPT.denoise
