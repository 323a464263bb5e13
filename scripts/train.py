"""Train an enhancer with fastai on pairs crappified on the fly from random crops of clean photos.

Training is budgeted by high-resolution pixels seen (``--budget-gpx``; the number of steps and the
learning-rate schedule follow from it), resumes exactly (``--resume``: weights, optimizer, schedule
position, data position and RNG states come back from ``<out>/ckpt.pth``, written atomically at the
end of every ``--iters``-step epoch), and appends a learning curve (Y-PSNR on a fixed validation
subset, against pixels seen and CPU-seconds) to ``<out>/curve.csv``.

The long ``clean`` run (bicubic pairs plus mild degradations; several working sessions on 2 CPU
cores) is started and resumed by ``scripts/train_run.sh clean start`` (``make train-clean``), which
holds its exact settings; runs/clean/README.md has its numbers and curve.

The shipped default (compact scale-2 U-Net, L1 + frequency loss, half plain-bicubic pairs), as it
was run on 2 shared CPU cores (bf16 autocast + channels_last, one thread of two):

    nice -n 10 .venv/bin/python scripts/train.py --out runs/default --arch compact \
        --nf 48,64,128,256 --blocks 2,1,2,2 --epochs 36 --iters 200 --bs 16 --sizes 48,48,64 \
        --lr 4e-4 --clip 0.05 --fft-weight 0.05 --keep-every 3 --threads 1 --schedule onecycle

A tiny CPU run (seconds; what the tests do):

    .venv/bin/python scripts/train.py --out runs/tiny --nf 8,16 --blocks 1,1 --epochs 2 --iters 4 \
        --bs 4 --sizes 16 --val-every 4

On a GPU (mixed precision is automatic), the fastai course's scale-1 DynamicUnet on a ResNet-34 body
with the feature loss (bring VGG16-BN weights; nothing is downloaded), 4x pairs resized back up:

    .venv/bin/python scripts/train.py --out runs/dunet --arch dynamic_unet --body resnet34 \
        --factor 4 --sizes 32,64 --bs 32 --epochs 20 --iters 500 --vgg-weights vgg16_bn.pth

Writes ``<out>/model.pth`` (weights + arch config) at the end, ``<out>/args.yaml`` (every setting,
so ``scripts/export.py`` can rebuild the same module), ``<out>/ckpt.pth`` every epoch
(``--resume``), ``<out>/ckpt_NNN.pth`` (weights only) every ``--keep-every`` epochs, and
``<out>/curve.csv``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import random
import sys
import time
from pathlib import Path

import fastai.callback.fp16  # noqa: F401  (adds Learner.to_fp16 / to_bf16)
import numpy as np
import torch
import yaml
from fastai.callback.core import Callback, CancelFitException, CancelValidException
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import combined_cos
from fastai.callback.training import GradientClip
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import Adam

from scripts.checkpoint import atomic_save, restore_dtypes
from scripts.model import crappify
from scripts.model.evaluation import psnr as psnr_db
from scripts.model.evaluation import rgb_to_y, shave, val_pairs
from scripts.model.feature_loss import FeatureLoss, PixelFreqLoss, pool_block_ends, vgg16_features
from scripts.model.unet import build_model, init_weights

ints = lambda s: tuple(int(v) for v in s.split(","))  # noqa: E731
EVAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval"
# the learning curve's fixed validation subset: Set5 and three Set14 images, bicubic LR at the
# model's scale (x2; x4 for a 4x model)
VAL_DEFAULT = [str(EVAL / "set5")] + [
    str(EVAL / "set14" / f) for f in ("comic.png", "foreman.png", "zebra.png")
]
CURVE_FIELDS = (
    "pixels", "steps", "epoch", "cpu_s", "wall_s", "train_loss", "lr", "val_psnr", "set5_psnr"
)  # fmt: skip

# ------------------------------------------------------------------------------------- settings
ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
ap.add_argument(
    "--data", nargs="+", default=["../shared/data/train"], help="folders/files of clean photos"
)
ap.add_argument(
    "--pack", help="a packed crop file from scripts/pack_data.py, read instead of --data"
)
ap.add_argument(
    "--val",
    nargs="+",
    default=VAL_DEFAULT,
    help="HR images (folders/files) of the learning curve's Y-PSNR (at the model's scale, x2 for "
    "scale 1); "
    "'none' for no curve",
)
ap.add_argument(
    "--val-track",
    default="bicubic",
    choices=("bicubic", "real_world", "heavy"),
    help="the curve's inputs: the HR downscaled as one of scripts/evaluate.py's tracks (its seed); "
    "a restore run follows real_world",
)
ap.add_argument("--val-every", type=int, default=500, help="a curve point every N steps")
ap.add_argument("--out", required=True, help="run folder for weights, args.yaml and checkpoints")
ap.add_argument(
    "--arch", default="compact", choices=("compact", "dynamic_unet"), help="architecture"
)
ap.add_argument("--nf", type=ints, default=(48, 64, 128, 256), help="compact: channels per level")
ap.add_argument(
    "--blocks", type=ints, default=(2, 1, 2, 2), help="compact: residual blocks per level"
)
ap.add_argument(
    "--dec-blocks", type=ints, help="compact: decoder blocks per level (default: as --blocks)"
)
ap.add_argument(
    "--rep", action="store_true", help="compact: re-parameterisable convs (folded at export)"
)
ap.add_argument(
    "--scale",
    type=int,
    default=2,
    choices=(2, 4),
    help="compact: the sub-pixel head's factor (4: the 4x model; pairs need --factor 4; start it "
    "from the 2x model with --init-weights, whose head is spread over the 4x sub-pixels)",
)
ap.add_argument(
    "--body", default="resnet34", help="dynamic_unet: torchvision ResNet name, or 'tiny'"
)
ap.add_argument(
    "--self-attention", action="store_true", help="dynamic_unet: add fastai's self-attention"
)
ap.add_argument("--init-weights", help="start from these weights (a model.pth, or a state dict)")
ap.add_argument(
    "--factor", type=int, default=2, choices=(2, 4), help="downscale factor of the pairs"
)
ap.add_argument(
    "--second-order",
    action="store_true",
    help="degrade with crappify.RESTORE, the second-order model (for the restore model), "
    "instead of the first-order crappify.TRAIN mix",
)
ap.add_argument(
    "--p-clean",
    type=float,
    help="share of pairs made by plain PIL bicubic downscaling (the rest: the degradation mix); "
    f"default {crappify.TRAIN.p_clean} (first order), {crappify.RESTORE.p_clean} (second order)",
)
ap.add_argument(
    "--text", type=float, default=0.0, help="share of pairs with the course's text overlay"
)
ap.add_argument(
    "--degrade",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="override a field of the degradation mix (crappify.Degradation, or SecondOrder with "
    "--second-order), e.g. p_jpeg=0.9 or noise_sigma=1,15 (repeatable)",
)
ap.add_argument(
    "--budget-gpx",
    type=float,
    help="budget in G high-resolution pixels seen; sets the number of epochs (else --epochs)",
)
ap.add_argument(
    "--epochs", type=int, default=36, help="epochs (each --iters batches of new random pairs)"
)
ap.add_argument(
    "--iters", type=int, default=200, help="batches per epoch: also the checkpoint interval"
)
ap.add_argument("--bs", type=int, default=16, help="batch size")
ap.add_argument(
    "--sizes",
    type=ints,
    default=(48, 48, 64),
    help="progressive resizing: input patch sides, the budget's pixels split evenly between them",
)
ap.add_argument("--lr", type=float, default=4e-4, help="peak learning rate")
ap.add_argument(
    "--schedule",
    default="onecycle",
    choices=("onecycle", "flat-cos"),
    help="learning rate against the share of the pixel budget seen: onecycle (fastai's: warm up "
    "--pct-start, cosine down) or flat-cos (warm up --pct-start, flat, cosine down from "
    "--cos-start: the budget can grow while the LR is still flat)",
)
ap.add_argument("--pct-start", type=float, default=0.1, help="share of the budget spent warming up")
ap.add_argument(
    "--cos-start", type=float, default=0.5, help="flat-cos: share of the budget where LR decays"
)
ap.add_argument("--wd", type=float, default=0.0, help="weight decay (AdamW style)")
ap.add_argument(
    "--clip",
    type=float,
    default=0.05,
    help="clip the gradient norm to this (0: off); keeps spikes "
    "from blowing up a normalisation-free residual net",
)
ap.add_argument(
    "--fft-weight",
    type=float,
    default=0.05,
    help="weight of the frequency term (L1 between orthonormal 2-D FFTs), 0 for plain L1",
)
ap.add_argument(
    "--vgg-weights", help="VGG16-BN weights (torchvision layout): adds the feature loss"
)
ap.add_argument(
    "--precision",
    default="auto",
    choices=("auto", "fp32", "bf16", "fp16"),
    help="auto: fp16 mixed precision on GPU, bf16 autocast on a CPU that has it, else fp32",
)
ap.add_argument(
    "--channels-last",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="NHWC weights and activations (oneDNN's fast path)",
)
ap.add_argument(
    "--compile", action="store_true", help="torch.compile the model (measure first: see README)"
)
ap.add_argument(
    "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
)
ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch")
ap.add_argument("--workers", type=int, default=0, help="data loader worker processes")
ap.add_argument(
    "--seed", type=int, default=0, help="seeds the init and every pair (same seed, same run)"
)
ap.add_argument(
    "--keep-every", type=int, default=10, help="keep a numbered checkpoint every N epochs"
)
ap.add_argument("--log-every", type=int, default=50, help="print a progress line every N batches")
ap.add_argument("--resume", action="store_true", help="continue exactly from <out>/ckpt.pth")
ap.add_argument(
    "--stop-after",
    type=int,
    default=0,
    help="leave after the first checkpoint at or past this many steps (0: never), as if stopped",
)
ap.add_argument(
    "--max-minutes",
    type=float,
    default=0,
    help="leave after the first checkpoint past this many minutes of this process (0: never), as "
    "if stopped: a lent GPU's time limit (scripts/gpu_run.sh)",
)
args = ap.parse_args()
STARTED = time.monotonic()
if args.p_clean is None:
    args.p_clean = (crappify.RESTORE if args.second_order else crappify.TRAIN).p_clean

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(args.seed)
random.seed(args.seed)
np.random.seed(args.seed)
torch.set_num_threads(args.threads)
device = torch.device(args.device)
precision = args.precision
if precision == "auto":
    cpu_bf16 = (
        "avx512_bf16" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    )
    precision = "fp16" if device.type == "cuda" else ("bf16" if cpu_bf16 else "fp32")

# ----------------------------------------------------------------------------------------- data

out_scale = args.scale if args.arch == "compact" else 1
if args.arch == "compact" and args.factor != args.scale:
    raise SystemExit(f"--scale {args.scale} needs pairs of the same factor: --factor {args.scale}")
# the learning curve's scale: the model's own (a scale-1 model's curve is at x2, as it was)
val_scale = max(2, out_scale)
if args.pack:
    # one uint8 N x S x S x 3 array: every crop is a training "image"
    train_images = np.load(args.pack)
    data_name = args.pack
else:
    images = crappify.load_images(args.data)
    train_images = [im for k, im in enumerate(images) if k % 20]  # every 20th held out
    data_name = args.data
base = crappify.RESTORE if args.second_order else crappify.TRAIN
degradation = dataclasses.replace(base, p_clean=args.p_clean, p_text=args.text)
for spec in args.degrade:
    field, _, value = spec.partition("=")
    default = getattr(base, field)  # AttributeError names an unknown field
    kind = type(default[0]) if isinstance(default, tuple) else type(default)
    parsed = tuple(kind(v) for v in value.split(",")) if isinstance(default, tuple) else kind(value)
    degradation = dataclasses.replace(degradation, **{field: parsed})
train_ds = crappify.PairDataset(
    train_images,
    args.iters * args.bs,
    args.sizes[0],
    args.factor,
    out_scale,
    degradation,
    seed=args.seed,
)
# fastai wants a validation loader; the learning curve below replaces its per-epoch validation
dls = DataLoaders(
    DataLoader(train_ds, bs=args.bs, num_workers=args.workers, drop_last=True),
    DataLoader(train_ds, bs=args.bs, num_workers=0),
    device=device,
)


def epoch_pixels(size: int) -> int:
    return args.iters * args.bs * (size * args.factor) ** 2


# the plan: the input side of every epoch of --iters steps. With --budget-gpx, epochs run until
# the pixel budget is reached, the sizes splitting the budget's pixels evenly; else --epochs
# epochs, the sizes splitting the epochs evenly (fastai's progressive resizing)
if args.budget_gpx:
    budget = int(args.budget_gpx * 1e9)
    epoch_sizes: list[int] = []
    planned = 0
    while planned < budget:
        epoch_sizes.append(
            args.sizes[min(len(args.sizes) - 1, planned * len(args.sizes) // budget)]
        )
        planned += epoch_pixels(epoch_sizes[-1])
else:
    n = args.epochs
    epoch_sizes = [args.sizes[min(len(args.sizes) - 1, e * len(args.sizes) // n)] for e in range(n)]
    budget = sum(epoch_pixels(size) for size in epoch_sizes)
n_epochs = len(epoch_sizes)
print(
    f"data: {len(train_images)} train images from {data_name}; {args.iters} x {args.bs} pairs per "
    f"epoch, x{args.factor}, p_clean {args.p_clean}; budget {budget / 1e9:.3f} G HR pixels = "
    f"{n_epochs} epochs, {n_epochs * args.iters} steps"
)

# ---------------------------------------------------------------------------------------- model
if args.arch == "compact":
    model_cfg = {"nf": list(args.nf), "blocks": list(args.blocks), "scale": args.scale}
    if args.rep:
        model_cfg["rep"] = True
    if args.dec_blocks:
        model_cfg["dec_blocks"] = list(args.dec_blocks)
else:
    model_cfg = {
        "body": args.body,
        "img_size": max(args.sizes) * args.factor,
        "self_attention": args.self_attention,
        "blur": True,
        "in_norm": "imagenet",
        "out_norm": "imagenet",
    }
model = build_model(args.arch, model_cfg)
if args.init_weights:
    missing, unexpected = init_weights(model, args.init_weights)
    print(
        f"init from {args.init_weights}: {len(missing)} missing, {len(unexpected)} unexpected keys"
    )
n_params = sum(p.numel() for p in model.parameters())
print(f"model: {args.arch} {model_cfg}, {n_params / 1e6:.2f}M parameters, {precision} on {device}")


if args.vgg_weights:
    m_feat = vgg16_features(args.vgg_weights).to(device)
    loss_func = FeatureLoss(m_feat, pool_block_ends(m_feat)[2:5], [5, 15, 2])
    loss_name = "feature loss (VGG16-BN layers 22/32/42, weights 5/15/2, Gram x5e3 w^2) + pixel L1"
else:
    loss_func = PixelFreqLoss(args.fft_weight)
    loss_name = f"L1 + {args.fft_weight} x L1(orthonormal FFT)" if args.fft_weight else "L1"


def lr_at(frac: float) -> float:
    """The learning rate after the share ``frac`` of the pixel budget: a function of pixels seen
    only, so a resumed run follows the same schedule."""
    if args.schedule == "onecycle":
        return float(combined_cos(args.pct_start, args.lr / 25, args.lr, args.lr / 1e5)(frac))
    if frac < args.pct_start:  # flat-cos: linear warm-up from lr/25
        return args.lr * (0.04 + 0.96 * frac / args.pct_start)
    if frac < args.cos_start:
        return args.lr
    t = min(1.0, (frac - args.cos_start) / (1 - args.cos_start))
    return args.lr * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * t)))


# ----------------------------------------------------------------------- learning-curve subset


val_set = (
    []
    if args.val == ["none"]
    else val_pairs(args.val, val_scale, args.val_track, upsampled=out_scale == 1)
)


@torch.no_grad()
def curve_psnr(net: torch.nn.Module) -> tuple[float, float]:
    """Mean Y-PSNR (BT.601, the scale's pixels shaved) of the model on the validation subset,
    whole images reflect-padded to the model's multiple, fp32; and the same over the Set5 images
    alone."""
    was_training = net.training
    net.eval()
    multiple = getattr(net, "multiple", 1 if out_scale == 2 else 32)
    scores, set5 = [], []
    for name, x, hr in val_set:
        h, w = x.shape[-2:]
        ph, pw = -h % multiple, -w % multiple
        xb = (
            torch.nn.functional.pad(x[None], (0, pw, 0, ph), mode="reflect")
            if ph or pw
            else x[None]
        )
        y = net(xb.to(device))[0, :, : out_scale * h, : out_scale * w].float().clamp(0, 1)
        sr = (y * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
        score = psnr_db(shave(rgb_to_y(sr), val_scale), shave(rgb_to_y(hr), val_scale))
        scores.append(score)
        if name.startswith("set5/"):
            set5.append(score)
    net.train(was_training)
    return float(np.mean(scores)), float(np.mean(set5)) if set5 else float("nan")


# ------------------------------------------------------------------------------------ callbacks
def rng_states() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_states(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])


class Budget(Callback):
    """Drives the run by pixels seen: sets each epoch's patch size and data position, the learning
    rate before every step; counts pixels, steps and CPU-seconds; appends the learning curve;
    saves the exact-resume checkpoint at every epoch end."""

    order = 60  # after the Recorder (50), so its smoothed loss includes this batch

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.pixels = state.get("pixels", 0)
        self.steps = state.get("steps", 0)
        self.cpu_s = state.get("cpu_s", 0.0)
        self.wall_s = state.get("wall_s", 0.0)
        self.loss_sum, self.loss_n = state.get("loss_sum", 0.0), state.get("loss_n", 0)

    def _clock(self):
        """Add the CPU and wall time since the last call to the run's totals."""
        now_cpu, now_wall = time.process_time(), time.time()
        self.cpu_s += now_cpu - self.t_cpu
        self.wall_s += now_wall - self.t_wall
        self.t_cpu, self.t_wall = now_cpu, now_wall

    def before_fit(self):
        self.t_cpu, self.t_wall = time.process_time(), time.time()
        if val_set and self.steps == 0:
            self.curve_point()  # the start: the bicubic residual at init

    def before_epoch(self):
        ds = self.dls.train.dataset
        ds.epoch = self.epoch  # the data position: pair i of epoch e depends on (seed, e, i) only
        ds.lr_size = epoch_sizes[self.epoch]
        self.t_epoch, self.epoch_steps = time.process_time(), 0

    def before_batch(self):
        if self.training:
            self.opt.set_hyper("lr", lr_at(self.pixels / budget))

    def after_batch(self):
        if not self.training:
            return
        ds = self.dls.train.dataset
        self.pixels += self.xb[0].shape[0] * (ds.lr_size * args.factor) ** 2
        self.steps += 1
        self.epoch_steps += 1
        self.loss_sum += float(self.loss.detach())
        self.loss_n += 1
        if self.iter % args.log_every == 0:
            cpu = (time.process_time() - self.t_epoch) / self.epoch_steps
            print(
                f"epoch {self.epoch} iter {self.iter}: loss {float(self.loss.detach()):.5f}, "
                f"lr {self.opt.hypers[0]['lr']:.2e}, size {ds.lr_size}, "
                f"{self.pixels / 1e9:.3f} G px, {cpu:.2f} CPU-s/step",
                flush=True,
            )
        if val_set and self.steps % args.val_every == 0:
            self.curve_point()

    def curve_point(self):
        self._clock()
        val, set5 = curve_psnr(self.model)
        row = {
            "pixels": self.pixels,
            "steps": self.steps,
            "epoch": self.epoch,
            "cpu_s": round(self.cpu_s, 1),
            "wall_s": round(self.wall_s, 1),
            "train_loss": round(self.loss_sum / max(1, self.loss_n), 6),
            "lr": f"{lr_at(self.pixels / budget):.3e}",
            "val_psnr": round(val, 3),
            "set5_psnr": round(set5, 3),
        }
        self.loss_sum, self.loss_n = 0.0, 0
        path = out / "curve.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        print(
            f"curve: {self.pixels / 1e9:.3f} G px, step {self.steps}, {self.cpu_s / 3600:.2f} "
            f"CPU-h: val Y-PSNR {val:.3f} dB (Set5 {set5:.3f})",
            flush=True,
        )

    def before_validate(self):
        raise CancelValidException  # the learning curve is the validation

    def after_epoch(self):
        self._clock()
        ckpt = {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "arch": args.arch,
            "config": model_cfg,
            "epoch": self.epoch,
            "pixels": self.pixels,
            "steps": self.steps,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "loss_sum": self.loss_sum,
            "loss_n": self.loss_n,
            "budget": budget,
            "rng": rng_states(),
            "plan": plan_key,
        }
        atomic_save(ckpt, out / "ckpt.pth")
        if (self.epoch + 1) % args.keep_every == 0:
            torch.save(
                {
                    k: ckpt[k]
                    for k in (
                        "model",
                        "arch",
                        "config",
                        "epoch",
                        "pixels",
                        "steps",
                        "cpu_s",
                        "wall_s",
                    )
                },
                out / f"ckpt_{self.epoch + 1:03d}.pth",
            )
        # the Recorder keeps a value per step: over a run of days that adds up
        rec = self.learn.recorder
        rec.losses, rec.lrs, rec.iters = rec.losses[-10:], rec.lrs[-10:], rec.iters[-10:]
        if args.stop_after and self.steps >= args.stop_after:
            print(f"stopping after step {self.steps} (--stop-after)", flush=True)
            raise CancelFitException
        if args.max_minutes and time.monotonic() - STARTED >= args.max_minutes * 60:
            print(f"stopping after step {self.steps} (--max-minutes)", flush=True)
            raise CancelFitException


