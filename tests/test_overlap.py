"""The overlap tool (scripts/ops/overlap.py) on tiny models whose receptive field is known exactly:
TinySR(depth=d) sees d pixels, so the measured context must be at most d and more than 0, and the
tiles it then checks must agree with the whole image."""

from __future__ import annotations

import json

import pytest
import torch

from enhancer.card import ModelCard
from scripts.ops.overlap import (
    edge_profile,
    measure,
    needed_overlap,
    perturbation_radius,
    tiled_vs_whole,
)
from scripts.overlap import write_card
from tests.helpers.images import photo_array
from tests.helpers.tiny_models import TinySR


def _photo(width: int, height: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(photo_array(width, height, seed)).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(7)
    return TinySR(depth=5, amount=0.5).eval()


def _run(model):
    def run(batch):
        with torch.no_grad():
            return model(batch)

    return run


def test_edge_profile_vanishes_past_the_receptive_field(model):
    profile = edge_profile(
        _run(model), _photo(150, 120, 1), scale=2, multiple=1, window=64, reach=16
    )
    assert profile[0] > 1 / 255  # the edge matters right at it
    assert profile[5:].max() < 1e-5  # and not past 5 pixels (float rounding only)
    assert 0 < needed_overlap([profile], 0.5 / 255) <= 5


def test_perturbation_radius_is_at_most_the_field(model):
    radius = perturbation_radius(_run(model), _photo(90, 90, 2), scale=2, multiple=1, side=48)
    assert 0 <= radius <= 5
    # a model that mixes 2 pixels to each side: the change reaches exactly 2 pixels away
    wide = torch.nn.Conv2d(3, 12, 5, padding=2, bias=False)
    torch.nn.init.constant_(wide.weight, 0.05)
    shuffle = torch.nn.PixelShuffle(2)

    def run(batch):
        with torch.no_grad():
            return shuffle(wide(batch))

    assert perturbation_radius(run, _photo(90, 90, 2), scale=2, multiple=1, side=48) == 2


def test_measure_picks_the_worst_photo_and_checks_it(model):
    photos = [(f"p{i}.png", _photo(130 + 7 * i, 90 + 5 * i, i)) for i in range(3)]
    record = measure(
        _run(model), photos, scale=2, multiple=1, blend=2, window=64, reach=16, log=lambda _: None
    )
    assert 0 < record["overlap"] == record["measured_overlap"] <= 5
    assert record["check"]["photos"] == 3
    # the overlap is where the edge's effect falls under 0.5/255, not where it is exactly 0
    assert record["check"]["max_abs_tiled_vs_whole"] < 1 / 255
    assert record["photos"] == ["p0.png", "p1.png", "p2.png"]
    # with the whole field (5) the check is exact up to float rounding
    exact = measure(
        _run(model),
        photos,
        scale=2,
        multiple=1,
        blend=2,
        window=64,
        reach=16,
        overlap=5,
        log=lambda _: None,
    )
    assert exact["overlap"] == 5 and exact["check"]["max_abs_tiled_vs_whole"] < 1e-5


def test_too_little_overlap_is_refused(model):
    photos = [("p.png", _photo(130, 90, 4))]
    error = tiled_vs_whole(
        _run(model), photos[0][1], scale=2, multiple=1, overlap=1, blend=0, tile=40, reach=16
    )
    assert error > 1 / 255
    with pytest.raises(ValueError, match="differ from the whole image"):
        measure(
            _run(model),
            photos,
            scale=2,
            multiple=1,
            blend=0,
            overlap=1,
            tile=40,
            reach=16,
            window=64,
            log=lambda _: None,
        )


def test_write_card_sets_overlap_blend_and_keeps_the_digest(tmp_path):
    card = {
        "name": "tiny",
        "version": "1",
        "scale": 2,
        "multiple": 1,
        "tile": 64,
        "overlap": 2,
        "dtypes": ["float32"],
        "sha256": "ab" * 32,
        "dynamic": True,
        "export": {"seam": {"overlap": 2}},
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(card))
    write_card(path, {"overlap": 5, "blend": 2, "check": {"max_abs_tiled_vs_whole": 0.0}})
    written = ModelCard.load(path)
    assert (written.overlap, written.blend, written.sha256) == (5, 2, "ab" * 32)
    data = json.loads(path.read_text())
    assert "seam" not in data["export"] and data["export"]["context"]["overlap"] == 5
    with pytest.raises(ValueError, match="overlap"):
        write_card(path, {"overlap": 30, "blend": 2})  # 3 x 30 >= tile 64: the card refuses
