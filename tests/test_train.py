"""Training on generated images: a tiny model of each architecture learns, a stopped and resumed run
equals an uninterrupted one bit for bit, the pixel budget sets the plan, crops pack into one file,
and re-parameterised convs fold into plain ones.

Runs scripts/train.py as a user would (a subprocess), on a folder of images made here.
"""

import csv
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


def train(out: Path, data: Path, *extra: str, ok: bool = True) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--out", str(out),
        "--data", str(data),
        "--val", str(data / "0.png"), str(data / "1.png"),
        "--bs", "4",
        "--log-every", "100",
        "--threads", "2",
        *extra,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    if not ok:
        assert done.returncode != 0
        return {"stderr": done.stdout + done.stderr}
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return yaml.safe_load((out / "args.yaml").read_text())


def curve(out: Path) -> list[dict]:
    with open(out / "curve.csv", newline="") as f:
        return list(csv.DictReader(f))


TINY = ["--nf", "8,16", "--blocks", "1,1", "--precision", "fp32"]


def test_compact_unet_learns(tmp_path, photos):
    # fp32 here: bf16 autocast is only picked on CPUs that have it, and must not change the test
    settings = train(
        tmp_path, photos, *TINY, "--epochs", "4", "--iters", "8", "--sizes", "16,24",
        "--lr", "3e-3", "--val-every", "8",
    )  # fmt: skip
    psnrs = [row[3] for row in settings["history"]]  # Y-PSNR on the two held images per 8 steps
    assert len(psnrs) == 5 and psnrs[-1] > psnrs[0] + 1, psnrs
    assert settings["model_config"] == {"nf": [8, 16], "blocks": [1, 1], "scale": 2}
    assert settings["steps"] == 32 and settings["sizes"] == [16, 24]
    # progressive resizing by budget share: 2 epochs at 16 (32 px HR crops), 2 at 24 (48 px)
    assert settings["pixels"] == 16 * 4 * (32**2 + 48**2)
    assert settings["degradation"]["p_clean"] == 0.5
    rows = curve(tmp_path)
    assert [int(r["steps"]) for r in rows] == [0, 8, 16, 24, 32]
    assert all(float(r["cpu_s"]) >= 0 for r in rows) and float(rows[-1]["cpu_s"]) > 0
    ckpt = torch.load(tmp_path / "model.pth", weights_only=False)
    assert ckpt["arch"] == "compact" and (tmp_path / "ckpt.pth").exists()

    from scripts.model.unet import load_trained

    model = load_trained(str(tmp_path / "model.pth"))
    out = model(torch.rand(1, 3, 8, 12))
    assert out.shape == (1, 3, 16, 24) and 0 <= out.min() and out.max() <= 1


def test_dynamic_unet_learns(tmp_path, photos):
    settings = train(
        tmp_path, photos, "--arch", "dynamic_unet", "--body", "tiny", "--factor", "2",
        "--epochs", "4", "--iters", "8", "--sizes", "32", "--lr", "3e-3", "--precision", "fp32",
        "--val-every", "16",
    )  # fmt: skip
    psnrs = [row[3] for row in settings["history"]]
    assert psnrs[-1] > psnrs[0], psnrs
    assert settings["model_config"]["body"] == "tiny"
    assert torch.load(tmp_path / "model.pth", weights_only=False)["arch"] == "dynamic_unet"