class CPUAutocast(Callback):
    """bf16 autocast for the forward pass on CPU (fastai's MixedPrecision is CUDA-only); weights,
    optimizer and loss stay float32, so no loss scaling is needed."""

    order = 10

    def before_batch(self):
        self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        self.ctx.__enter__()
        if args.channels_last:
            self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)

    def after_pred(self):
        self.ctx.__exit__(None, None, None)


class ChannelsLast(Callback):
    """NHWC activations: oneDNN and cuDNN's fast convolution paths want them."""

    order = 10

    def before_batch(self):
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)


# what must not change across a resume: the schedule, the data and the model
plan_key = {
    k: (list(v) if isinstance(v, tuple) else v)
    for k, v in vars(args).items()
    if k
    in (
        "arch", "nf", "blocks", "dec_blocks", "rep", "factor", "p_clean", "text", "degrade",
        "iters", "bs", "sizes", "lr", "schedule", "pct_start", "cos_start", "seed", "pack",
        "fft_weight", "second_order", "val_track", "scale",
    )
}  # fmt: skip
state = None
if args.resume:
    state = torch.load(out / "ckpt.pth", map_location=device, weights_only=False)
    saved = state.get("plan", plan_key)
    # a setting newer than the checkpoint passes at its default (what the run had then)
    diff = {
        k: (saved.get(k, "(not set)"), v)
        for k, v in plan_key.items()
        if (saved[k] != v if k in saved else v != ap.get_default(k))
    }
    if diff:
        raise SystemExit(f"--resume with other settings than the checkpoint's: {diff}")
    model.load_state_dict(state["model"])
