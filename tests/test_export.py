"""Export proves its trace: the compact U-Net and a (tiny) fastai DynamicUnet, and a failing case.

Hermetic: tiny models built here, a generated photo for the seam check.
"""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from enhancer.card import ModelCard, file_sha256
from scripts import export
from scripts.model import tracing
from scripts.model.unet import CompactUNet, ContractWrapper, dynamic_unet

# torch 2.13 deprecates TorchScript (trace/load/save); it is still the served format
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:150, 0:200] / 200
    img = np.stack([0.5 + 0.4 * np.sin(9 * x + 4 * y), x, y], -1) + 0.05 * rng.standard_normal(
        (150, 200, 3)
    )
    path = tmp_path / "photo.png"
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def save_compact(path, nf=(8, 16), blocks=(1, 1)):
    torch.manual_seed(0)
    model = CompactUNet(nf, blocks)
    with torch.no_grad():  # a non-trivial head, so parity is tested on real outputs, not bicubic
        model.head.weight.normal_(0, 0.05)
    torch.save(
        {"model": model.state_dict(), "arch": "compact", "config": model.config(), "epoch": 0}, path
    )
    return model.eval()


def test_compact_export_proves_and_writes_card(tmp_path, photo):
    eager = save_compact(tmp_path / "model.pth")
    out = tmp_path / "enhancer.pt"
    rc = export.main(
        [
            "--weights",
            str(tmp_path / "model.pth"),
            "--out",
            str(out),
            "--tile",
            "64",
            "--overlap",
            "auto",
            "--seam-image",
            str(photo),
        ]
    )
    assert rc == 0
    card = ModelCard.load(out.with_suffix(".json"))
    assert card.sha256 == file_sha256(out)
    assert (card.scale, card.multiple, card.tile, card.dynamic) == (2, 2, 64, True)
    context = card.extra["export"]["context"]
    assert context["overlap"] == context["measured_overlap"] == card.overlap > 0
    assert card.blend == context["blend"] == 4
    assert context["check"]["max_abs_tiled_vs_whole"] < 1 / 255
    assert context["max_abs_at_overlap"] <= context["limit"]
    assert context["photos"] == ["photo.png"]
    assert card.extra["params"] == sum(p.numel() for p in eager.parameters())
    traced = torch.jit.load(str(out))
    x = torch.rand(1, 3, 20, 28)  # another size: the compact trace is dynamic
    with torch.no_grad():
        assert torch.allclose(traced(x), eager(x), atol=1e-5)


@pytest.mark.train
def test_dynamic_unet_from_fastai_weights(tmp_path):
    torch.manual_seed(0)
    net = dynamic_unet("tiny", 64)
    # learn.save() layout: {"model": state_dict, "opt": ...}
    torch.save({"model": net.state_dict(), "opt": {}}, tmp_path / "stage2.pth")
    out = tmp_path / "course.pt"
    rc = export.main(
        [
            "--fastai-weights",
            str(tmp_path / "stage2.pth"),
            "--body",
            "tiny",
            "--out",
            str(out),
            "--tile",
            "64",
            "--overlap",
            "8",
        ]
    )
    assert rc == 0
    card = ModelCard.load(out.with_suffix(".json"))
    assert (card.scale, card.multiple, card.tile, card.dynamic) == (1, 32, 64, False)
    eager = ContractWrapper(net.eval()).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = torch.jit.load(str(out))(x)
        assert torch.allclose(got, eager(x), atol=1e-4)
    assert got.shape == x.shape and 0 <= got.min() and got.max() <= 1


class Pairs(list):
    """A list dataset with what learn.export() calls to empty it."""

    def new_empty(self):
        return Pairs()


@pytest.mark.train
@pytest.mark.filterwarnings("ignore:load_learner` uses Python's insecure pickle:UserWarning")
def test_dynamic_unet_from_pickled_learner(tmp_path):
    """A course user's learn.export() pickle, whose loss is the notebook's __main__.FeatureLoss."""
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner

    from scripts.model.feature_loss import FeatureLoss

    pairs = Pairs((torch.rand(3, 64, 64), torch.rand(3, 64, 64)) for _ in range(4))
    dls = DataLoaders(DataLoader(pairs, bs=2), DataLoader(pairs, bs=2))
    m_feat = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)
    )
    learn = Learner(
        dls, dynamic_unet("tiny", 64), loss_func=FeatureLoss(m_feat, [1], [1.0]), path=tmp_path
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.export("export.pkl")
    out = tmp_path / "learner.pt"
    args = [
        "--learner",
        str(tmp_path / "export.pkl"),
        "--out",
        str(out),
        "--tile",
        "64",
        "--overlap",
        "8",
    ]
    assert export.main(args) == 0
    assert ModelCard.load(out.with_suffix(".json")).scale == 1


class ShapeBranch(torch.nn.Module):
    """A model whose Python branch on the input size is frozen by tracing: the trace is wrong
    at other sizes, which export must catch."""

    def forward(self, x):
        y = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        return y if x.shape[-1] == 64 else 1 - y


def test_prove_catches_a_frozen_branch():
    eager = ShapeBranch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(eager, torch.rand(1, 3, 64, 64))
    gen = torch.Generator().manual_seed(0)
    tracing.prove(eager, traced, [(1, 64, 64)], 2, 1e-4, gen)
    with pytest.raises(tracing.ExportError, match="differs"):
        tracing.prove(eager, traced, [(1, 64, 64), (1, 32, 32)], 2, 1e-4, gen)
    with pytest.raises(tracing.ExportError, match="shape"):
        tracing.prove(eager, traced, [(1, 64, 64)], 1, 1e-4, gen)


def test_export_fails_loudly_without_writing(tmp_path, capsys):
    save_compact(tmp_path / "model.pth")
    out = tmp_path / "enhancer.pt"
    rc = export.main(["--weights", str(tmp_path / "model.pth"), "--out", str(out), "--tile", "65"])
    assert rc == 1 and not out.exists()
    assert "EXPORT FAILED" in capsys.readouterr().err
    rc = export.main(
        ["--weights", str(tmp_path / "model.pth"), "--out", str(out), "--overlap", "auto"]
    )
    assert rc == 1 and not out.exists()
    # a seam check that cannot pass (overlap 0 on a model that needs context) writes nothing
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), np.uint8)).save(photo)
    rc = export.main(
        [
            "--weights",
            str(tmp_path / "model.pth"),
            "--out",
            str(out),
            "--tile",
            "32",
            "--overlap",
            "0",
            "--seam-image",
            str(photo),
        ]
    )
    assert rc == 1 and not out.exists() and not out.with_suffix(".json").exists()
    assert list(tmp_path.glob("*.tmp.*")) == []


def test_card_records_training_settings(tmp_path):
    first, second = tmp_path / "stage1", tmp_path / "stage2"
    first.mkdir()
    second.mkdir()
    (first / "args.yaml").write_text("loss: L1\nsteps: 3\nwall_time_s: 10\n")
    save_compact(second / "model.pth")
    init = first / "model.pth"
    (second / "args.yaml").write_text(f"loss: L1\nsteps: 2\nwall_time_s: 5\ninit_weights: {init}\n")
    out = tmp_path / "e.pt"
    args = [
        "--weights",
        str(second / "model.pth"),
        "--out",
        str(out),
        "--tile",
        "32",
        "--overlap",
        "4",
    ]
    assert export.main(args) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    training = data["training"]
    assert training["steps"] == 2 and training["init_from"]["steps"] == 3
    assert training["total_steps"] == 5 and training["total_wall_time_s"] == 15
    assert data["dtypes"][0] == "float32"
