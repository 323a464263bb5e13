"""NoGAN sharpening of a pretrained generator (issue 11): critic pretraining, then a short
adversarial phase with the pixel loss kept (scripts/model/gan.py has the critic and the steps).

    # what `make train-gan` runs (in the background, at the lowest priority; resumable):
    .venv/bin/python scripts/train_gan.py --init runs/restore/ckpt.pth --out ../runs/gan \
        --data ../shared/data/train --critic-steps 400 --gan-steps 1200 --max-minutes 60

The generator starts from a scripts/train.py checkpoint (``--init``: its ``model``, ``arch``,
``config``); the training pairs are made exactly as that run made them: the degradation mix is
read from the run's args.yaml beside it (``--degradation-from`` overrides), the same held-out
images. Step ``s`` takes items ``s * bs ... s * bs + bs - 1`` of the seeded pair dataset, so a
resumed run sees the same data. Steps ``0 .. critic_steps-1`` pretrain the critic (generator
frozen), the next ``gan_steps`` are adversarial.

Writes into ``--out``: ``ckpt.pth`` (both networks, both optimizers, the step; atomic, every
``--ckpt-every`` steps and at a stop), ``gen_NNNNN.pth`` (the generator's weights every
``--keep-every`` adversarial steps, in train.py's model.pth form: ``scripts/export.py --weights``
exports any of them, so the one that looks best can be shipped), ``log.csv`` (losses, and the
real-world-track Y-PSNR of the validation subset at every kept snapshot), ``model.pth`` at the end,
and ``args.yaml``. ``--max-minutes`` leaves after the next checkpoint past that wall time;
``--resume`` continues from ``ckpt.pth``.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from scripts.checkpoint import atomic_save
from scripts.model import crappify
from scripts.model.evaluation import psnr, rgb_to_y, shave, val_pairs
from scripts.model.feature_loss import PixelFreqLoss
from scripts.model.gan import GanWeights, PatchCritic, critic_step, gan_step
from scripts.model.unet import build_model

ints = lambda s: tuple(int(v) for v in s.split(","))  # noqa: E731
EVAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval"
VAL_DEFAULT = [str(EVAL / "set5")] + [
    str(EVAL / "set14" / f) for f in ("comic.png", "foreman.png", "zebra.png")
]
LOG_FIELDS = (
    "step", "phase", "wall_s", "d_loss", "g_loss", "g_pix", "g_adv", "g_fm", "val_psnr"
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--init", required=True, help="the generator: a train.py ckpt.pth or model.pth")
    ap.add_argument(
        "--degradation-from", help="args.yaml with the pairs' degradation (default: --init's)"
    )
    ap.add_argument("--data", nargs="+", default=["../shared/data/train"], help="clean photos")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--critic-steps", type=int, default=400, help="critic pretraining steps")
    ap.add_argument("--gan-steps", type=int, default=1200, help="adversarial steps")
    ap.add_argument("--bs", type=int, default=8, help="batch size")
    ap.add_argument("--size", type=int, default=48, help="LR crop side (HR is x2)")
    ap.add_argument("--critic-nf", type=ints, default=(32, 64, 128), help="critic channels")
    ap.add_argument("--lr-g", type=float, default=1e-5, help="generator learning rate (Adam)")
    ap.add_argument("--lr-d", type=float, default=1e-4, help="critic learning rate (Adam)")
    ap.add_argument("--pixel", type=float, default=1.0, help="weight of the pixel loss (kept)")
    ap.add_argument("--fft-weight", type=float, default=0.05, help="the pixel loss's FFT share")
    ap.add_argument("--adv", type=float, default=0.01, help="weight of the adversarial loss")
    ap.add_argument("--fm", type=float, default=0.0, help="weight of critic feature matching")
    ap.add_argument("--clip", type=float, default=0.0, help="generator grad-norm clip (0: none)")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--ckpt-every", type=int, default=25, help="checkpoint every N steps")
    ap.add_argument("--keep-every", type=int, default=100, help="generator snapshot every N steps")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument(
        "--val", nargs="+", default=VAL_DEFAULT, help="real-world-track validation ('none': off)"
    )
    ap.add_argument("--max-minutes", type=float, default=0, help="stop after this (0: never)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.pth")
    return ap.parse_args(argv)


def load_generator(path: str) -> tuple[torch.nn.Module, str, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    gen = build_model(ckpt["arch"], ckpt["config"])
    gen.load_state_dict(ckpt["model"])
    return gen, ckpt["arch"], ckpt["config"]


def degradation_of(args_yaml: Path | None):
    """The degradation mix a train.py run used (its args.yaml), or crappify.RESTORE."""
    if not args_yaml or not args_yaml.exists():
        return crappify.RESTORE
    record = yaml.safe_load(args_yaml.read_text())
    cls = crappify.SecondOrder if record.get("second_order") else crappify.Degradation
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record["degradation"].items()}
    return cls(**fields)


@torch.no_grad()
def val_psnr(gen: torch.nn.Module, pairs) -> float:
    """Mean Y-PSNR (BT.601, 2 px shaved) on the real-world track, as train.py's curve."""
    gen.eval()
    scores = []
    for x, hr in pairs:
        h, w = x.shape[-2:]
        m = getattr(gen, "multiple", 1)
        xb = torch.nn.functional.pad(x[None], (0, -w % m, 0, -h % m), mode="reflect")
        y = gen(xb)[0, :, : 2 * h, : 2 * w].float().clamp(0, 1)
        sr = (y * 255.0).round().byte().permute(1, 2, 0).numpy()
        scores.append(psnr(shave(rgb_to_y(sr), 2), shave(rgb_to_y(hr), 2)))
    gen.train()
    return float(np.mean(scores)) if scores else float("nan")


