"""evaluate.py computes known PSNR/SSIM on synthetic cases and scores models the documented way."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scripts import export
from scripts.model import evaluation as evaluate
from scripts.model.unet import CompactUNet

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)


def gradient_image(h=64, w=80, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 2 + 40, y * 2 + 40, (x + y) + 60], -1) + rng.integers(0, 20, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def test_bt601_luma_range():
    assert evaluate.rgb_to_y(np.zeros((1, 1, 3))).item() == pytest.approx(16.0)
    assert evaluate.rgb_to_y(np.full((1, 1, 3), 255.0)).item() == pytest.approx(235.0)
    green = evaluate.rgb_to_y(np.array([[[0.0, 255.0, 0.0]]])).item()
    assert green == pytest.approx(16 + 128.553)


def test_psnr_identical_is_infinite_and_ssim_one():
    a = evaluate.rgb_to_y(gradient_image())
    assert evaluate.psnr(a, a) == float("inf")
    assert evaluate.ssim(a, a) == pytest.approx(1.0)


@pytest.mark.parametrize("offset", [1.0, 2.5, 10.0])
def test_psnr_of_a_known_error(offset):
    a = evaluate.rgb_to_y(gradient_image())
    assert evaluate.psnr(a, a + offset) == pytest.approx(20 * np.log10(255 / offset), abs=1e-9)


def test_psnr_of_known_noise_level():
    a = np.full((256, 256), 128.0)
    noisy = a + np.random.default_rng(0).normal(0, 5.0, a.shape)
    assert evaluate.psnr(a, noisy) == pytest.approx(20 * np.log10(255 / 5.0), abs=0.05)  # 34.15 dB
    s = evaluate.ssim(
        evaluate.rgb_to_y(gradient_image()), evaluate.rgb_to_y(gradient_image(seed=1))
    )
    assert 0 < s < 0.99


def test_ssim_reference_values():
    # a constant offset changes only luminance: SSIM is the luminance term, computable by hand
    a = np.full((32, 32), 100.0)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)
    assert evaluate.ssim(a, a + 10) == pytest.approx(expected, rel=1e-9)
    # structure reversed (negative correlation) scores below zero
    pattern = np.tile([0.0, 255.0], (32, 16))
    assert evaluate.ssim(pattern, 255 - pattern) < 0


def test_score_shaves_the_border():
    hr = gradient_image()
    sr = hr.copy()
    sr[:2] = 0
    sr[:, -2:] = 255
    assert evaluate.score(sr, hr, 2)[0] == float("inf")
    assert evaluate.score(sr, hr, 1)[0] < 40


@pytest.fixture
def hr_folder(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(gradient_image(66, 83, seed=k)).save(
            folder / f"{k}.png"
        )  # not multiples of 4
    Image.fromarray(gradient_image(40, 40)[..., 0]).save(
        folder / "grey.png"
    )  # grey, as Set14 bridge
    return folder


def test_evaluate_rows_and_table(hr_folder):
    perfect = {}

    def oracle(lr, scale):  # returns the HR image the LR was made from: the scoring must say inf
        return perfect[lr.tobytes()]

    def remember(folder):
        for _, hr in evaluate.hr_images(folder):
            for s in (2, 4):
                c = hr.crop((0, 0, hr.width - hr.width % s, hr.height - hr.height % s))
                lr = c.resize((c.width // s, c.height // s), Image.BICUBIC)
                perfect[lr.tobytes()] = np.asarray(c)

    remember(hr_folder)
    rows = evaluate.evaluate(
        [str(hr_folder)], [2, 4], {"oracle": oracle}, ["bicubic"], 0, log=lambda m: None
    )
    assert [(r["set"], r["scale"]) for r in rows] == [("set", 2), ("set", 4)]
    for r in rows:
        assert r["oracle"]["psnr"] == float("inf") and r["oracle"]["ssim"] == 1.0
        assert 20 < r["bicubic"]["psnr"] < 60
    assert rows[0]["bicubic"]["psnr"] > rows[1]["bicubic"]["psnr"]  # x4 is harder than x2
    table = evaluate.markdown(rows, ["oracle"], 0, "scripts/evaluate.py ...")
    assert "| set | x2 |" in table and "Command: `scripts/evaluate.py ...`" in table


def test_targets_are_checked_against_the_measured_rows():
    def row(track, name, scale, bicubic, model, shift=None):
        r = {
            "track": track,
            "set": name,
            "scale": scale,
            "bicubic": {"psnr": bicubic, "ssim": 0.9},
            "model": {"psnr": model, "ssim": 0.9},
        }
        if shift is not None:
            r["colour_shift"] = {"model": shift}
        return r

    rows = [
        row("bicubic", "set5", 2, 33.7, 37.6),  # over 37.5
        row("bicubic", "set14", 2, 30.3, 32.9, shift=0.4),  # under 33.0; colour within 1/255
        row("bicubic", "kodak24", 2, 29.6, 31.0),  # no target
        row("real_world", "kodak24", 2, 28.5, 30.6),  # +2.1
        row("real_world", "b100", 2, 27.2, 28.0, shift=1.7),  # +0.8; colour off by 1.7 levels
        row("heavy", "b100", 2, 24.0, 27.5),  # +3.5
    ]
    checks = {c["what"]: (c["measured"], c["met"]) for c in evaluate.target_checks(rows)}
    assert checks == {
        "set5 x2 PSNR": (37.6, True),
        "set14 x2 PSNR": (32.9, False),
        "bicubic set14 x2 colour shift (levels, max over images)": (0.4, True),
        "real-world kodak24 x2 gain over bicubic": (2.1, True),
        "real-world b100 x2 gain over bicubic": (0.8, False),
        "real_world b100 x2 colour shift (levels, max over images)": (1.7, False),
        "heavy b100 x2 gain over bicubic": (3.5, True),
    }
    table = evaluate.markdown(rows, ["model"], 0, "cmd")
    assert "| set14 x2 PSNR | 33.0 | 32.90 | **no** |" in table
    assert "Heavy track (seed 0)" in table


def test_heavy_track_is_seeded_noisy_and_blocky(hr_folder):
    hr = evaluate.hr_images(str(hr_folder))[0][1].crop((0, 0, 80, 64))
    a = np.asarray(evaluate.heavy_lr(hr, 2, 0, 7), dtype=np.float64)
    b = np.asarray(evaluate.heavy_lr(hr, 2, 0, 7), dtype=np.float64)
    c = np.asarray(evaluate.heavy_lr(hr, 2, 1, 7), dtype=np.float64)
    clean = np.asarray(hr.resize((40, 32), Image.BICUBIC), dtype=np.float64)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # noise sigma 10-15 then JPEG 20-30: far from the clean LR, but the same picture
    error = np.sqrt(np.mean((a - clean) ** 2))
    assert 4 < error < 25, error
    rows = evaluate.evaluate([str(hr_folder)], [2], {}, ["heavy"], 7, log=lambda m: None)
    assert rows[0]["track"] == "heavy" and rows[0]["bicubic"]["psnr"] < 35


def test_colour_shift_and_contact_sheets(tmp_path, hr_folder):
    def tinted(lr, scale):  # bicubic, with the red channel lifted by 3 levels
        out = np.asarray(lr.resize((lr.width * scale, lr.height * scale), Image.BICUBIC))
        out = out.astype(np.int16)
        out[..., 0] += 3
        return out.clip(0, 255).astype(np.uint8)

    def plain(lr, scale):
        return np.asarray(lr.resize((lr.width * scale, lr.height * scale), Image.BICUBIC))

    logged = []
    rows = evaluate.evaluate(
        [str(hr_folder)],
        [2],
        {"plain": plain, "tinted": tinted},
        ["bicubic"],
        0,
        log=logged.append,
        sheets=tmp_path / "sheets",
    )
    shift = rows[0]["colour_shift"]
    assert shift["plain"] == 0.0 and 2.5 < shift["tinted"] <= 3.0
    assert any("colour shift" in line and "tinted" in line for line in logged)
    sheets = sorted((tmp_path / "sheets").glob("*.png"))
    assert [p.name for p in sheets] == [
        "bicubic_set_x2_0.png",
        "bicubic_set_x2_1.png",
        "bicubic_set_x2_grey.png",
    ]
    with Image.open(sheets[0]) as sheet:
        # four columns (bicubic, plain, tinted, original) of at least 360 px, image + zoomed crop
        assert sheet.width >= 4 * 360 and sheet.height > 360 * 64 / 83
        assert np.asarray(sheet.convert("L")).std() > 10  # not blank


def test_real_world_track_is_seeded(hr_folder):
    hr = evaluate.hr_images(str(hr_folder))[0][1]
    a, ops_a = evaluate.real_world_lr(hr, 2, 0, 123)
    b, ops_b = evaluate.real_world_lr(hr, 2, 0, 123)
    c, _ = evaluate.real_world_lr(hr, 2, 1, 123)
    assert ops_a == ops_b and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    rows = evaluate.evaluate([str(hr_folder)], [2], {}, ["real_world"], 123, log=lambda m: None)
    assert rows[0]["track"] == "real_world" and rows[0]["bicubic"]["psnr"] < 60


def test_model_runs_through_the_engine(tmp_path, hr_folder):
    torch.manual_seed(0)
    model = CompactUNet((8, 16), (1, 1))
    with torch.no_grad():
        model.head.weight.zero_()  # a zero residual: the model is exactly torch's bicubic
    torch.save(
        {"model": model.state_dict(), "arch": "compact", "config": model.config()},
        tmp_path / "m.pth",
    )
    pt = tmp_path / "tiny.pt"
    assert (
        export.main(
            [
                "--weights",
                str(tmp_path / "m.pth"),
                "--out",
                str(pt),
                "--tile",
                "32",
                "--overlap",
                "8",
            ]
        )
        == 0
    )
    run, card = evaluate.engine_upscaler(str(pt), None, "cpu")
    assert card.tile == 32
    lr = Image.fromarray(gradient_image(30, 45))
    out = run(lr, 4)
    assert out.shape == (120, 180, 3) and out.dtype == np.uint8
    # two 2x bicubic passes: close to PIL's one 4x bicubic (which has a softer kernel)
    bic = np.asarray(lr.resize((180, 120), Image.BICUBIC), float)
    assert np.abs(out - bic).mean() < 2
    # the direct (checkpoint) path agrees with the engine up to border handling
    direct = evaluate.direct_upscaler(str(tmp_path / "m.pth"))(lr, 4)
    assert np.abs(direct[8:-8, 8:-8].astype(float) - out[8:-8, 8:-8]).max() <= 2

    rows = evaluate.evaluate(
        [str(hr_folder)], [2], {"model": run}, ["bicubic"], 0, log=lambda m: None
    )
    card_path = pt.with_suffix(".json")
    data = json.loads(card_path.read_text())
    assert "quality" not in data and rows[0]["model"]["psnr"] > 20


def test_ssim_separable_window_equals_the_11x11_window():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(16, 235, (40, 50)))[None, None]
    g = evaluate._gaussian_1d()
    window = (g[:, None] * g[None, :])[None, None]
    assert window.sum().item() == pytest.approx(1.0)
    direct = torch.nn.functional.conv2d(x, window)
    assert torch.allclose(evaluate._filter(x, g), direct, atol=1e-9)


def test_measure_speed(tmp_path):
    torch.manual_seed(0)
    model = CompactUNet((8, 16), (1, 1))
    torch.save(
        {"model": model.state_dict(), "arch": "compact", "config": model.config()},
        tmp_path / "m.pth",
    )
    pt = tmp_path / "tiny.pt"
    assert export.main(["--weights", str(tmp_path / "m.pth"), "--out", str(pt), "--tile", "32",
                        "--overlap", "4"]) == 0  # fmt: skip
    Image.fromarray(gradient_image(40, 50)).save(tmp_path / "p.png")
    speed = evaluate.measure_speed(str(pt), None, str(tmp_path / "p.png"), "cpu", reps=1)
    assert speed["output_mp"] == pytest.approx(80 * 100 / 1e6) and speed["output_mp_per_s"] > 0
    assert speed["tile"] == 32 and speed["overlap"] == 4


def test_engine_upscaler_runs_level_and_enhance_first(sr_model):
    lr = Image.fromarray(gradient_image(20, 14))
    plain, _ = evaluate.engine_upscaler(str(sr_model), None, "cpu")
    more, _ = evaluate.engine_upscaler(str(sr_model), None, "cpu", level=2, enhance_first=True)
    assert plain(lr, 2).shape == more(lr, 2).shape == (40, 28, 3)
    assert not np.array_equal(plain(lr, 2), more(lr, 2))


def test_family_levels_score_the_pair_as_served(tmp_path, hr_folder):
    """--restore: a row per denoise level; 0 and 1 are exactly the clean and restore models."""
    from tests.helpers.tiny_models import tiny_sr

    clean = tiny_sr(tmp_path / "pair", name="enhancer", seed=1)
    restore = tiny_sr(tmp_path / "pair", name="restore", seed=2)
    methods = {
        "clean": evaluate.engine_upscaler(str(clean), None, "cpu")[0],
        "restore": evaluate.engine_upscaler(str(restore), None, "cpu")[0],
        **evaluate.family_upscalers(str(clean), str(restore), [0.0, 0.5, 1.0], "cpu"),
    }
    assert list(methods)[2:] == ["denoise 0", "denoise 0.5", "denoise 1"]
    (row,) = evaluate.evaluate([str(hr_folder)], [2], methods, ["bicubic"], 0, log=lambda m: None)
    assert row["denoise 0"] == row["clean"] and row["denoise 1"] == row["restore"]
    assert row["denoise 0.5"] not in (row["clean"], row["restore"])


def test_a_native_4x_model_exports_and_scores_beside_the_2x_one(tmp_path):
    """A scale-4 CompactUNet exports with a scale-4 card; ``engine_upscaler(native_path=...)``
    (evaluate.py --native) runs x4 as its one pass, and the checkpoint path agrees."""
    torch.manual_seed(0)
    pts = {}
    for scale in (2, 4):
        model = CompactUNet((8, 16), (1, 1), scale=scale)
        with torch.no_grad():
            model.head.weight.mul_(0.3)
        weights = tmp_path / f"x{scale}.pth"
        torch.save(
            {"model": model.state_dict(), "arch": "compact", "config": model.config()}, weights
        )
        pts[scale] = tmp_path / ("enhancer.pt" if scale == 2 else "enhancer4.pt")
        args = ["--weights", str(weights), "--out", str(pts[scale]), "--tile", "32"]
        assert export.main([*args, "--overlap", "8"]) == 0
    assert json.loads(pts[4].with_suffix(".json").read_text())["scale"] == 4
    lr = Image.fromarray(gradient_image(30, 45))
    two, _ = evaluate.engine_upscaler(str(pts[2]), None, "cpu")
    four, _ = evaluate.engine_upscaler(str(pts[2]), None, "cpu", native_path=str(pts[4]))
    out2, out4 = two(lr, 4), four(lr, 4)
    assert out2.shape == out4.shape == (120, 180, 3)
    assert not np.array_equal(out2, out4)  # another model ran
    assert np.array_equal(two(lr, 2), four(lr, 2))  # below 4: the 2x model alone
    direct = evaluate.direct_upscaler(str(tmp_path / "x4.pth"))(lr, 4)
    assert np.abs(direct[8:-8, 8:-8].astype(float) - out4[8:-8, 8:-8]).max() <= 2
    with pytest.raises(ValueError, match="whole passes"):
        evaluate.direct_upscaler(str(tmp_path / "x4.pth"))(lr, 2)
