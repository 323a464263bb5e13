"""Operations on float planes: luma, resizing, and filling transparent pixels."""

from __future__ import annotations

import torch


def luma(color: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of (3, H, W) RGB, as (1, H, W)."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=color.dtype, device=color.device)
    return (color * weights[:, None, None]).sum(0, keepdim=True)


def resize(planes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of (C, H, W) to (width, height) = ``size``; antialiased, clamped to [0, 1]."""
    if (planes.shape[2], planes.shape[1]) == size:
        return planes
    out = torch.nn.functional.interpolate(
        planes[None].float(),
        size=(size[1], size[0]),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )[0]
    return out.clamp_(0.0, 1.0)


def fill_transparent(color: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Give fully transparent pixels the colour of their visible neighbourhood (push-pull).

    Their RGB is invisible but arbitrary (often black or white); left as is, the model and the
    resize would smear it into visible edges as a halo. Colours are averaged premultiplied by alpha
    over a pyramid, so only visible pixels contribute; each hole takes the finest level's estimate.
    """
    if bool((alpha > 0).all()):
        return color
    levels = []
    premultiplied, weight = color * alpha, alpha
    while True:
        levels.append((premultiplied, weight))
        if min(weight.shape[-2:]) == 1:
            break
        premultiplied = torch.nn.functional.avg_pool2d(premultiplied[None], 2, ceil_mode=True)[0]
        weight = torch.nn.functional.avg_pool2d(weight[None], 2, ceil_mode=True)[0]
    estimate = None
    for premultiplied, weight in reversed(levels):
        here = premultiplied / weight.clamp_min(1e-12)
        if estimate is None:
            coarse = torch.full_like(here, 0.5)
            # the coarsest level may still be wider than 1 pixel on one side
            visible = weight.sum() > 0
            if bool(visible):
                coarse[:] = (premultiplied.sum(dim=(1, 2)) / weight.sum())[:, None, None]
        else:
            coarse = torch.nn.functional.interpolate(
                estimate[None], size=here.shape[-2:], mode="nearest"
            )[0]
        estimate = torch.where(weight > 0, here, coarse)
    return torch.where(alpha > 0, color, estimate)