def batch(ds, step: int, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[step * bs + j] for j in range(bs)]
    return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    gen, arch, config = load_generator(args.init)
    critic = PatchCritic(args.critic_nf)
    opt_g = torch.optim.Adam(gen.parameters(), lr=args.lr_g, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(critic.parameters(), lr=args.lr_d, betas=(0.5, 0.99))
    step, wall = 0, 0.0
    if args.resume and (out / "ckpt.pth").exists():
        state = torch.load(out / "ckpt.pth", map_location="cpu", weights_only=False)
        gen.load_state_dict(state["gen"])
        critic.load_state_dict(state["critic"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        step, wall = state["step"], state["wall_s"]
        print(f"resumed from {out / 'ckpt.pth'} at step {step}", flush=True)

    deg_yaml = Path(args.degradation_from or Path(args.init).with_name("args.yaml"))
    degradation = degradation_of(deg_yaml)
    images = crappify.load_images(args.data)
    train_images = [im for k, im in enumerate(images) if k % 20]  # train.py's held-out split
    total = args.critic_steps + args.gan_steps
    ds = crappify.PairDataset(
        train_images, total * args.bs, args.size, 2, 2, degradation, seed=args.seed
    )
    pairs = (
        []
        if args.val == ["none"]
        else [(x, hr) for _, x, hr in val_pairs(args.val, 2, "real_world")]
    )
    pixel_loss = PixelFreqLoss(args.fft_weight)
    weights = GanWeights(args.pixel, args.adv, args.fm)
    bf16 = args.precision == "bf16"
    record = {
        **vars(args),
        "critic_nf": list(args.critic_nf),
        "arch": arch,
        "model_config": config,
        "degradation_source": str(deg_yaml),
        "degradation": degradation.to_dict(),
        "loss": f"{args.pixel} x (L1 + {args.fft_weight} x FFT-L1) + {args.adv} x hinge "
        f"adversarial + {args.fm} x critic feature matching",
        "command": " ".join(sys.argv),
    }
    if deg_yaml.exists():
        record["init_from"] = yaml.safe_load(deg_yaml.read_text())
    (out / "args.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    n_critic = sum(p.numel() for p in critic.parameters())
    print(
        f"gan: {len(train_images)} train images, critic {n_critic}"
        f" params, {args.critic_steps} critic + {args.gan_steps} gan steps from step {step}",
        flush=True,
    )

    log_path = out / "log.csv"
    if step == 0 or not log_path.exists():
        with open(log_path, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=LOG_FIELDS).writeheader()
        if pairs and step == 0:
            log_row(log_path, {"step": 0, "phase": "init", "val_psnr": val_psnr(gen, pairs)})

    def save() -> None:
        atomic_save(
            {
                "gen": gen.state_dict(),
                "critic": critic.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "step": step,
                "wall_s": wall + time.monotonic() - t0,
                "arch": arch,
                "config": config,
            },
            out / "ckpt.pth",
        )

    t0 = time.monotonic()
    sums: dict[str, float] = {}
    while step < total:
        lr, hr = batch(ds, step, args.bs)
        if step < args.critic_steps:
            gen.eval()
            losses = {"d_loss": critic_step(gen, critic, opt_d, lr, hr, bf16)}
            phase = "critic"
        else:
            losses = gan_step(
                gen, critic, opt_g, opt_d, lr, hr, pixel_loss, weights, bf16, args.clip
            )
            phase = "gan"
        step += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        if step % args.log_every == 0:
            row = {k: round(v / args.log_every, 5) for k, v in sums.items()}
            sums = {}
            row.update(step=step, phase=phase, wall_s=round(wall + time.monotonic() - t0, 1))
            gan_done = step - args.critic_steps
            if phase == "gan" and (gan_done % args.keep_every == 0 or step == total):
                torch.save(
                    {"model": gen.state_dict(), "arch": arch, "config": config, "steps": step},
                    out / f"gen_{step:05d}.pth",
                )
                if pairs:
                    row["val_psnr"] = round(val_psnr(gen, pairs), 3)
            log_row(log_path, row)
            print(" ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        if step % args.ckpt_every == 0 or step == total:
            save()
            over = args.max_minutes and time.monotonic() - started >= args.max_minutes * 60
            if over and step < total:
                print(f"stopping after step {step} (--max-minutes)", flush=True)
                return 0
    torch.save(
        {"model": gen.state_dict(), "arch": arch, "config": config, "steps": step},
        out / "model.pth",
    )
    print(f"saved {out / 'model.pth'} after {step} steps", flush=True)
    return 0


def log_row(path: Path, row: dict) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow(row)


if __name__ == "__main__":
    sys.exit(main())
