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


# --------------------------------------------------------------------- the second-order model


def test_second_order_seed_repeats_and_replays():
    img = photo(128, 128)
    a, ops_a = crappify.crappify(img, 2, np.random.default_rng(5), crappify.RESTORE)
    b, ops_b = crappify.crappify(img, 2, np.random.default_rng(5), crappify.RESTORE)
    c, ops_c = crappify.crappify(img, 2, np.random.default_rng(6), crappify.RESTORE)
    assert ops_a == ops_b and np.array_equal(np.asarray(a), np.asarray(b))
    assert ops_a != ops_c and not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.array_equal(np.asarray(crappify.apply_recipe(img, ops_a)), np.asarray(a))


@pytest.mark.parametrize("factor", [2, 4])
def test_second_order_structure(factor):
    """Two rounds, each of its (shuffled) blur/resize/noise then JPEG; then the resize to the
    pair's size and the final JPEG and sinc; always the pair's size, whatever the rounds did."""
    img = photo(96, 128)
    orders, kinds = set(), set()
    for seed in range(40):
        low, ops = crappify.crappify(img, factor, np.random.default_rng(seed), crappify.RESTORE)
        assert low.size == (128 // factor, 96 // factor) and low.mode == "RGB"
        names = [name for name, _ in ops]
        end = names.index("resize_to")
        rounds = names[:end]
        jpegs = [i for i, n in enumerate(rounds) if n == "jpeg"]
        assert len(jpegs) == 2 and jpegs[1] == len(rounds) - 1  # each round ends in JPEG
        first = rounds[: jpegs[0]]
        orders.add(tuple(n for n in first if n in ("resize", "noise", "poisson")))
        assert set(names[end + 1 :]) <= {"jpeg", "sinc"} and "jpeg" in names[end + 1 :]
        kinds |= set(names)
        for name, p in ops:
            if name == "jpeg":
                assert 15 <= p["quality"] <= 95
    # the order inside a round is shuffled, and every kind of op turns up
    assert len(orders) >= 3
    assert {"gaussian_blur", "resize", "noise", "poisson", "jpeg", "sinc"} <= kinds


def test_second_order_ops_do_what_they_say():
    img = photo(96, 128)
    arr = np.asarray(img, dtype=np.float64)
    # blur (Gaussian, generalised Gaussian, sinc low-pass) removes fine detail
    for op in (
        ("gaussian_blur", {"sigma_x": 1.5, "sigma_y": 1.5, "theta": 0.0}),
        ("generalized_blur", {"sigma_x": 1.5, "sigma_y": 1.5, "theta": 0.0, "beta": 0.5}),
        ("generalized_blur", {"sigma_x": 1.5, "sigma_y": 0.5, "theta": 0.7, "beta": 3.0}),
        ("sinc", {"cutoff": np.pi / 3, "radius": 10}),
    ):
        out = crappify.apply_recipe(img, [op])
        assert out.size == img.size
        assert laplacian_energy(out) < 0.5 * laplacian_energy(img), op
    # the sinc filter rings: a step edge overshoots on both sides (a Gaussian never does)
    step = np.zeros((32, 64, 3), np.uint8)
    step[:, 32:] = 160
    step += 40
    ring = np.asarray(
        crappify.apply_recipe(Image.fromarray(step), [("sinc", {"cutoff": 1.2, "radius": 10})])
    ).astype(int)
    assert ring[16, :, 0].max() > 200 + 3 and ring[16, :, 0].min() < 40 - 3
    gauss = crappify.apply_recipe(
        Image.fromarray(step), [("gaussian_blur", {"sigma_x": 2, "sigma_y": 2, "theta": 0})]
    )
    assert np.asarray(gauss).max() <= 200 and np.asarray(gauss).min() >= 40
    # a generalised Gaussian with beta 1 is the Gaussian
    assert np.allclose(
        crappify.generalized_gaussian_kernel(1.2, 0.8, 0.3, 1.0),
        crappify.gaussian_kernel(1.2, 0.8, 0.3),
        atol=1e-6,
    )
    # resize by a scale, and back to the pair's size from the original's
    small = crappify.apply_recipe(img, [("resize", {"scale": 0.5, "kernel": "box"})])
    assert small.size == (64, 48)
    ops = [
        ("resize", {"scale": 0.3, "kernel": "bilinear"}),
        ("resize_to", {"factor": 2, "kernel": "bicubic"}),
    ]
    assert crappify.apply_recipe(img, ops).size == (64, 48)
    # Gaussian noise of sigma s: residual std about s levels; grey noise is equal in R, G, B
    flat = Image.new("RGB", (128, 128), (128, 128, 128))
    noisy = np.asarray(
        crappify.apply_recipe(flat, [("noise", {"sigma": 10.0, "gray": False, "seed": 1})])
    ).astype(float)
    assert 9 < (noisy - 128).std() < 11
    grey = np.asarray(
        crappify.apply_recipe(flat, [("noise", {"sigma": 10.0, "gray": True, "seed": 1})])
    )
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    # Poisson noise grows with brightness (shot noise), grey Poisson is equal in R, G, B
    dark, bright = Image.new("RGB", (128, 128), (30,) * 3), Image.new("RGB", (128, 128), (220,) * 3)
    p = ("poisson", {"scale": 1.0, "gray": False, "seed": 2})
    sd_dark = (np.asarray(crappify.apply_recipe(dark, [p])).astype(float) - 30).std()
    sd_bright = (np.asarray(crappify.apply_recipe(bright, [p])).astype(float) - 220).std()
    assert 1.5 * sd_dark < sd_bright
    pg = ("poisson", {"scale": 1.0, "gray": True, "seed": 2})
    pg = np.asarray(crappify.apply_recipe(bright, [pg]))
    assert np.array_equal(pg[..., 0], pg[..., 2]) and pg.std() > 1
    # JPEG at quality 15 loses much more than at 95 (on a smooth image: the test photo's grain
    # costs even quality 95 a few levels)
    img = crappify.apply_recipe(img, [("gaussian_blur", {"sigma_x": 1, "sigma_y": 1, "theta": 0})])
    arr = np.asarray(img, dtype=np.float64)
    err = {
        q: np.abs(np.asarray(crappify.apply_recipe(img, [("jpeg", {"quality": q})])) - arr).mean()
        for q in (15, 95)
    }
    assert err[15] > 2 * err[95]


def test_second_order_text_option_and_clean_share():
    img = photo(128, 128)
    with_text = dataclasses.replace(crappify.RESTORE, p_text=1.0)
    _, ops = crappify.crappify(img, 2, np.random.default_rng(0), with_text)
    assert ops[-1][0] == "text"
    clean = dataclasses.replace(crappify.RESTORE, p_clean=1.0)
    low, ops = crappify.crappify(img, 2, np.random.default_rng(0), clean)
    assert ops == [("downscale", {"factor": 2, "kernel": "bicubic"})]
