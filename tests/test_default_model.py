"""The shipped default model: its card matches the .pt, the server accepts the card, and the
model runs on a small image (no fastai, no torchvision: what the server has)."""

import json
from pathlib import Path

import pytest
import torch

from enhancer.card import ModelCard, file_sha256

STORE = Path(__file__).resolve().parents[1] / "model_store"
MODEL, CARD = STORE / "enhancer.pt", STORE / "enhancer.json"

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return ModelCard.load(CARD)


@pytest.fixture(scope="module")
def model():
    return torch.jit.load(str(MODEL), map_location="cpu").eval()


def test_card_matches_the_model_file(card):
    assert card.sha256 == file_sha256(MODEL)
    card.verify(MODEL)


def test_size_limit_and_card_contents(card):
    assert MODEL.stat().st_size <= 20 * 1024 * 1024
    data = json.loads(CARD.read_text())
    assert data["params"] > 0 and data["arch"]["name"] == "compact"
    training = data["training"]
    assert {"degradation", "steps", "loss", "wall_time_s", "machine", "command"} <= set(training)
    quality = data["quality"]
    sets = {(r["track"], r["set"], r["scale"]) for r in quality["results"]}
    assert {
        ("bicubic", "set5", 2),
        ("bicubic", "set14", 2),
        ("bicubic", "set5", 4),
        ("real_world", "b100", 2),
        ("real_world", "kodak24", 2),
    } <= sets
    assert "scripts/evaluate.py" in quality["command"]


@pytest.mark.parametrize("name", ["enhancer", "restore"])
def test_cards_record_the_measured_context(name):
    """Both shipped cards carry the overlap scripts/overlap.py measured on real photos, and the
    check that tiles through the planner stayed within 1/255 of whole-image runs."""
    data = json.loads((STORE / f"{name}.json").read_text())
    card = ModelCard.from_dict(data)
    context = data["export"]["context"]
    assert card.overlap == context["overlap"] >= context["measured_overlap"] > 0
    assert card.blend == context["blend"]
    assert context["max_abs_at_overlap"] <= context["limit"] <= 1 / 255
    assert context["check"]["max_abs_tiled_vs_whole"] < 1 / 255
    assert len(context["photos"]) >= 10 and context["check"]["photos"] >= 1
    assert "seam" not in data["export"]  # the one-photo check it replaced


@pytest.mark.parametrize("name", ["enhancer", "restore"])
@pytest.mark.parametrize("scale", [2.0, 4.0])
@pytest.mark.parametrize("size", [(1152, 864), (2304, 1728)])
def test_tiling_overhead_at_1_and_4_mp(name, scale, size):
    """Model pixels per output pixel with the card's overlap and blend at the tile the CPU
    backend serves with (settings.openvino_tile): at most 1.15."""
    from enhancer.admission import model_overhead
    from enhancer.settings import EnhancerSettings

    card = ModelCard.load(STORE / f"{name}.json")
    tile = max(card.tile, EnhancerSettings().openvino_tile)
    assert model_overhead(*size, scale, card, tile) <= 1.15


@pytest.mark.parametrize("size", [(1, 3, 24, 40), (2, 3, 16, 16)])
def test_runs_on_a_small_image(card, model, size):
    n, c, h, w = size
    # a dynamic model takes any multiple of `multiple`; others only `tile`
    if not card.dynamic:
        h = w = card.tile
    h, w = -(-h // card.multiple) * card.multiple, -(-w // card.multiple) * card.multiple
    x = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (n, 3, card.scale * h, card.scale * w)
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_improves_on_bicubic_for_a_blurred_image(card, model):
    """A smoke check of the weights (not the quality table): on a smooth synthetic photo, the
    model's 2x is closer to the original than the bicubic 2x of its downscale."""
    h = w = 64
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 2 * h), torch.linspace(0, 1, 2 * w), indexing="ij")
    hr = torch.stack([0.5 + 0.4 * torch.sin(12 * xx + 3 * yy), 0.5 + 0.4 * torch.cos(9 * yy), xx])[
        None
    ]
    hr = (hr * 0.8 + 0.1).clamp(0, 1)
    lr = torch.nn.functional.interpolate(hr, scale_factor=0.5, mode="bicubic", antialias=True)
    with torch.no_grad():
        sr = model(lr)
    bic = torch.nn.functional.interpolate(lr, scale_factor=2.0, mode="bicubic").clamp(0, 1)
    crop = (..., slice(8, -8), slice(8, -8))
    assert (sr - hr)[crop].pow(2).mean() < (bic - hr)[crop].pow(2).mean()


def test_the_native_4x_model_ships_with_its_measured_context():
    """model_store/enhancer4.pt (README, "The native 4x model"): its card matches it, says scale 4
    on the 2x model's grid, carries the overlap measured on photos, and the model runs."""
    from enhancer.admission import model_overhead
    from enhancer.settings import EnhancerSettings

    native = STORE / "enhancer4.pt"
    data = json.loads(native.with_suffix(".json").read_text())
    card = ModelCard.from_dict(data)
    card.verify(native)
    assert native.stat().st_size <= 20 * 1024 * 1024
    assert card.scale == 4 and card.multiple == ModelCard.load(CARD).multiple and card.dynamic
    context = data["export"]["context"]
    assert card.overlap == context["overlap"] >= context["measured_overlap"] > 0
    assert context["check"]["max_abs_tiled_vs_whole"] < 1 / 255
    tile = max(card.tile, EnhancerSettings().openvino_tile)
    assert model_overhead(2304, 1728, 4.0, card, tile) <= 1.2
    module = torch.jit.load(str(native), map_location="cpu").eval()
    with torch.no_grad():
        y = module(torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0)))
    assert y.shape == (1, 3, 96, 160) and torch.isfinite(y).all()
    assert 0 <= y.min() and y.max() <= 1
