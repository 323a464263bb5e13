"""Network interpolation between the two models of one family: ``clean`` and ``restore``.

The ``denoise`` option (0 = clean, 1 = restore) picks a model whose weights are the weighted
average of the two networks' weights, as Real-ESRGAN's general model does: one model run per
tile, never two. The blends are computed once, at load, at ``DENOISE_LEVELS``; a request's value is
snapped to the nearest level (the response says which in ``X-Enhance-Denoise``).

Both models must be of one family: the same architecture (parameter names and shapes) and the same
card geometry (scale, multiple, tile, overlap, dynamic), since the engine tiles them alike.
"""

from __future__ import annotations

import io

import torch

from enhancer.card import ModelCard
from enhancer.contract import DENOISE_LEVELS  # blends computed at load: 0 clean, 1 restore, exactly

# Card fields that must agree for two models to be tiled and blended alike.
_GEOMETRY = ("scale", "multiple", "tile", "overlap", "blend", "dynamic")


def check_family(clean: ModelCard, restore: ModelCard) -> None:
    """Refuse a pair whose cards differ where the engine needs them equal.

    Raises:
        ValueError: naming the first field that differs.
    """
    for field in _GEOMETRY:
        a, b = getattr(clean, field), getattr(restore, field)
        if a != b:
            raise ValueError(
                f"models '{clean.name}' and '{restore.name}' are not one family: "
                f"'{field}' is {a} and {b}"
            )


def blend(
    clean: torch.jit.ScriptModule, restore: torch.jit.ScriptModule, weight: float
) -> torch.jit.ScriptModule:
    """A copy of ``clean`` with every floating tensor ``(1 - weight) * clean + weight * restore``.

    ``weight`` 0 and 1 give the two models' tensors exactly (no arithmetic is done on them).

    Raises:
        ValueError: the two models' parameters or buffers differ in names or shapes.
    """
    ours, theirs = clean.state_dict(), restore.state_dict()
    if ours.keys() != theirs.keys():
        missing = sorted(ours.keys() ^ theirs.keys())[:3]
        raise ValueError(f"the models differ in their tensors (e.g. {missing}): not one family")
    for name, tensor in ours.items():
        if tensor.shape != theirs[name].shape:
            raise ValueError(
                f"tensor '{name}' is {tuple(tensor.shape)} in one model and "
                f"{tuple(theirs[name].shape)} in the other: not one family"
            )
    buffer = io.BytesIO()
    torch.jit.save(clean, buffer)
    buffer.seek(0)
    copy = torch.jit.load(buffer, map_location="cpu").eval()
    source = restore if weight == 1.0 else None
    with torch.no_grad():
        for name, tensor in copy.state_dict().items():
            if not tensor.is_floating_point() or weight == 0.0:
                continue
            other = theirs[name].to(tensor.device, tensor.dtype)
            if source is not None:
                tensor.copy_(other)
            else:
                tensor.copy_(torch.lerp(ours[name].to(tensor.dtype), other, weight))
    return copy


def snap(denoise: float, levels: tuple[float, ...] = DENOISE_LEVELS) -> float:
    """The precomputed level nearest to ``denoise`` (ties go to the lower level)."""
    return min(levels, key=lambda level: (abs(level - denoise), level))
