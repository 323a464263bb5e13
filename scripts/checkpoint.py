"""Training checkpoints: atomic writes, and the compact copy committed to the repository.

    .venv/bin/python scripts/checkpoint.py compact ../runs/clean/ckpt.pth runs/clean/ckpt.pth

    .venv/bin/python scripts/checkpoint.py weights ../runs/clean/ckpt.pth ../runs/restore/init.pth

``compact`` stores the Adam moments in bfloat16 (weights stay float32): two thirds of the size of
the exact checkpoint (20.4 MB -> about 13.6 MB for the clean run's 1.69 M parameters), so one can be
committed every working session. A run resumed from it continues with moments rounded to 8 bits
of mantissa: not bit-exact, a negligible perturbation; ``train.py --resume`` casts them back to
float32. The exact checkpoint stays in the run folder, and resuming from it stays bit-exact.

``weights`` writes the checkpoint's model weights alone (a state dict that loads with
``weights_only=True``), with the step and pixels they came from: what ``train.py --init-weights``
warm-starts a run from (the restore run starts from the clean run's weights).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch


def atomic_save(obj, path: str | Path) -> None:
    """Write to a temporary file, then rename: a stop mid-write never leaves a torn file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def compact(ckpt: dict, dtype: torch.dtype = torch.bfloat16) -> dict:
    """The checkpoint with its optimizer's floating-point state in ``dtype``."""
    opt = dict(ckpt["opt"])
    opt["state"] = [
        {
            k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in s.items()
        }
        for s in opt["state"]
    ]
    return {**ckpt, "opt": opt, "opt_dtype": str(dtype).removeprefix("torch.")}


def restore_dtypes(opt) -> None:
    """Cast a loaded fastai optimizer's state back to its parameters' dtypes (after a compact
    checkpoint; a no-op after an exact one)."""
    for p, state in opt.state.items():
        for k, v in state.items():
            if torch.is_tensor(v) and v.is_floating_point() and v.dtype != p.dtype:
                state[k] = v.to(p.dtype)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=("compact", "weights"))
    ap.add_argument("src", help="a checkpoint (train.py's ckpt.pth)")
    ap.add_argument("dst", help="where to write the compact copy, or the weights")
    args = ap.parse_args()
    ckpt = torch.load(args.src, map_location="cpu", weights_only=False)
    if args.command == "weights":
        atomic_save(
            {"model": ckpt["model"], "from": str(args.src), "steps": ckpt["steps"],
             "pixels": ckpt["pixels"]},
            args.dst,
        )  # fmt: skip
        print(f"{args.dst}: weights of step {ckpt['steps']}, {ckpt['pixels'] / 1e9:.3f} G px")
        return
    atomic_save(compact(ckpt), args.dst)
    print(
        f"{args.dst}: step {ckpt['steps']}, {Path(args.src).stat().st_size / 1e6:.1f} MB -> "
        f"{Path(args.dst).stat().st_size / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
