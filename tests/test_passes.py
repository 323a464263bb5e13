"""Pass planning: passes of at most 2x that land on exactly round(scale * size)."""

from __future__ import annotations

import pytest
import torch

from enhancer.passes import output_size, pass_count, plan_passes


@pytest.mark.parametrize(
    "scale,count", [(1, 1), (1.5, 1), (2, 1), (2.0001, 2), (3, 2), (4, 2), (4.5, 3), (5, 3), (8, 3)]
)
def test_pass_count(scale, count):
    assert pass_count(scale) == count


@pytest.mark.parametrize("scale", [1, 1.25, 2, 2.5, 3, 3.7, 4, 5, 6, 7.99, 8])
@pytest.mark.parametrize("width,height", [(1, 1), (3, 7), (40, 30), (101, 77)])
def test_plan_lands_exactly_in_steps_of_at_most_2x(scale, width, height):
    plan = plan_passes(width, height, scale)
    assert plan[0].src == (width, height)
    assert plan[-1].dst == (max(1, round(scale * width)), max(1, round(scale * height)))
    for earlier, later in zip(plan, plan[1:], strict=False):
        assert later.src == earlier.dst
        assert earlier.dst == (
            2 * earlier.src[0],
            2 * earlier.src[1],
        )  # every pass but the last is 2x
    for step in plan:
        assert step.dst[0] <= 2 * step.src[0] and step.dst[1] <= 2 * step.src[1]
        assert step.dst[0] >= step.src[0] and step.dst[1] >= step.src[1]


def test_examples_from_the_contract():
    assert [p.dst for p in plan_passes(10, 10, 4)] == [(20, 20), (40, 40)]
    assert [p.dst for p in plan_passes(10, 10, 3)] == [(20, 20), (30, 30)]  # 2x then 1.5x
    assert [p.dst for p in plan_passes(10, 10, 1)] == [(10, 10)]
    assert [p.dst for p in plan_passes(5, 3, 8)] == [(10, 6), (20, 12), (40, 24)]
    assert output_size(5, 3, 2.5) == (round(12.5), round(7.5)) == (12, 8)


@pytest.mark.parametrize("scale", [0.5, 0, -2, float("nan")])
def test_bad_scale_raises(scale):
    with pytest.raises(ValueError):
        plan_passes(10, 10, scale)


@pytest.mark.parametrize("model", ["sr_model", "restore_model"])
@pytest.mark.parametrize("scale", [1, 1.5, 2, 3, 4, 2.5, 8])
def test_engine_upscale_sizes(model, scale, request):
    from enhancer.engine import Enhancer

    enhancer = Enhancer.load(request.getfixturevalue(model))
    image = torch.rand(3, 7, 11)
    out = enhancer.upscale(image, scale)
    assert out.shape == (3, round(scale * 7), round(scale * 11))
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1


def test_each_pass_runs_the_model(sr_model, monkeypatch):
    """4x is two model passes, 3x is two, 1x is one: never a plain resize in place of the model."""
    from enhancer.engine import Enhancer

    enhancer = Enhancer.load(sr_model)
    sizes = []
    original = enhancer.runner.__class__.__call__

    def spy(self, batch, **kwargs):
        sizes.append(tuple(batch.shape[-2:]))
        return original(self, batch, **kwargs)

    monkeypatch.setattr(enhancer.runner.__class__, "__call__", spy)
    for scale, expected_passes in [(4, 2), (3, 2), (1, 1), (8, 3)]:
        sizes.clear()
        enhancer.upscale(torch.rand(3, 6, 6), scale)
        # tiny images fit one dynamic window per pass, growing 2x per pass (6 + 2*4 = 14 first)
        assert len(sizes) == expected_passes, (scale, sizes)
