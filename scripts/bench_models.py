"""Inference speed of U-Net candidates side by side: CPU output megapixels per second at x2 on
256-pixel tiles, interleaved (round-robin) so that load from other work hits all models alike.

    .venv/bin/python scripts/bench_models.py --pt shipped=model_store/enhancer.pt \\
        --arch 'b={"nf": [40, 80, 160], "blocks": [3, 1, 2]}' --ckpt clean=/work/runs/clean/ckpt.pth

``--pt`` takes a traced model as served; ``--arch`` a CompactUNet config (random weights: speed does
not depend on them), ``--ckpt`` a training checkpoint; both are folded (re-parameterised convs),
traced at the tile shape and saved once to measure the .pt size. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from scripts.model.unet import build_model, load_trained


def macs_per_output_pixel(model: nn.Module, tile: int) -> float:
    """Multiply-accumulates of the convolutions per output pixel (hooks on a small input)."""
    total = [0]

    def hook(mod, inp, out):
        k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        total[0] += out[0].numel() * k

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    return total[0] / (out.shape[-1] * out.shape[-2])


def traced(
    model: nn.Module, tile: int, folder: Path, name: str
) -> tuple[torch.jit.ScriptModule, int]:
    """The model traced at 1x3xtile x tile in eval mode, and the size of its saved .pt."""
    model = model.float().eval()
    with torch.no_grad():
        ts = torch.jit.trace(model, torch.rand(1, 3, tile, tile))
    path = folder / f"{name}.pt"
    torch.jit.save(ts, path)
    return torch.jit.load(path), path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pt", action="append", default=[], metavar="NAME=PATH", help="traced .pt")
    ap.add_argument("--arch", action="append", default=[], metavar="NAME=JSON", help="config")
    ap.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH", help="checkpoint")
    ap.add_argument("--tile", type=int, default=256, help="input tile side (output is 2x)")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    ap.add_argument("--reps", type=int, default=3, help="tiles per model per round")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    models: dict[str, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_models_"))
    for spec in args.pt:
        name, _, path = spec.partition("=")
        ts = torch.jit.load(path, map_location="cpu").eval()
        params = sum(p.numel() for p in ts.parameters())
        models[name] = {"ts": ts, "params": params, "size": Path(path).stat().st_size, "macs": None}
    for kind, specs in (("arch", args.arch), ("ckpt", args.ckpt)):
        for spec in specs:
            name, _, value = spec.partition("=")
            if kind == "arch":
                model = build_model("compact", json.loads(value))
                params = sum(p.numel() for p in model.parameters())  # as trained (before folding)
                model.fuse()
            else:
                model = load_trained(value)
                cfg = torch.load(value, weights_only=False)["config"]
                params = sum(p.numel() for p in build_model("compact", cfg).parameters())
            macs = macs_per_output_pixel(model.eval(), args.tile)
            ts, size = traced(model, args.tile, tmp, name)
            models[name] = {"ts": ts, "params": params, "size": size, "macs": macs}

    x = torch.rand(1, 3, args.tile, args.tile)
    out_mp = (2 * args.tile) ** 2 / 1e6
    with torch.inference_mode():
        for m in models.values():  # warm up (oneDNN primitive caches, profiling executor)
            for _ in range(3):
                m["ts"](x)
            m["wall"], m["cpu"] = [], []
        for _ in range(args.rounds):
            for m in models.values():
                t_wall, t_cpu = time.perf_counter(), time.process_time()
                for _ in range(args.reps):
                    m["ts"](x)
                m["wall"].append((time.perf_counter() - t_wall) / args.reps)
                m["cpu"].append((time.process_time() - t_cpu) / args.reps)
    rows = []
    print(f"| model | params | MACs / output px | .pt MB | output MP/s (x2, {args.tile} tiles, "
          f"{args.threads} threads, best / median round) | CPU-s per output MP |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, m in models.items():
        best, med = min(m["wall"]), sorted(m["wall"])[len(m["wall"]) // 2]
        cpu = sorted(m["cpu"])[len(m["cpu"]) // 2]
        row = {
            "name": name,
            "params": m["params"],
            "macs_per_output_px": m["macs"],
            "pt_mb": round(m["size"] / 1e6, 2),
            "mp_per_s_best": round(out_mp / best, 3),
            "mp_per_s_median": round(out_mp / med, 3),
            "cpu_s_per_mp": round(cpu / out_mp, 3),
        }
        rows.append(row)
        macs = f"{m['macs']:,.0f}" if m["macs"] else "-"
        speed = f"{row['mp_per_s_best']:.2f} / {row['mp_per_s_median']:.2f}"
        print(
            f"| {name} | {m['params'] / 1e6:.2f} M | {macs} | {row['pt_mb']} | {speed} | "
            f"{row['cpu_s_per_mp']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
