"""Pass planning: passes of at most 2x that land on exactly round(scale * size)."""

from __future__ import annotations

import pytest
import torch

from enhancer.passes import Pass, auto_scale, output_size, pass_count, plan_passes


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


# -- level and enhance_first: restoring passes at the input and output sizes ----------------------


def test_level_adds_restoring_passes_at_the_output_size():
    assert plan_passes(10, 10, 4, level=3) == [
        Pass((10, 10), (20, 20)),
        Pass((20, 20), (40, 40)),
        Pass((40, 40), (40, 40)),
        Pass((40, 40), (40, 40)),
    ]
    assert plan_passes(10, 10, 1, level=4) == [Pass((10, 10), (10, 10))] * 4
    assert plan_passes(7, 5, 2.5, level=1) == plan_passes(7, 5, 2.5)


def test_enhance_first_restores_at_the_input_size_before_enlarging():
    assert plan_passes(10, 8, 3, enhance_first=True) == [
        Pass((10, 8), (10, 8)),
        Pass((10, 8), (20, 16)),
        Pass((20, 16), (30, 24)),
    ]
    # at scale 1 the one pass already restores at the input size: nothing is added
    assert plan_passes(10, 8, 1, enhance_first=True) == [Pass((10, 8), (10, 8))]
    assert plan_passes(10, 8, 2, level=2, enhance_first=True) == [
        Pass((10, 8), (10, 8)),
        Pass((10, 8), (20, 16)),
        Pass((20, 16), (20, 16)),
    ]


@pytest.mark.parametrize("level", [0, -1])
def test_bad_level_raises(level):
    with pytest.raises(ValueError):
        plan_passes(10, 10, 2, level=level)


@pytest.mark.parametrize("model", ["sr_model", "restore_model"])
def test_engine_runs_one_model_pass_per_planned_pass(model, request, monkeypatch):
    from enhancer.engine import Enhancer

    enhancer = Enhancer.load(request.getfixturevalue(model))
    calls = []
    original = enhancer.runner.__class__.__call__

    def spy(self, batch, **kwargs):
        calls.append(tuple(batch.shape[-2:]))
        return original(self, batch, **kwargs)

    monkeypatch.setattr(enhancer.runner.__class__, "__call__", spy)
    for scale, level, first, passes in [(2, 1, False, 1), (2, 3, False, 3), (4, 2, True, 4)]:
        calls.clear()
        out = enhancer.upscale(torch.rand(3, 6, 6), scale, level=level, enhance_first=first)
        assert out.shape == (3, 6 * scale, 6 * scale)
        assert len(calls) == passes, (scale, level, first, calls)
    plain = enhancer.upscale(torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0)), 2)
    again = enhancer.upscale(
        torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0)), 2, level=2
    )
    assert not torch.equal(plain, again)  # the second pass changed the picture


# -- scale=auto -----------------------------------------------------------------------------------

CAPS = {"max_scale": 8, "max_output_pixels": 8192 * 8192}


@pytest.mark.parametrize(
    "size,scale",
    [
        ((1080, 1080), 1),  # the short side is already there
        ((4000, 3000), 1),
        ((1079, 4000), 2),  # one pixel short: 2x
        ((1920, 1079), 2),
        ((540, 700), 2),  # 2x lands exactly on 1080
        ((539, 700), 3),  # 2x would give 1078: 3x
        ((360, 360), 3),
        ((359, 359), 4),
        ((270, 300), 4),
        ((135, 135), 8),  # 8x lands exactly on 1080
        ((134, 134), 8),  # short of 1080 even at the largest scale
        ((1, 1), 8),
    ],
)
def test_auto_scale_brings_the_short_side_to_1080(size, scale):
    assert auto_scale(*size, **CAPS) == scale


def test_auto_scale_never_passes_the_output_caps():
    # 400 x 8000 wants 3x (1200 px short side): 1200 x 24000 = 28.8 MP
    assert auto_scale(400, 8000, **CAPS) == 3
    assert auto_scale(400, 8000, max_scale=8, max_output_pixels=28_800_000) == 3
    assert auto_scale(400, 8000, max_scale=8, max_output_pixels=28_799_999) == 2
    assert auto_scale(400, 8000, max_scale=8, max_output_pixels=12_799_999) == 1
    assert auto_scale(100, 100, max_scale=4, max_output_pixels=10**9) == 4
    # a side limit (WebP: 16,383 px) counts too: 100 x 4000 wants 8x (32,000 px long)
    assert auto_scale(100, 4000, **CAPS, max_side=16_383) == 4


