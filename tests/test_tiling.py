"""Tiling: tiled passes equal untiled ones for models whose receptive field fits the overlap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enhancer.tiling import (
    axis_spans,
    overhead,
    plan_axis,
    reflect_indices,
    tile_shape,
    tiled_apply,
    whole_apply,
    window_starts,
)
from scripts.model.unet import CompactUNet
from tests.helpers.images import photo_array
from tests.helpers.tiny_models import TinyRestore, TinySR

TILE, OVERLAP = 32, 4


def untiled(module: torch.nn.Module, image: torch.Tensor, overlap: int, scale: int) -> torch.Tensor:
    """The model on the whole image, reflect-padded by ``overlap`` with numpy (independently)."""
    padded = np.pad(image.numpy(), ((0, 0), (overlap, overlap), (overlap, overlap)), mode="reflect")
    with torch.no_grad():
        out = module(torch.from_numpy(padded)[None])[0].clamp(0, 1)
    cut = overlap * scale
    return out[:, cut : out.shape[1] - cut, cut : out.shape[2] - cut]


def run_tiled(
    module, image, *, scale, tile=TILE, overlap=OVERLAP, dynamic=False, batch_size=2, multiple=1
):
    def run(batch):
        with torch.no_grad():
            return module(batch).clamp(0, 1)

    return tiled_apply(
        [image],
        run,
        scale=scale,
        tile=tile,
        overlap=overlap,
        dynamic=dynamic,
        batch_size=batch_size,
        multiple=multiple,
    )[0]


@pytest.fixture(scope="module")
def sr():
    torch.manual_seed(1)
    return TinySR(depth=OVERLAP, amount=0.3).eval()  # receptive field radius == overlap


@pytest.fixture(scope="module")
def restore():
    torch.manual_seed(2)
    return TinyRestore(depth=OVERLAP, amount=0.3).eval()


SIZES = [
    (1, 1),
    (TILE - 1, TILE - 1),
    (TILE + 1, TILE + 1),
    (37, 23),
    (3 * TILE + 5, 50),
    (1, 40),
    (40, 1),
    (2, 3),
]


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("height,width", SIZES)
def test_tiled_equals_untiled_scale2(sr, height, width, dynamic):
    image = torch.rand(
        3, height, width, generator=torch.Generator().manual_seed(height * 1000 + width)
    )
    tiled = run_tiled(sr, image, scale=2, dynamic=dynamic)
    assert tiled.shape == (3, 2 * height, 2 * width)
    torch.testing.assert_close(tiled, untiled(sr, image, OVERLAP, 2), atol=2e-6, rtol=0)


@pytest.mark.parametrize("height,width", SIZES)
def test_tiled_equals_untiled_scale1(restore, height, width):
    image = torch.rand(
        3, height, width, generator=torch.Generator().manual_seed(height + 7 * width)
    )
    tiled = run_tiled(restore, image, scale=1)
    assert tiled.shape == (3, height, width)
    torch.testing.assert_close(tiled, untiled(restore, image, OVERLAP, 1), atol=2e-6, rtol=0)


def test_too_little_overlap_is_detected(sr):
    """The exactness test above can fail: with less overlap than the receptive field it does."""
    image = torch.rand(3, 90, 90, generator=torch.Generator().manual_seed(3))
    tiled = run_tiled(sr, image, scale=2, overlap=1)
    assert (tiled - untiled(sr, image, 1, 2)).abs().max() > 1e-3


def test_no_measurable_seam(sr):
    """Edge energy along tile boundaries is the same tiled and untiled (seams would add some)."""
    image = torch.from_numpy(photo_array(130, 100)).permute(2, 0, 1).float() / 255
    tiled = run_tiled(sr, image, scale=2)
    reference = untiled(sr, image, OVERLAP, 2)

    def edge_profile(out):  # mean |second difference| across each output column
        return (out[:, :, 2:] - 2 * out[:, :, 1:-1] + out[:, :, :-2]).abs().mean(dim=(0, 1))

    starts = window_starts(130, TILE, OVERLAP, OVERLAP)[1:]
    seams = [2 * (s + OVERLAP) + k - 1 for s in starts for k in range(2 * OVERLAP)]
    torch.testing.assert_close(
        edge_profile(tiled)[seams], edge_profile(reference)[seams], atol=1e-5, rtol=0
    )


def test_wider_model_stays_close():
    """A model that sees further than the overlap still differs by less than one grey level."""
    torch.manual_seed(4)
    wide = TinySR(depth=9, amount=0.3).eval()  # receptive field 9 > overlap 4
    image = torch.from_numpy(photo_array(130, 100)).permute(2, 0, 1).float() / 255
    error = (run_tiled(wide, image, scale=2) - untiled(wide, image, 12, 2)).abs()
    assert 0 < error.max() < 1 / 255


@pytest.mark.parametrize("length", [1, 5, 31, 32, 33, 100, 1000])
@pytest.mark.parametrize("scale", [1, 2])
def test_axis_weights_partition_unity(length, scale):
    spans = axis_spans(length, TILE, OVERLAP, OVERLAP, scale, torch.device("cpu"))
    total = torch.zeros(length * scale)
    for k, span in enumerate(spans):
        assert span.weights.min() >= 0 and span.weights.max() <= 1 + 1e-6
        total[span.out_lo : span.out_hi] += span.weights
        # context pixels near an inner edge never contribute
        if k > 0:
            inner = span.start * scale + OVERLAP * scale
            assert torch.all(span.weights[: max(0, inner - span.out_lo)] == 0)
    torch.testing.assert_close(total, torch.ones_like(total))


def test_window_starts_cover_with_fixed_tiles():
    for length in range(1, 200):
        starts = window_starts(length, TILE, OVERLAP, OVERLAP)
        assert starts[0] == -OVERLAP
        assert (
            starts[-1] + TILE >= length + OVERLAP
        )  # last window reaches past the image by the overlap
        assert all(b - a <= TILE - 3 * OVERLAP for a, b in zip(starts, starts[1:], strict=False))


def test_model_sees_only_tile_shapes_when_not_dynamic(sr):
    shapes = set()

    def run(batch):
        shapes.add(tuple(batch.shape[-2:]))
        with torch.no_grad():
            return sr(batch)

    images = [torch.rand(3, 5, 7), torch.rand(3, 70, 41)]
    tiled_apply(images, run, scale=2, tile=TILE, overlap=OVERLAP, batch_size=3)
    assert shapes == {(TILE, TILE)}


def test_dynamic_small_images_use_small_windows(sr):
    shapes = []

    def run(batch):
        shapes.append(tuple(batch.shape[-2:]))
        with torch.no_grad():
            return sr(batch)

    tiled_apply(
        [torch.rand(3, 5, 9)], run, scale=2, tile=TILE, overlap=OVERLAP, dynamic=True, multiple=4
    )
    assert shapes == [(16, 20)]  # 5 + 2*4 -> 16, 9 + 2*4 -> 20: multiples of 4, not a whole tile


@pytest.mark.parametrize("length", [1, 17, 40, 41, 100, 257, 500, 1000, 1151, 2304])
@pytest.mark.parametrize("tile,multiple", [(32, 4), (64, 8), (256, 8), (1024, 8)])
def test_balanced_windows_are_the_smallest_that_keep_the_window_count(length, tile, multiple):
    side = tile_shape((length, length), tile, OVERLAP, multiple, dynamic=True)[0]
    assert side % multiple == 0 and side <= tile
    count = len(window_starts(length, tile, OVERLAP, OVERLAP))
    assert len(window_starts(length, side, OVERLAP, OVERLAP)) == count  # no extra window
    if side - multiple > 3 * OVERLAP:  # one multiple smaller would need another window
        assert len(window_starts(length, side - multiple, OVERLAP, OVERLAP)) > count


def test_balanced_windows_still_equal_untiled(sr):
    image = torch.rand(3, 70, 45)
    shapes = []

    def run(batch):
        shapes.append(tuple(batch.shape[-2:]))
        with torch.no_grad():
            return sr(batch).clamp(0, 1)

    (out,) = tiled_apply([image], run, scale=2, tile=TILE, overlap=OVERLAP, dynamic=True)
    assert all(h <= TILE and w <= TILE for h, w in shapes) and len(shapes) > 1
    torch.testing.assert_close(out, untiled(sr, image, OVERLAP, 2), atol=2e-6, rtol=0)


def test_batches_mix_images_and_match_single_runs(sr):
    images = [torch.rand(3, 40, 50), torch.rand(3, 17, 80), torch.rand(3, 1, 1)]
    calls = []

    def run(batch):
        calls.append(batch.shape[0])
        with torch.no_grad():
            return sr(batch).clamp(0, 1)

    together = tiled_apply(images, run, scale=2, tile=TILE, overlap=OVERLAP, batch_size=5)
    assert max(calls) == 5  # tiles of different images shared calls
    for image, out in zip(images, together, strict=False):
        alone = run_tiled(sr, image, scale=2, batch_size=1)
        torch.testing.assert_close(out, alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "length,before,after", [(1, 3, 3), (2, 5, 4), (3, 10, 2), (7, 2, 9), (50, 4, 4)]
)
def test_reflect_indices_match_numpy(length, before, after):
    expected = np.pad(np.arange(length), (before, after), mode="reflect" if length > 1 else "edge")
    assert reflect_indices(length, before, after).tolist() == expected.tolist()


# -- the planner: windows on the model's grid, fewest model pixels -------------------------------


@pytest.mark.parametrize("length", [1, 7, 40, 99, 100, 257, 864, 1152, 1728, 2304])
@pytest.mark.parametrize(
    "tile,overlap,multiple,blend", [(64, 6, 4, 2), (256, 12, 4, 4), (96, 8, 8, 8)]
)
def test_planner_windows_are_on_the_grid_cover_and_are_cheapest(
    length, tile, overlap, multiple, blend
):
    plan = plan_axis(length, tile, overlap, multiple, blend)
    assert plan.size % multiple == 0 and plan.size <= tile
    assert plan.starts[0] == -overlap
    assert all((start + overlap) % multiple == 0 for start in plan.starts)  # the whole run's grid
    assert plan.starts[-1] + plan.size >= length + overlap  # context past the far edge too
    for a, b in zip(plan.starts, plan.starts[1:], strict=False):
        assert a + plan.size - b >= 2 * overlap + blend  # neighbours share context and blend
    # brute force over every window count and aligned step: nothing covers with fewer pixels
    best = None
    for size in range(multiple, tile + 1, multiple):
        if size >= length + 2 * overlap:
            best = min(best or size, size)
            continue
        for step in range(multiple, size - 2 * overlap - blend + 1, multiple):
            count = -(-(length + 2 * overlap - size) // step) + 1
            best = min(best or count * size, count * size)
    assert plan.model_pixels == best


def test_planner_overhead_for_known_sizes():
    """Model pixels per output pixel of one pass, worked out by hand (overlap 12, blend 4, grid 4).

    1 MP (1152 x 864) under tile 1024: 864 + 2*12 = 888 fits one window (the whole-image run);
    1152 needs two windows sharing 2*12 + 4 = 28 pixels: 1152 + 24 + 28 = 1204 over two is 602,
    604 on the grid of 4, 576 apart. So 888 * 1208 model pixels for 864 * 1152: 1.078.
    """
    assert plan_axis(864, 1024, 12, 4, 4).starts == (-12,)
    assert plan_axis(864, 1024, 12, 4, 4).size == 888
    two = plan_axis(1152, 1024, 12, 4, 4)
    assert len(two.starts) == 2 and two.size == 604 and two.starts == (-12, 564)
    assert overhead((864, 1152), 1024, 12, 4, True, 4) == pytest.approx(888 * 1208 / (864 * 1152))
    for size in [(864, 1152), (1728, 2304)]:
        assert overhead(size, 1024, 12, 4, True, 4) <= 1.15
    # the old fixed 256 tiles with an 8-pixel overlap and an 8-pixel blend cost 1.2 or more
    assert overhead((864, 1152), 256, 8, 4, True, 8) > 1.2


def test_small_images_run_whole():
    plan = plan_axis(300, 1024, 12, 4, 4)
    assert plan.starts == (-12,) and plan.size == 324


@pytest.fixture(scope="module")
def unet():
    """A tiny strided U-Net (grid of 4, receptive field well under 24 pixels): not
    shift-invariant, like the shipped models, so only windows on its grid agree."""
    torch.manual_seed(5)
    model = CompactUNet(nf=(4, 8, 8), blocks=(1, 0, 0)).eval()
    with torch.no_grad():
        model.head.weight.mul_(30)  # a residual that matters (it starts near zero)
    return model


def _run(model):
    def run(batch):
        with torch.no_grad():
            return model(batch)

    return run


@pytest.mark.parametrize("height,width", [(70, 45), (130, 97), (33, 140), (5, 9)])
@pytest.mark.parametrize("tile", [64, 96])
def test_strided_unet_tiled_equals_whole(unet, height, width, tile):
    image = torch.from_numpy(photo_array(width, height)).permute(2, 0, 1).float() / 255
    overlap = 24
    tiled = tiled_apply(
        [image], _run(unet), scale=2, tile=tile, overlap=overlap, multiple=4, dynamic=True, blend=4
    )[0]
    # more context than the overlap (on the same grid): the borders need only the overlap too
    whole = whole_apply(image, _run(unet), scale=2, context=overlap + 16, multiple=4)
    assert (tiled - whole).abs().max() < 1e-5


def test_strided_unet_is_not_shift_invariant(unet):
    """Why windows must sit on the grid: the same content one pixel off it computes differently
    far from any edge, so the equality above is not automatic."""
    image = torch.from_numpy(photo_array(96, 96)).permute(2, 0, 1).float() / 255
    run = _run(unet)
    on_grid = whole_apply(image[:, 4:, 4:], run, scale=2, context=0, multiple=4)
    off_grid = whole_apply(image[:, 1:, 1:], run, scale=2, context=0, multiple=4)
    centre = (on_grid[:, 40:80, 40:80] - off_grid[:, 46:86, 46:86]).abs().max()
    assert centre > 2 / 255


def test_strided_unet_with_too_little_overlap_differs(unet):
    image = torch.from_numpy(photo_array(130, 97)).permute(2, 0, 1).float() / 255
    tiled = tiled_apply(
        [image], _run(unet), scale=2, tile=64, overlap=1, multiple=4, dynamic=True, blend=0
    )[0]
    whole = whole_apply(image, _run(unet), scale=2, context=1 + 16, multiple=4)
    assert (tiled - whole).abs().max() > 1 / 255


# -- the card's blend ------------------------------------------------------------------------------


def _card(**fields):
    from enhancer.card import ModelCard

    data = {
        "name": "tiny",
        "version": "test",
        "scale": 2,
        "multiple": 4,
        "tile": 64,
        "overlap": 12,
        "dtypes": ["float32"],
        "sha256": "0" * 64,
        "dynamic": True,
    }
    data.update(fields)
    return ModelCard.from_dict(data)


def test_card_blend_is_optional_validated_and_round_trips():
    assert _card().blend is None and "blend" not in _card().to_dict()  # older cards unchanged
    assert _card(blend=4).blend == 4 and _card(blend=4).to_dict()["blend"] == 4
    for bad in (-1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="blend"):
            _card(blend=bad)
    with pytest.raises(ValueError, match="no step"):
        _card(blend=40)  # 2*12 + 40 + 4 > 64: no room for one step of the grid


def test_family_needs_the_same_blend():
    from enhancer.family import check_family

    check_family(_card(blend=4), _card(blend=4))
    with pytest.raises(ValueError, match="blend"):
        check_family(_card(blend=4), _card(blend=8))