def test_stopped_and_resumed_equals_uninterrupted(tmp_path, photos):
    # re-parameterised convs, progressive sizes, degraded pairs, bf16: what the long run uses
    common = [
        *TINY, "--epochs", "3", "--iters", "3", "--sizes", "16,24", "--val-every", "2",
        "--schedule", "flat-cos", "--p-clean", "0.5", "--rep", "--precision", "bf16",
    ]  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(whole, photos, *common)
    # stopped after the first epoch's checkpoint, then resumed twice over (once more than needed)
    train(parts, photos, *common, "--stop-after", "2")
    assert torch.load(parts / "ckpt.pth", weights_only=False)["steps"] == 3
    assert not (parts / "model.pth").exists()
    # the compact copy committed to the repository (Adam moments in bf16) resumes closely
    compact = tmp_path / "compact"
    compact.mkdir()
    from scripts.checkpoint import atomic_save
    from scripts.checkpoint import compact as compact_ckpt

    small = compact_ckpt(torch.load(parts / "ckpt.pth", weights_only=False))
    assert small["opt"]["state"][0]["sqr_avg"].dtype == torch.bfloat16
    atomic_save(small, compact / "ckpt.pth")
    (compact / "curve.csv").write_text((parts / "curve.csv").read_text())
    train(parts, photos, *common, "--resume", "--stop-after", "6")
    assert torch.load(parts / "ckpt.pth", weights_only=False)["epoch"] == 1
    # as if killed mid-epoch: a curve point written after the checkpoint is dropped on resume
    with open(parts / "curve.csv", "a") as f:
        f.write("99999,7,2,1.0,1.0,0.5,1e-4,10.0,10.0\n")
    train(parts, photos, *common, "--resume")
    train(compact, photos, *common, "--resume")
    a = torch.load(whole / "model.pth", weights_only=False)
    b = torch.load(parts / "model.pth", weights_only=False)
    c = torch.load(compact / "model.pth", weights_only=False)
    for k in a["model"]:
        assert torch.allclose(a["model"][k], c["model"][k], atol=3e-4), k
    c_opt = torch.load(compact / "ckpt.pth", weights_only=False)["opt"]["state"]
    assert c_opt[0]["sqr_avg"].dtype == torch.float32
    assert a["steps"] == b["steps"] == 9 and a["pixels"] == b["pixels"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    oa = torch.load(whole / "ckpt.pth", weights_only=False)["opt"]["state"]
    ob = torch.load(parts / "ckpt.pth", weights_only=False)["opt"]["state"]
    for sa, sb in zip(oa, ob, strict=True):
        for k in sa:
            va, vb = sa[k], sb[k]
            assert torch.equal(va, vb) if torch.is_tensor(va) else va == vb, k
    keys = ("pixels", "steps", "epoch", "train_loss", "lr", "val_psnr")
    assert [[r[k] for k in keys] for r in curve(whole)] == [
        [r[k] for k in keys] for r in curve(parts)
    ]


def test_budget_sets_the_plan_and_resume_checks_settings(tmp_path, photos):
    # 4 pairs of 32x32 HR pixels a step, 2 steps an epoch: 8192 px; 20000 px need 3 epochs
    settings = train(
        tmp_path, photos, *TINY, "--budget-gpx", "0.00002", "--iters", "2", "--sizes", "16",
        "--val-every", "100",
    )  # fmt: skip
    assert settings["planned_epochs"] == 3 and settings["pixels"] == 3 * 8192
    assert settings["budget_pixels"] == 20000
    # a changed schedule cannot pass as a resume of this run
    failed = train(
        tmp_path, photos, *TINY, "--budget-gpx", "0.00002", "--iters", "2", "--sizes", "16",
        "--lr", "1e-3", "--resume", ok=False,
    )  # fmt: skip
    assert "other settings" in failed["stderr"] and "lr" in failed["stderr"]


def test_packed_crops_and_second_order_pairs(tmp_path, photos):
    packed = tmp_path / "crops.npy"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pack_data.py"), "--data", str(photos),
         "--out", str(packed), "--side", "64", "--max-mib", "0.5"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    crops = np.load(packed)
    assert packed.stat().st_size <= 0.5 * (1 << 20)
    assert crops.dtype == np.uint8 and crops.shape[1:] == (64, 64, 3) and len(crops) >= 8
    from scripts.pack_data import pack

    images = [np.asarray(Image.open(p)) for p in sorted(photos.glob("*.png"))]
    assert np.array_equal(pack(images, 64, 100_000, seed=3), pack(images, 64, 100_000, seed=3))
    settings = train(
        tmp_path / "run", photos, *TINY, "--pack", str(packed), "--epochs", "2", "--iters", "2",
        "--sizes", "16", "--val-every", "4", "--second-order", "--degrade", "jpeg_quality=20,40",
    )  # fmt: skip
    assert settings["steps"] == 4 and settings["pack"] == str(packed)
    # the restore model's mix: the second-order model, no clean pairs unless asked
    assert settings["degradation"]["p_final_sinc"] == 0.8 and settings["p_clean"] == 0.0
    assert settings["degradation"]["jpeg_quality"] == [20, 40]


def test_warm_start_from_a_checkpoint_and_the_curve_on_a_degraded_track(tmp_path, photos):
    """The restore run's start (scripts/train_run.sh restore): the clean run's checkpoint reduced
    to its weights, a new run initialised from them, its curve on evaluate.py's real-world track."""
    common = [*TINY, "--epochs", "1", "--iters", "2", "--sizes", "16", "--val-every", "2"]
    train(tmp_path / "clean", photos, *common)
    init = tmp_path / "init.pth"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "checkpoint.py"), "weights",
         str(tmp_path / "clean" / "ckpt.pth"), str(init)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    weights = torch.load(init, weights_only=True)  # plain tensors: no pickled objects
    assert weights["steps"] == 2 and set(weights["model"]) == set(
        torch.load(tmp_path / "clean" / "ckpt.pth", weights_only=False)["model"]
    )
    # the same weights score the same on the same (bicubic) curve: the warm start is exact
    same = tmp_path / "same"
    train(same, photos, *common, "--init-weights", str(init))
    assert curve(same)[0]["val_psnr"] == curve(tmp_path / "clean")[-1]["val_psnr"]
    # the real-world track degrades the curve's inputs: the same weights score lower there
    real = tmp_path / "real"
    settings = train(
        real, photos, *common, "--init-weights", str(init), "--val-track", "real_world"
    )
    assert settings["val_track"] == "real_world"
    assert float(curve(real)[0]["val_psnr"]) < float(curve(same)[0]["val_psnr"]) - 0.5