# -- cards of scale 4 (a Real-ESRGAN x4 export): passes of at most 4x ----------------------------


@pytest.mark.parametrize(
    "scale,count",
    [(1, 1), (2, 1), (3, 1), (4, 1), (4.0001, 2), (6, 2), (8, 2), (16, 2), (16.5, 3)],
)
def test_pass_count_for_a_4x_card(scale, count):
    assert pass_count(scale, model_scale=4) == count


@pytest.mark.parametrize("scale", [1, 2, 2.5, 3, 4, 5, 6, 7.99, 8])
@pytest.mark.parametrize("width,height", [(1, 1), (3, 7), (40, 30), (101, 77)])
def test_a_4x_plan_lands_exactly_in_steps_of_at_most_4x(scale, width, height):
    plan = plan_passes(width, height, scale, model_scale=4)
    assert plan[0].src == (width, height)
    assert plan[-1].dst == output_size(width, height, scale)
    assert len(plan) == pass_count(scale, 4)
    for earlier, later in zip(plan, plan[1:], strict=False):
        assert later.src == earlier.dst
    for step in plan[1:]:  # after the first (fractional) pass each is 4x, sizes rounded up
        assert all(0 <= 4 * s - d <= 3 for d, s in zip(step.dst, step.src, strict=True))
    for step in plan:
        assert step.src[0] <= step.dst[0] <= 4 * step.src[0]
        assert step.src[1] <= step.dst[1] <= 4 * step.src[1]


def test_examples_for_a_4x_card():
    def sizes(scale, **kw):
        return [(p.src, p.dst) for p in plan_passes(10, 10, scale, model_scale=4, **kw)]

    assert sizes(4) == [((10, 10), (40, 40))]  # one pass
    assert sizes(2) == [((10, 10), (20, 20))]  # one 4x pass, then the engine's downscale
    assert sizes(3) == [((10, 10), (30, 30))]
    assert sizes(1) == [((10, 10), (10, 10))]
    assert sizes(8) == [((10, 10), (20, 20)), ((20, 20), (80, 80))]  # fraction first, then 4x
    assert sizes(6) == [((10, 10), (15, 15)), ((15, 15), (60, 60))]
    assert sizes(4, level=2, enhance_first=True) == [
        ((10, 10), (10, 10)),
        ((10, 10), (40, 40)),
        ((40, 40), (40, 40)),
    ]


@pytest.mark.parametrize("scale", [1, 1.5, 2, 2.5, 3, 4, 5, 8])
def test_scale_1_and_2_cards_keep_the_2x_plan(scale):
    for model_scale in (1, 2):
        assert plan_passes(13, 9, scale, model_scale=model_scale) == plan_passes(13, 9, scale)


@pytest.mark.parametrize(
    "scale,inputs",
    [
        (4, [(6, 6)]),
        (2, [(6, 6)]),
        (3, [(6, 6)]),
        (1, [(6, 6)]),
        (8, [(6, 6), (12, 12)]),
    ],
)
def test_a_4x_card_runs_the_model_once_per_planned_pass(sr4_model, scale, inputs, monkeypatch):
    """On a 4x card, 4x is one model call at the input size and 8x two; every output exact."""
    from enhancer.engine import Enhancer

    enhancer = Enhancer.load(sr4_model)
    calls = []
    original = enhancer.runner.__class__.__call__

    def spy(self, batch, **kwargs):
        calls.append(tuple(batch.shape[-2:]))
        return original(self, batch, **kwargs)

    monkeypatch.setattr(enhancer.runner.__class__, "__call__", spy)
    out = enhancer.upscale(torch.rand(3, 6, 6), scale)
    assert out.shape == (3, 6 * scale, 6 * scale)
    # one dynamic window per pass: the pass input plus the card's overlap (4) on every side
    assert calls == [(h + 8, w + 8) for h, w in inputs]


