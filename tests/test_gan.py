"""NoGAN sharpening (scripts/model/gan.py, scripts/train_gan.py) on tiny models and generated
images: the patch critic's output map, one adversarial step that moves the generator and returns
finite losses, and a stopped-and-resumed run that ends where an uninterrupted one does."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scripts import train_gan
from scripts.model.feature_loss import PixelFreqLoss
from scripts.model.gan import GanWeights, PatchCritic, critic_step, gan_step
from scripts.model.unet import build_model

TINY = {"nf": [8, 16], "blocks": [1, 1], "scale": 2}


@pytest.fixture()
def gen() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("compact", TINY)


def batch(n: int = 2, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(n, 3, 2 * side, 2 * side, generator=g)
    lr = torch.nn.functional.avg_pool2d(hr, 2)
    return lr, hr


@pytest.mark.parametrize("side", [32, 48, 64])
def test_critic_scores_patches(side):
    torch.manual_seed(0)
    critic = PatchCritic((8, 16, 32))
    x = torch.rand(2, 3, side, side)
    logits, feats = critic(x, features=True)
    assert logits.shape == (2, 1, side // 8, side // 8)  # one logit per patch
    assert [f.shape[1] for f in feats] == [8, 16, 32]
    assert torch.isfinite(logits).all()
    # every conv is spectrally normalised
    convs = [m for m in critic.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)


def test_critic_step_learns_to_separate(gen):
    torch.manual_seed(0)
    critic = PatchCritic((8, 16))
    opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.99))
    lr, hr = batch()
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    losses = [critic_step(gen, critic, opt_d, lr, hr) for _ in range(15)]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]  # the hinge loss falls from 2 (chance)
    # the generator is frozen while the critic pretrains
    assert all(torch.equal(before[k], v) for k, v in gen.state_dict().items())


@pytest.mark.parametrize("fm", [0.0, 0.1])
def test_one_adversarial_step(gen, fm):
    torch.manual_seed(0)
    critic = PatchCritic((8, 16))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.99))
    g_before = [p.detach().clone() for p in gen.parameters()]
    d_before = [p.detach().clone() for p in critic.parameters()]
    lr, hr = batch()
    out = gan_step(gen, critic, opt_g, opt_d, lr, hr, PixelFreqLoss(0.05), GanWeights(1.0, 0.1, fm))
    assert set(out) == {"g_loss", "g_pix", "g_adv", "g_fm", "d_loss"}
    assert all(np.isfinite(v) for v in out.values())
    assert (out["g_fm"] > 0) == (fm > 0)
    assert any(not torch.equal(a, b) for a, b in zip(g_before, gen.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, critic.parameters(), strict=True))
    assert all(p.requires_grad for p in critic.parameters())  # given back after the G update


def test_adversarial_loss_reaches_generator(gen):
    """With the pixel loss off, the generator's gradient comes from the critic alone."""
    critic = PatchCritic((8, 16))
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.0)
    opt_d = torch.optim.SGD(critic.parameters(), lr=0.0)
    lr, hr = batch()
    gan_step(gen, critic, opt_g, opt_d, lr, hr, PixelFreqLoss(0.0), GanWeights(0.0, 1.0, 0.0))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k in range(4):
        y, x = np.mgrid[0:64, 0:64] / 64
        img = np.stack([0.5 + 0.4 * np.sin((c + 2) * x + (k + 1) * y) for c in range(3)], -1)
        img[10:30, 20:40] = rng.random(3)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{k}.png")
    return folder


def run(out: Path, init: Path, photos: Path, *extra: str) -> int:
    return train_gan.main(
        [
            "--init", str(init), "--out", str(out), "--data", str(photos), "--val", "none",
            "--critic-steps", "3", "--gan-steps", "4", "--bs", "2", "--size", "16",
            "--critic-nf", "8,16", "--lr-g", "1e-3", "--lr-d", "1e-3", "--adv", "0.1",
            "--fm", "0.1", "--log-every", "1", "--keep-every", "2", "--ckpt-every", "2", *extra,
        ]
    )  # fmt: skip


def test_resume_equals_uninterrupted(gen, photos, tmp_path):
    init = tmp_path / "init.pth"
    torch.save({"model": gen.state_dict(), "arch": "compact", "config": TINY}, init)
    assert run(tmp_path / "whole", init, photos) == 0
    # stopped at the first checkpoint (step 2, in the critic phase), then resumed twice over
    assert run(tmp_path / "parts", init, photos, "--max-minutes", "1e-9") == 0
    state = torch.load(tmp_path / "parts" / "ckpt.pth", weights_only=False)
    assert state["step"] == 2 and not (tmp_path / "parts" / "model.pth").exists()
    assert run(tmp_path / "parts", init, photos, "--resume", "--max-minutes", "1e-9") == 0
    assert torch.load(tmp_path / "parts" / "ckpt.pth", weights_only=False)["step"] == 4
    assert run(tmp_path / "parts", init, photos, "--resume") == 0
    whole = torch.load(tmp_path / "whole" / "model.pth", weights_only=False)
    parts = torch.load(tmp_path / "parts" / "model.pth", weights_only=False)
    assert whole["steps"] == parts["steps"] == 7
    for k, v in whole["model"].items():
        torch.testing.assert_close(parts["model"][k], v, rtol=0, atol=1e-6)
    assert not all(torch.equal(gen.state_dict()[k], v) for k, v in whole["model"].items())
    # generator snapshots in train.py's model.pth form (what scripts/export.py --weights takes)
    snaps = sorted(p.name for p in (tmp_path / "whole").glob("gen_*.pth"))
    assert snaps == ["gen_00005.pth", "gen_00007.pth"]
    snap = torch.load(tmp_path / "whole" / snaps[0], weights_only=False)
    assert snap["arch"] == "compact" and snap["config"] == TINY
    log = (tmp_path / "whole" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,phase") and len(log) == 8


def test_lq_sheets_without_originals(photos, tmp_path):
    """evaluate.py --lq: one sheet per photo (bicubic | each method), no original needed."""
    from scripts.model.evaluation import lq_sheets

    def double(lr, scale):
        return np.asarray(lr.resize((lr.width * scale, lr.height * scale), Image.NEAREST))

    written = lq_sheets([str(photos)], {"a": double, "b": double}, 2, str(tmp_path), log=str)
    assert [p.name for p in written] == [f"lq_{photos.name}_x2_{k}.png" for k in range(4)]
    sheet = Image.open(written[0])
    assert sheet.width >= 3 * 360  # three columns: bicubic, a, b
