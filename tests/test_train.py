"""A tiny model of each architecture trains a few steps on generated images, and its loss falls.

Runs scripts/train.py as a user would (a subprocess), on a folder of images made here.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Eight smooth, photo-like images with edges: learnable in a few steps."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k in range(8):
        y, x = np.mgrid[0:96, 0:96] / 96
        f = rng.uniform(2, 6, 3)
        img = np.stack([0.5 + 0.4 * np.sin(f[c] * x + (c + 1) * y + k) for c in range(3)], -1)
        img[20:50, 30:70] = rng.random(3)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{k}.png")
    return folder


def train(out: Path, data: Path, *extra: str) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--out",
        str(out),
        "--data",
        str(data),
        "--valid-n",
        "4",
        "--bs",
        "4",
        "--log-every",
        "100",
        "--threads",
        "2",
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return yaml.safe_load((out / "args.yaml").read_text())


def test_compact_unet_learns(tmp_path, photos):
    # fp32 here: bf16 autocast is only picked on CPUs that have it, and must not change the test
    settings = train(
        tmp_path,
        photos,
        "--nf",
        "8,16",
        "--blocks",
        "1,1",
        "--epochs",
        "4",
        "--iters",
        "8",
        "--sizes",
        "16,24",
        "--lr",
        "3e-3",
        "--precision",
        "fp32",
    )
    losses = [row[1] for row in settings["history"]]  # validation loss per epoch (fixed pairs)
    assert losses[-1] < losses[0], losses
    assert settings["model_config"] == {"nf": [8, 16], "blocks": [1, 1], "scale": 2}
    assert settings["steps"] == 32 and settings["sizes"] == [16, 24]
    assert settings["degradation"]["p_clean"] == 0.5
    ckpt = torch.load(tmp_path / "model.pth", weights_only=False)
    assert ckpt["arch"] == "compact" and (tmp_path / "ckpt.pth").exists()

    from scripts.model.unet import load_trained

    model = load_trained(str(tmp_path / "model.pth"))
    out = model(torch.rand(1, 3, 8, 12))
    assert out.shape == (1, 3, 16, 24) and 0 <= out.min() and out.max() <= 1


def test_dynamic_unet_learns(tmp_path, photos):
    settings = train(
        tmp_path,
        photos,
        "--arch",
        "dynamic_unet",
        "--body",
        "tiny",
        "--factor",
        "2",
        "--epochs",
        "4",
        "--iters",
        "8",
        "--sizes",
        "32",
        "--lr",
        "3e-3",
        "--precision",
        "fp32",
    )
    losses = [row[1] for row in settings["history"]]
    assert losses[-1] < losses[0], losses
    assert settings["model_config"]["body"] == "tiny"
    assert torch.load(tmp_path / "model.pth", weights_only=False)["arch"] == "dynamic_unet"


def test_resume_continues(tmp_path, photos):
    common = [
        "--nf",
        "8,16",
        "--blocks",
        "1,1",
        "--iters",
        "2",
        "--sizes",
        "16",
        "--precision",
        "fp32",
    ]
    train(tmp_path, photos, *common, "--epochs", "1")
    first = torch.load(tmp_path / "ckpt.pth", weights_only=False)
    assert first["epoch"] == 0
    # the same run extended to 2 epochs picks up at epoch 1 with the saved optimizer state
    train(tmp_path, photos, *common, "--epochs", "2", "--resume")
    assert torch.load(tmp_path / "ckpt.pth", weights_only=False)["epoch"] == 1


def test_feature_loss_terms_and_hooks():
    """The course's feature loss on a small VGG-shaped extractor (VGG weights are the user's)."""
    from scripts.model.feature_loss import FeatureLoss, PixelFreqLoss, gram_matrix, pool_block_ends

    torch.manual_seed(0)
    m_feat = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    )  # fmt: skip
    ids = pool_block_ends(m_feat)
    assert ids == [1, 4]
    loss = FeatureLoss(m_feat, ids, [5.0, 15.0])
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert loss(y, y).item() == pytest.approx(0.0, abs=1e-7)
    pred = x.clone().requires_grad_()
    value = loss(pred, y)
    assert set(loss.metrics) == {"pixel", "feat_0", "feat_1", "gram_0", "gram_1"}
    assert value.item() == pytest.approx(sum(v.item() for v in loss.metrics.values()), rel=1e-5)
    value.backward()
    assert pred.grad.abs().sum() > 0 and all(p.grad is None for p in m_feat.parameters())
    g = gram_matrix(torch.ones(1, 2, 3, 3))
    assert g.shape == (1, 2, 2) and torch.allclose(g, torch.full((1, 2, 2), 0.5))
    loss.remove()
    assert all(not m._forward_hooks for m in m_feat)
    # the default loss: L1 plus the frequency term, zero only when equal
    pf = PixelFreqLoss(0.05)
    assert pf(y, y).item() == 0 and pf(x, y).item() > torch.nn.functional.l1_loss(x, y).item()
