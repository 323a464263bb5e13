"""Model runner guards: half-precision NaN/black fallback and out-of-memory retries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from enhancer.card import ModelCard
from enhancer.engine import Enhancer
from enhancer.errors import OutOfMemory
from enhancer.runner import TileOutOfMemory, is_out_of_memory, pick_precision
from enhancer.settings import EnhancerSettings
from tests.helpers.tiny_models import Overflow, save_model


class Vanish(nn.Module):
    """Scale 2; in float16 the tiny intermediate underflows to zero, giving a black image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiny = x * 1e-8
        return F.interpolate(tiny * 1e8, scale_factor=2.0, mode="nearest")


@pytest.mark.parametrize("module", [Overflow(), Vanish()], ids=["nan", "black"])
def test_half_precision_guard_reruns_in_float32(tmp_path, module):
    path = save_model(tmp_path, module, dtypes=("float32", "float16"))
    enhancer = Enhancer.load(path, settings=EnhancerSettings(precision="float16"))
    assert enhancer.runner.reduced_precision
    image = torch.rand(3, 20, 30) * 0.8 + 0.1
    out = enhancer.upscale(image, 2)
    expected = F.interpolate(image[None], scale_factor=2.0, mode="nearest")[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert enhancer.runner.fallbacks == 1


def test_half_precision_without_trouble_keeps_half(tmp_path):
    class Double(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2.0, mode="nearest")

    path = save_model(tmp_path, Double(), dtypes=("float32", "float16"))
    enhancer = Enhancer.load(path, settings=EnhancerSettings(precision="float16"))
    image = torch.rand(3, 10, 10)
    out = enhancer.upscale(image, 2)
    torch.testing.assert_close(
        out, F.interpolate(image[None], scale_factor=2.0)[0], atol=1e-3, rtol=0
    )
    assert enhancer.runner.fallbacks == 0


def card(**fields) -> ModelCard:
    base = dict(
        name="m",
        version="1",
        scale=2,
        multiple=1,
        tile=32,
        overlap=4,
        dtypes=["float32"],
        sha256="0" * 64,
    )
    return ModelCard.from_dict({**base, **fields})


def test_pick_precision():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert pick_precision("auto", card(dtypes=["float32", "float16"]), cpu) == torch.float32
    assert pick_precision("auto", card(dtypes=["float32"]), gpu) == torch.float32
    assert pick_precision("bfloat16", card(dtypes=["float32", "bfloat16"]), cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="float16"):
        pick_precision("float16", card(dtypes=["float32"]), cpu)


def test_is_out_of_memory():
    assert is_out_of_memory(
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    )
    assert is_out_of_memory(
        RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory")
    )
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


class LimitedModel:
    """Stands in for the TorchScript model: out of memory above ``max_pixels`` per call."""

    def __init__(self, real, max_pixels: int):
        self.real, self.max_pixels, self.calls = real, max_pixels, []

    def __call__(self, batch):
        self.calls.append(tuple(batch.shape))
        if batch.numel() // 3 > self.max_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return self.real(batch)


def test_out_of_memory_splits_batches(sr_model):
    enhancer = Enhancer.load(sr_model, settings=EnhancerSettings(tile_batch_cpu=8))
    image = torch.rand(3, 80, 80)
    expected = enhancer.upscale(image, 2)
    limited = LimitedModel(enhancer.runner.model, max_pixels=2 * 32 * 32)
    enhancer.runner.model = limited
    out = enhancer.upscale(image, 2)
    torch.testing.assert_close(out, expected)
    assert any(shape[0] == 8 for shape in limited.calls)  # tried the full batch first
    assert max(shape[0] for shape in limited.calls if shape[0] * 32 * 32 <= 2 * 32 * 32) <= 2


def test_out_of_memory_shrinks_tiles_of_dynamic_models(sr_model):
    # from the card's 32 tile (OpenVINO would start at 512, a window holding the whole image)
    enhancer = Enhancer.load(sr_model, settings=EnhancerSettings(tile_batch_cpu=1, openvino_tile=0))
    image = torch.rand(3, 60, 60)
    expected = enhancer.upscale(image, 2)
    limited = LimitedModel(enhancer.runner.model, max_pixels=16 * 16)
    enhancer.runner.model = limited
    out = enhancer.upscale(image, 2)
    # the first (card-tile) window did not fit; the pass was redone with windows that fit
    pixels = [shape[-2] * shape[-1] for shape in limited.calls]
    assert pixels[0] > 16 * 16
    assert max(pixels[1:]) <= 16 * 16
    # smaller tiles with the same overlap give the same result (the receptive field fits)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)


def test_out_of_memory_is_507_when_nothing_fits(sr_model, photo):
    from tests.helpers.images import encode

    enhancer = Enhancer.load(sr_model)
    enhancer.runner.model = LimitedModel(enhancer.runner.model, max_pixels=0)
    with pytest.raises(OutOfMemory) as caught:
        enhancer.enhance(encode(photo(40, 30)), {"scale": "2"})
    assert caught.value.status == 507
    # a batch of requests: each gets its own 507, none is answered with its input
    results = enhancer.enhance_batch([(encode(photo(20, 20)), {}), (encode(photo(10, 12)), {})])
    assert all(isinstance(r, OutOfMemory) for r in results)


def test_runner_raises_tile_out_of_memory_for_one_tile(sr_model):
    enhancer = Enhancer.load(sr_model)
    enhancer.runner.model = LimitedModel(enhancer.runner.model, max_pixels=0)
    with pytest.raises(TileOutOfMemory):
        enhancer.runner(torch.rand(4, 3, 32, 32))


def test_other_model_errors_propagate(sr_model):
    enhancer = Enhancer.load(sr_model)

    def broken(batch):
        raise RuntimeError("shape mismatch in layer 3")

    enhancer.runner.model = broken
    with pytest.raises(RuntimeError, match="shape mismatch"):
        enhancer.upscale(torch.rand(3, 8, 8), 2)


def test_a_fault_in_one_request_spares_the_others(sr_model, photo):
    """A bug triggered by one image becomes that request's 500; the batch's others succeed."""
    from PIL import Image

    from enhancer.errors import InternalError
    from tests.helpers.images import encode

    enhancer = Enhancer.load(sr_model)
    real = enhancer.runner.model

    def picky(batch):
        if bool((batch > 0.999).flatten(1).all(1).any()):  # any all-white tile
            raise RuntimeError("kernel bug on saturated tiles")
        return real(batch)

    enhancer.runner.model = picky
    white = encode(Image.new("RGB", (20, 20), "white"))
    results = enhancer.enhance_batch(
        [(encode(photo(30, 20)), {}), (white, {}), (encode(photo(9, 9)), {})]
    )
    assert isinstance(results[1], InternalError) and results[1].status == 500
    assert "kernel bug" not in results[1].message  # internals stay in the log
    assert [r.width for r in (results[0], results[2])] == [60, 18]
