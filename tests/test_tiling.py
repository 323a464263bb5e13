"""Tiling: tiled passes equal untiled ones for models whose receptive field fits the overlap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enhancer.tiling import axis_spans, reflect_indices, tile_shape, tiled_apply, window_starts
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