def test_scale_2_on_a_4x_card_is_its_4x_output_downscaled(sr4_model):
    from enhancer.engine import Enhancer
    from enhancer.imaging import resize

    enhancer = Enhancer.load(sr4_model)
    image = torch.rand(3, 9, 14, generator=torch.Generator().manual_seed(0))
    x4 = enhancer.upscale(image, 4)
    assert torch.allclose(enhancer.upscale(image, 2), resize(x4, (28, 18)), atol=1e-6)


# -- a native 4x model beside the 2x card (enhancer4.pt): one 4x step plus the remainder ----------


def _native_plan(width, height, scale, **kw):
    return [(p.src, p.dst, p.native) for p in plan_passes(width, height, scale, native=4, **kw)]


def test_examples_with_a_native_4x_model():
    assert _native_plan(10, 10, 4) == [((10, 10), (40, 40), True)]  # one 4x pass
    # the remainder first (on the 2x model), the 4x pass last, on the smallest input it can have
    assert _native_plan(10, 10, 8) == [((10, 10), (20, 20), False), ((20, 20), (80, 80), True)]
    assert _native_plan(10, 10, 6) == [((10, 10), (15, 15), False), ((15, 15), (60, 60), True)]
    assert _native_plan(10, 10, 5) == [((10, 10), (13, 13), False), ((13, 13), (50, 50), True)]
    assert _native_plan(10, 10, 16) == [((10, 10), (40, 40), True), ((40, 40), (160, 160), True)]
    # below 4 the 2x plan, unchanged
    assert _native_plan(10, 10, 3) == [((10, 10), (20, 20), False), ((20, 20), (30, 30), False)]
    for scale in (1, 1.5, 2, 2.5, 3, 3.99):
        assert plan_passes(13, 9, scale, native=4) == plan_passes(13, 9, scale)
    # restoring passes stay on the card's model
    assert _native_plan(10, 10, 4, level=2, enhance_first=True) == [
        ((10, 10), (10, 10), False),
        ((10, 10), (40, 40), True),
        ((40, 40), (40, 40), False),
    ]


@pytest.mark.parametrize("scale", [4, 4.5, 5, 6, 7.99, 8, 12, 16])
@pytest.mark.parametrize("width,height", [(1, 1), (3, 7), (40, 30), (101, 77)])
def test_a_native_plan_lands_exactly_with_one_4x_pass_last(scale, width, height):
    plan = plan_passes(width, height, scale, native=4)
    assert plan[0].src == (width, height)
    assert plan[-1].dst == output_size(width, height, scale)
    assert plan[-1].native
    for earlier, later in zip(plan, plan[1:], strict=False):
        assert later.src == earlier.dst
    for step in plan:
        limit = 4 if step.native else 2
        assert step.src[0] <= step.dst[0] <= limit * step.src[0]
        assert step.src[1] <= step.dst[1] <= limit * step.src[1]
    if scale < 16:
        assert [p.native for p in plan].count(True) == 1


def test_a_native_model_needs_a_2x_card():
    with pytest.raises(ValueError, match="native"):
        plan_passes(10, 10, 8, model_scale=4, native=4)
    with pytest.raises(ValueError, match="native"):
        plan_passes(10, 10, 8, native=3)


@pytest.fixture(scope="module")
def native_pair(tmp_path_factory):
    """A tiny 2x model with a tiny native 4x model beside it (enhancer.pt + enhancer4.pt)."""
    from tests.helpers.tiny_models import tiny_sr, tiny_sr4

    folder = tmp_path_factory.mktemp("native")
    return tiny_sr(folder), tiny_sr4(folder, name="enhancer4", seed=1)


def _spy_calls(enhancer, monkeypatch):
    """Record (which model, input size) of every model call."""
    calls = []
    original = enhancer.runner.__class__.__call__

    def spy(self, batch, **kwargs):
        calls.append(("x4" if self.card.scale == 4 else "x2", tuple(batch.shape[-2:])))
        return original(self, batch, **kwargs)

    monkeypatch.setattr(enhancer.runner.__class__, "__call__", spy)
    return calls