def test_rep_convs_fold_into_plain_convs():
    from scripts.model.unet import CompactUNet, build_model

    torch.manual_seed(0)
    model = CompactUNet((8, 16, 32), (2, 1, 2), rep=True, dec_blocks=(3, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    x = torch.rand(2, 3, 16, 24)
    before = model(x)
    cfg = model.config()
    assert cfg == {"nf": [8, 16, 32], "blocks": [2, 1, 2], "scale": 2, "rep": True,
                   "dec_blocks": [3, 1]}  # fmt: skip
    model.fuse()
    assert torch.allclose(model(x), before, atol=1e-5)
    assert not any(type(m).__name__ == "RepConv" for m in model.modules())
    # the folded weights load into the plain architecture of the same shape
    plain = build_model("compact", {**cfg, "rep": False}).eval()
    plain.load_state_dict(model.state_dict())
    assert torch.allclose(plain(x), before, atol=1e-5)


def test_a_4x_model_starts_as_the_2x_model_and_fine_tunes(tmp_path, photos):
    """The native 4x model (issue 13): a scale-4 CompactUNet initialised from a 2x run's
    checkpoint (re-parameterised convs folded, the 2x head spread over the 4x sub-pixels) starts
    as bicubic 4x plus the 2x model's residual, nearest-upsampled; train.py fine-tunes it on x4
    pairs with its curve at x4."""
    import torch.nn.functional as F

    from scripts.model.unet import CompactUNet, init_weights

    torch.manual_seed(0)
    two = CompactUNet((8, 16), (1, 1), rep=True)
    with torch.no_grad():
        for q in two.parameters():
            q.add_(0.05 * torch.randn_like(q))
    ckpt = tmp_path / "x2.pth"
    torch.save({"model": two.state_dict(), "arch": "compact", "config": two.config()}, ckpt)
    four = CompactUNet((8, 16), (1, 1), scale=4)
    assert init_weights(four, str(ckpt)) == ([], [])
    two.train(), four.train()  # no clamp: the identity is exact
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        residual = two(x) - F.interpolate(x, scale_factor=2.0, mode="bicubic")
        expected = F.interpolate(x, scale_factor=4.0, mode="bicubic") + F.interpolate(
            residual, scale_factor=2.0, mode="nearest"
        )
        assert torch.allclose(four(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="2x or 4x"):
        CompactUNet((8, 16), (1, 1), scale=3)

    settings = train(
        tmp_path / "x4", photos, "--nf", "8,16", "--blocks", "1,1", "--precision", "fp32",
        "--scale", "4", "--factor", "4", "--init-weights", str(ckpt), "--epochs", "1",
        "--iters", "2", "--sizes", "12", "--val-every", "2",
    )  # fmt: skip
    assert settings["model_config"] == {"nf": [8, 16], "blocks": [1, 1], "scale": 4}
    assert settings["pixels"] == 2 * 4 * 48**2  # HR crops of 4 x 12
    rows = curve(tmp_path / "x4")
    assert [int(r["steps"]) for r in rows] == [0, 2]
    trained = torch.load(tmp_path / "x4" / "model.pth", weights_only=True)
    assert trained["model"]["head.weight"].shape[0] == 48
    # a 4x model needs 4x pairs
    out = train(tmp_path / "bad", photos, *TINY, "--scale", "4", "--epochs", "1", ok=False)
    assert "--factor 4" in out["stderr"]


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
