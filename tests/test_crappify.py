"""Degradations are deterministic with a seed and do what they say (hermetic: generated images)."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.model import crappify


def photo(h=96, w=128, seed=0) -> Image.Image:
    """A photo-like test image: smooth gradients plus some sharp edges and texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([x, y, 0.5 + 0.3 * np.sin(8 * x + 5 * y)], -1)
    img[h // 4 : h // 2, w // 4 : w // 2] = rng.random(3)  # a flat patch with hard edges
    img += 0.05 * rng.standard_normal((h, w, 3))  # texture
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def laplacian_energy(img: Image.Image) -> float:
    a = np.asarray(img, dtype=np.float64).mean(-1)
    lap = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
    return float((lap**2).mean())


def test_same_seed_same_pixels_and_recipe():
    img = photo()
    a, ops_a = crappify.crappify(img, 2, np.random.default_rng(7), crappify.REAL_WORLD)
    b, ops_b = crappify.crappify(img, 2, np.random.default_rng(7), crappify.REAL_WORLD)
    c, ops_c = crappify.crappify(img, 2, np.random.default_rng(8), crappify.REAL_WORLD)
    assert ops_a == ops_b
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert ops_c != ops_a
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_recipe_replays_exactly():
    img = photo()
    low, ops = crappify.crappify(img, 2, np.random.default_rng(3), crappify.REAL_WORLD)
    assert np.array_equal(np.asarray(crappify.apply_recipe(img, ops)), np.asarray(low))


def test_clean_pairs_are_exactly_pil_bicubic():
    img = photo()
    clean = dataclasses.replace(crappify.TRAIN, p_clean=1.0)
    low, ops = crappify.crappify(img, 2, np.random.default_rng(0), clean)
    assert ops == [("downscale", {"factor": 2, "kernel": "bicubic"})]
    assert np.array_equal(np.asarray(low), np.asarray(img.resize((64, 48), Image.BICUBIC)))


@pytest.mark.parametrize("factor", [2, 4])
def test_downscale_size(factor):
    low, _ = crappify.crappify(photo(), factor, np.random.default_rng(1), crappify.REAL_WORLD)
    assert low.size == (128 // factor, 96 // factor)
    assert low.mode == "RGB"


def test_real_world_mix_has_every_op():
    for seed in range(20):
        ops = crappify.sample_recipe(np.random.default_rng(seed), crappify.REAL_WORLD, 2)
        names = [name for name, _ in ops]
        assert {"gaussian_blur", "downscale", "noise", "jpeg"} <= set(names)
        assert names.index("noise") > names.index("downscale")


def test_train_mix_shares():
    rng = np.random.default_rng(0)
    recipes = [crappify.sample_recipe(rng, crappify.TRAIN, 2) for _ in range(2000)]
    clean = sum(r == [("downscale", {"factor": 2, "kernel": "bicubic"})] for r in recipes) / len(
        recipes
    )
    assert abs(clean - crappify.TRAIN.p_clean) < 0.05
    kernels = {p["kernel"] for r in recipes for n, p in r if n == "downscale"}
    assert kernels == set(crappify.TRAIN.kernels)
    orders = {tuple(n for n, _ in r if n in ("noise", "jpeg")) for r in recipes}
    assert ("noise", "jpeg") in orders and ("jpeg", "noise") in orders  # varied order


def test_kernels_are_normalised_and_shaped():
    g = crappify.gaussian_kernel(1.0)
    assert g.shape == (7, 7) and abs(g.sum() - 1) < 1e-5
    assert np.allclose(g, g.T) and g[3, 3] == g.max()
    aniso = crappify.gaussian_kernel(2.0, 0.5, 0.0)
    assert aniso[6, :].sum() > aniso[:, 6].sum()  # wider along x than y
    m = crappify.motion_kernel(5, 0.0)
    assert abs(m.sum() - 1) < 1e-5
    assert m[m.shape[0] // 2].sum() > 0.99  # a horizontal line through the centre


def test_blur_removes_detail_and_keeps_level():
    img = photo()
    arr = crappify.to_float(img)
    for kernel in (crappify.gaussian_kernel(1.5), crappify.motion_kernel(7, 0.7)):
        out = crappify.to_pil(crappify.convolve(arr, kernel))
        assert laplacian_energy(out) < 0.3 * laplacian_energy(img)
        assert abs(np.asarray(out, float).mean() - np.asarray(img, float).mean()) < 1.0


def test_noise_has_the_stated_sigma():
    flat = np.full((200, 200, 3), 0.5, np.float32)
    noisy = crappify.add_noise(flat, 10.0, np.random.default_rng(0))
    assert abs((noisy - flat).std() * 255 - 10.0) < 0.3
    gray = crappify.add_noise(flat, 10.0, np.random.default_rng(0), gray=True)
    assert np.allclose(gray[..., 0], gray[..., 1])
    assert not np.allclose(noisy[..., 0], noisy[..., 1])


def test_jpeg_quality_orders_error():
    img = photo()
    ref = np.asarray(img, float)
    errs = [np.abs(np.asarray(crappify.jpeg(img, q), float) - ref).mean() for q in (20, 50, 95)]
    assert errs[0] > errs[1] > errs[2] > 0


def test_text_overlay_draws():
    img = Image.new("RGB", (64, 64))
    out = crappify.text_overlay(img, "42", (5, 5))
    drawn = np.asarray(out).max(-1) > 128
    assert np.asarray(img).max() == 0 and drawn.sum() > 20
    assert drawn[:5].sum() == 0 and drawn[:, :5].sum() == 0  # it starts at (5, 5)
    cfg = dataclasses.replace(crappify.TRAIN, p_clean=0.0, p_text=1.0)
    ops = crappify.sample_recipe(np.random.default_rng(0), cfg, 2)
    assert ops[-1][0] == "text"


@pytest.mark.parametrize("factor,out_scale,side", [(2, 2, 16), (4, 1, 64), (2, 1, 32)])
def test_make_pair_shapes(factor, out_scale, side):
    arr = np.asarray(photo())
    x, y = crappify.make_pair(arr, np.random.default_rng(0), 16, factor, crappify.TRAIN, out_scale)
    assert y.shape == (3, 16 * factor, 16 * factor)
    assert x.shape == (3, side, side)
    assert x.dtype == y.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1


def test_pair_dataset_seeded_by_epoch_and_index():
    images = [np.asarray(photo(seed=s)) for s in range(3)] + [np.zeros((20, 20, 3), np.uint8)]
    ds = crappify.PairDataset(images, 8, 24, seed=5)
    x0, y0 = ds[3]
    assert torch.equal(ds[3][0], x0) and torch.equal(ds[3][1], y0)
    assert not torch.equal(ds[4][1], y0)
    ds.epoch = 1
    assert not torch.equal(ds[3][1], y0)
    # the 20x20 image is never picked for a 48-pixel crop
    for i in range(8):
        assert ds[i][1].shape == (3, 48, 48)


def test_load_images(tmp_path):
    photo().save(tmp_path / "a.png")
    photo().convert("L").save(tmp_path / "b.png")
    photo().save(tmp_path / "c.jpg", quality=90)
    images = crappify.load_images([tmp_path])
    assert [a.shape for a in images] == [(96, 128, 3), (96, 128, 3), (72, 96, 3)]
    with pytest.raises(FileNotFoundError):
        crappify.load_images([tmp_path / "missing"])