budget_cb = Budget(state)
cbs = [budget_cb] + ([GradientClip(args.clip)] if args.clip else [])
learn = Learner(
    dls,
    model,
    loss_func=loss_func,
    opt_func=Adam,
    lr=args.lr,
    wd=args.wd,
    path=out,
    model_dir=".",
    cbs=cbs,
)
learn.remove_cb(ProgressCallback)  # plain printed lines: this runs under nohup into a log
if args.channels_last:
    learn.model.to(memory_format=torch.channels_last)
if precision == "bf16" and device.type == "cpu":
    learn.add_cb(CPUAutocast())
else:
    if args.channels_last:
        learn.add_cb(ChannelsLast())
    if precision == "fp16":
        learn.to_fp16()
    elif precision == "bf16":
        learn.to_bf16()
if args.compile:
    learn.model.compile()  # in place: state_dict keys stay as they are

# ------------------------------------------------------------------------------------------ fit
start_epoch = 0
if state is not None:
    learn.create_opt()
    learn.opt.load_state_dict(state["opt"])
    restore_dtypes(learn.opt)  # a compact (committed) checkpoint keeps Adam's moments in bf16
    set_rng_states(state["rng"])
    start_epoch = state["epoch"] + 1
    # curve points written after this checkpoint belong to the lost stretch: drop them
    path = out / "curve.csv"
    if path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["steps"]) <= state["steps"]]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    print(
        f"resumed from {out / 'ckpt.pth'} at epoch {start_epoch}, step {state['steps']}, "
        f"{state['pixels'] / 1e9:.3f} G px, {state['cpu_s'] / 3600:.2f} CPU-h",
        flush=True,
    )

