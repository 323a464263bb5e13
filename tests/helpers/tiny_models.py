"""Tiny TorchScript models and cards made in code, for tests that must not need trained weights.

``TinySR`` is a scale-2 model (nearest 2x plus a small residual through a PixelShuffle head; with
``scale=4``, a 4x one, as a Real-ESRGAN export's card says),
``TinyRestore`` a scale-1 one (identity plus a residual). Their receptive field is exactly ``depth``
pixels (``depth`` 3x3 convolutions), so a card with ``overlap >= depth`` makes tiling exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from enhancer.card import file_sha256


def _body(depth: int, width: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    layers.append(nn.Conv2d(width, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


class TinySR(nn.Module):
    """Scale 2 (or ``scale``): nearest-neighbour upscaling plus ``amount`` * tanh(residual)."""

    def __init__(self, depth: int = 3, width: int = 8, amount: float = 0.1, scale: int = 2):
        super().__init__()
        self.body = _body(depth, width, 3 * scale * scale)
        self.shuffle = nn.PixelShuffle(scale)
        self.amount = amount
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return base + self.amount * torch.tanh(self.shuffle(self.body(x)))


class TinyRestore(nn.Module):
    """Scale 1: identity plus ``amount`` * tanh(residual)."""

    def __init__(self, depth: int = 3, width: int = 8, amount: float = 0.1):
        super().__init__()
        self.body = _body(depth, width, 3)
        self.amount = amount

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.amount * torch.tanh(self.body(x))


class Overflow(nn.Module):
    """Scale 2; finite in float32 but inf/NaN in float16 (an intermediate exceeds 65504)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x * 1e5 + 1e5
        return F.interpolate(big / 1e5 - 1.0, scale_factor=2.0, mode="nearest")


def save_model(
    directory: Path,
    module: nn.Module,
    *,
    name: str = "enhancer",
    scale: int = 2,
    tile: int = 32,
    overlap: int = 4,
    multiple: int = 1,
    dynamic: bool = True,
    dtypes: tuple[str, ...] = ("float32",),
    seed: int = 0,
) -> Path:
    """Trace ``module`` at the tile shape, save ``<name>.pt`` and its card; return the .pt path."""
    torch.manual_seed(seed)
    module = module.eval()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pt"
    with torch.no_grad():
        traced = torch.jit.trace(module, torch.rand(1, 3, tile, tile))
    torch.jit.save(traced, str(path))
    card = {
        "name": name,
        "version": "test",
        "scale": scale,
        "multiple": multiple,
        "tile": tile,
        "overlap": overlap,
        "dtypes": list(dtypes),
        "sha256": file_sha256(path),
        "dynamic": dynamic,
        "training": {"note": "random weights, for tests"},
    }
    path.with_suffix(".json").write_text(json.dumps(card, indent=2))
    return path


def tiny_sr(directory: Path, **card) -> Path:
    """A seeded TinySR saved with its card (scale 2, tile 32, overlap 4 unless overridden)."""
    torch.manual_seed(card.pop("seed", 0))
    return save_model(directory, TinySR(depth=card.pop("depth", 3)), scale=2, **card)


def tiny_sr4(directory: Path, **card) -> Path:
    """A seeded 4x TinySR saved with its card (scale 4, tile 32, overlap 4 unless overridden)."""
    torch.manual_seed(card.pop("seed", 0))
    module = TinySR(depth=card.pop("depth", 3), scale=4)
    return save_model(directory, module, scale=4, **card)


def tiny_restore(directory: Path, **card) -> Path:
    """A seeded TinyRestore saved with its card (scale 1)."""
    torch.manual_seed(card.pop("seed", 0))
    return save_model(directory, TinyRestore(depth=card.pop("depth", 3)), scale=1, **card)


def slow_sr(directory: Path, *, depth: int = 8, width: int = 64, **card) -> Path:
    """A TinySR made deliberately costly (``depth`` convolutions ``width`` channels wide: about
    ``9 * depth * width**2`` multiply-adds per pixel), a stand-in for a real model's speed."""
    torch.manual_seed(card.pop("seed", 0))
    module = TinySR(depth=depth, width=width)
    return save_model(directory, module, scale=2, **{"tile": 128, "overlap": 8, **card})