@pytest.mark.parametrize(
    "scale,expected",
    [
        (4, [("x4", (6, 6))]),
        (8, [("x2", (6, 6)), ("x4", (12, 12))]),
        (6, [("x2", (6, 6)), ("x4", (9, 9))]),
        (3, [("x2", (6, 6)), ("x2", (12, 12))]),
        (2, [("x2", (6, 6))]),
    ],
)
def test_the_engine_runs_the_native_model_for_scales_of_4_and_more(
    native_pair, scale, expected, monkeypatch
):
    from enhancer.engine import Enhancer

    model, native = native_pair
    enhancer = Enhancer.load(model, native_path=native)
    calls = _spy_calls(enhancer, monkeypatch)
    out = enhancer.upscale(torch.rand(3, 6, 6), scale)
    assert out.shape == (3, 6 * scale, 6 * scale)
    assert 0 <= out.min() and out.max() <= 1
    # one dynamic window per pass: the pass input plus the card's overlap (4) on every side
    assert calls == [(m, (h + 8, w + 8)) for m, (h, w) in expected]


def test_native_4x_off_runs_2x_passes(native_pair, monkeypatch):
    from enhancer.engine import Enhancer
    from enhancer.settings import EnhancerSettings

    model, native = native_pair
    settings = EnhancerSettings.from_mapping({"native_4x": False})
    enhancer = Enhancer.load(model, native_path=native, settings=settings)
    calls = _spy_calls(enhancer, monkeypatch)
    assert enhancer.upscale(torch.rand(3, 6, 6), 4).shape == (3, 24, 24)
    assert [m for m, _ in calls] == ["x2", "x2"]
    assert Enhancer.load(model).upscale(torch.rand(3, 5, 7), 8).shape == (3, 40, 56)
    for wrong in (1, "false", None):  # a true/false setting takes true or false only
        with pytest.raises(ValueError, match="native_4x"):
            EnhancerSettings.from_mapping({"native_4x": wrong})
    with pytest.raises(ValueError, match="max_scale"):
        EnhancerSettings.from_mapping({"max_scale": True})  # and a bool is no number


def test_native_requests_through_the_three_stages(native_pair):
    """prepare plans the native pass; the bytes that come back have the exact size."""
    import io

    from PIL import Image

    from enhancer.engine import Enhancer

    model, native = native_pair
    enhancer = Enhancer.load(model, native_path=native)
    buffer = io.BytesIO()
    Image.new("RGB", (13, 7), (120, 30, 200)).save(buffer, "PNG")
    job = enhancer.prepare(buffer.getvalue(), {"scale": "6", "format": "png"})
    assert [p.native for p in job.plan] == [False, True]
    result = enhancer.enhance(buffer.getvalue(), {"scale": "6", "format": "png"})
    assert (result.width, result.height) == (78, 42)
    assert Image.open(io.BytesIO(result.data)).size == (78, 42)


def test_a_native_model_must_be_scale_4(native_pair, sr_model):
    from enhancer.engine import Enhancer

    model, native = native_pair
    with pytest.raises(ValueError, match="scale-4"):
        Enhancer.load(model, native_path=sr_model)
    with pytest.raises(ValueError, match="scale-4"):
        Enhancer.load(native, native_path=native)


def test_on_a_clean_restore_pair_only_the_clean_level_runs_native(native_pair, monkeypatch):
    """The native model has no restore partner: denoise 0 (the clean model) ends in the 4x pass,
    the default blend (0.5) keeps 2x passes."""
    from enhancer.engine import Enhancer
    from tests.helpers.tiny_models import tiny_sr

    model, native = native_pair
    restore = tiny_sr(model.parent / "pair", name="restore", seed=5)
    enhancer = Enhancer.load(model, restore_path=restore, native_path=native)
    calls = _spy_calls(enhancer, monkeypatch)
    assert enhancer.upscale(torch.rand(3, 6, 6), 4).shape == (3, 24, 24)
    assert [m for m, _ in calls] == ["x2", "x2"]
    calls.clear()
    assert enhancer.upscale(torch.rand(3, 6, 6), 4, denoise=0).shape == (3, 24, 24)
    assert [m for m, _ in calls] == ["x4"]