machine = f"{os.cpu_count()} CPU cores" if device.type == "cpu" else torch.cuda.get_device_name()
settings = {
    **vars(args),
    "nf": list(args.nf),
    "blocks": list(args.blocks),
    "dec_blocks": list(args.dec_blocks) if args.dec_blocks else None,
    "sizes": list(args.sizes),
    "precision": precision,
    "model_config": model_cfg,
    "params": n_params,
    "degradation": degradation.to_dict(),
    "loss": loss_name,
    "budget_pixels": budget,
    "planned_epochs": n_epochs,
    "planned_steps": n_epochs * args.iters,
    "command": " ".join(sys.argv),
    "machine": machine,  # where it ran (the card's training.machine)
}
(out / "args.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
learn.fit(n_epochs, args.lr, start_epoch=start_epoch, reset_opt=state is None)
if budget_cb.steps < n_epochs * args.iters:
    sys.exit(0)  # stopped early (--stop-after, --max-minutes): the checkpoint is the state

# ----------------------------------------------------------------------------------------- save
if val_set and budget_cb.steps % args.val_every:
    budget_cb.curve_point()
final = getattr(learn.model, "_orig_mod", learn.model)
final.float().to(memory_format=torch.contiguous_format)
torch.save(
    {
        "model": final.state_dict(),
        "arch": args.arch,
        "config": model_cfg,
        "epoch": n_epochs - 1,
        "pixels": budget_cb.pixels,
        "steps": budget_cb.steps,
    },
    out / "model.pth",
)
history = []
if (out / "curve.csv").exists():
    with open(out / "curve.csv", newline="") as f:
        history = [
            [int(r["pixels"]), int(r["steps"]), float(r["cpu_s"]), float(r["val_psnr"])]
            for r in csv.DictReader(f)
        ]
settings.update(
    wall_time_s=round(budget_cb.wall_s),
    cpu_time_s=round(budget_cb.cpu_s),
    steps=budget_cb.steps,
    pixels=budget_cb.pixels,
    history=history,
    history_fields=["pixels", "steps", "cpu_s", "val_psnr"],
)
(out / "args.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
print(
    f"saved {out / 'model.pth'} after {budget_cb.steps} steps, {budget_cb.pixels / 1e9:.3f} G px, "
    f"{budget_cb.cpu_s / 3600:.2f} CPU-h, {budget_cb.wall_s / 60:.1f} min"
)
if hasattr(loss_func, "remove"):
    loss_func.remove()
