"""Train an enhancer with fastai on pairs crappified on the fly from random crops of clean photos.

The shipped default (compact scale-2 U-Net, L1 + frequency loss, half plain-bicubic pairs), exactly
as it was run on 2 shared CPU cores (bf16 autocast + channels_last, one thread of two, as other
work shared the machine):

    nice -n 10 .venv/bin/python scripts/train.py --out runs/default --arch compact \
        --nf 48,64,128,256 --blocks 2,1,2,2 --epochs 36 --iters 200 --bs 16 --sizes 48,48,64 \
        --lr 4e-4 --clip 0.05 --fft-weight 0.05 --keep-every 3 --threads 1

A tiny CPU run (seconds; what the tests do):

    .venv/bin/python scripts/train.py --out runs/tiny --nf 8,16 --blocks 1,1 --epochs 2 --iters 4 \
        --bs 4 --sizes 16 --valid-n 4

On a GPU (mixed precision is automatic), the fastai course's scale-1 DynamicUnet on a ResNet-34 body
with the feature loss (bring VGG16-BN weights; nothing is downloaded), 4x pairs resized back up:

    .venv/bin/python scripts/train.py --out runs/dunet --arch dynamic_unet --body resnet34 \
        --factor 4 --sizes 32,64 --bs 32 --epochs 20 --iters 500 --vgg-weights vgg16_bn.pth

Writes ``<out>/model.pth`` (weights + arch config), ``<out>/args.yaml`` (every setting, so
``scripts/export.py`` can rebuild the same module), ``<out>/ckpt.pth`` every epoch (``--resume``)
and ``<out>/ckpt_NNN.pth`` every ``--keep-every`` epochs, for evaluating while it trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import fastai.callback.fp16  # noqa: F401  (adds Learner.to_fp16 / to_bf16)
import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import torch
import yaml
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.callback.training import GradientClip
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import Adam

from scripts.model import crappify
from scripts.model.feature_loss import FeatureLoss, PixelFreqLoss, pool_block_ends, vgg16_features
from scripts.model.unet import build_model

ints = lambda s: tuple(int(v) for v in s.split(","))  # noqa: E731

# ------------------------------------------------------------------------------------- settings
ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
ap.add_argument(
    "--data", nargs="+", default=["../shared/data/train"], help="folders/files of clean photos"
)
ap.add_argument(
    "--valid-n", type=int, default=64, help="validation crops (from every 20th image, held out)"
)
ap.add_argument("--out", required=True, help="run folder for weights, args.yaml and checkpoints")
ap.add_argument(
    "--arch", default="compact", choices=("compact", "dynamic_unet"), help="architecture"
)
ap.add_argument("--nf", type=ints, default=(48, 64, 128, 256), help="compact: channels per level")
ap.add_argument(
    "--blocks", type=ints, default=(2, 1, 2, 2), help="compact: residual blocks per level"
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
    "--p-clean",
    type=float,
    default=crappify.TRAIN.p_clean,
    help="share of pairs made by plain PIL bicubic downscaling (the rest: real-world mix)",
)
ap.add_argument(
    "--text", type=float, default=0.0, help="share of pairs with the course's text overlay"
)
ap.add_argument(
    "--degrade",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="override a crappify.Degradation field, e.g. p_jpeg=0.9 or noise_sigma=1,15 (repeatable)",
)
ap.add_argument(
    "--epochs", type=int, default=36, help="epochs (each --iters batches of new random pairs)"
)
ap.add_argument("--iters", type=int, default=200, help="batches per epoch")
ap.add_argument("--bs", type=int, default=16, help="batch size")
ap.add_argument(
    "--sizes",
    type=ints,
    default=(48, 48, 64),
    help="progressive resizing: input patch sides, the epochs split evenly between them",
)
ap.add_argument(
    "--lr", type=float, default=4e-4, help="peak learning rate of the one-cycle schedule"
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
    "--pct-start", type=float, default=0.1, help="share of the one cycle spent warming up"
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
ap.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.pth")
args = ap.parse_args()

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(args.seed)
torch.set_num_threads(args.threads)
device = torch.device(args.device)
precision = args.precision
if precision == "auto":
    cpu_bf16 = (
        "avx512_bf16" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    )
    precision = "fp16" if device.type == "cuda" else ("bf16" if cpu_bf16 else "fp32")

# ----------------------------------------------------------------------------------------- data

out_scale = 2 if args.arch == "compact" else 1
images = crappify.load_images(args.data)
valid_images, train_images = images[::20], [im for k, im in enumerate(images) if k % 20]
degradation = dataclasses.replace(crappify.TRAIN, p_clean=args.p_clean, p_text=args.text)
for spec in args.degrade:
    field, _, value = spec.partition("=")
    default = getattr(crappify.TRAIN, field)  # AttributeError names an unknown field
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
# validation: fixed pairs (epoch stays 0), same mix, no augmentation, its own seed
valid_ds = crappify.PairDataset(
    valid_images,
    args.valid_n,
    min(args.sizes),
    args.factor,
    out_scale,
    degradation,
    seed=args.seed + 1,
    aug=False,
)
dls = DataLoaders(
    DataLoader(train_ds, bs=args.bs, num_workers=args.workers, drop_last=True),
    DataLoader(valid_ds, bs=args.bs, num_workers=0),
    device=device,
)
print(
    f"data: {len(train_images)} train / {len(valid_images)} valid images from {args.data}; "
    f"{args.iters} x {args.bs} pairs per epoch, x{args.factor}, p_clean {args.p_clean}"
)

# ---------------------------------------------------------------------------------------- model
if args.arch == "compact":
    model_cfg = {"nf": list(args.nf), "blocks": list(args.blocks), "scale": 2}
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
    state = torch.load(args.init_weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state.get("model", state), strict=False)
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
    loss_name = f"L1 + {args.fft_weight} x L1(orthonormal FFT)"


def psnr(pred, target):
    """RGB PSNR in dB on the valid pairs (a progress signal; scripts/evaluate.py is the measure)."""
    mse = ((pred.float().clamp(0, 1) - target.float()) ** 2).mean(dim=(1, 2, 3))
    return (-10 * torch.log10(mse.clamp_min(1e-10))).mean()


# ------------------------------------------------------------------------------------ callbacks
class Progressive(Callback):
    """Sets each epoch's patch size (progressive resizing) and seed; saves checkpoints."""

    order = 60  # after the Recorder (50), so its smoothed loss includes this batch

    def before_epoch(self):
        ds = self.dls.train.dataset
        ds.epoch = self.epoch
        ds.lr_size = args.sizes[
            min(len(args.sizes) - 1, self.epoch * len(args.sizes) // self.n_epoch)
        ]
        self.t0, self.seen = time.time(), 0

    def after_batch(self):
        if not self.training:
            return
        self.seen += 1
        if self.iter % args.log_every == 0:
            dt = (time.time() - self.t0) / self.seen
            print(
                f"epoch {self.epoch} iter {self.iter}: loss {self.recorder.losses[-1].item():.5f}, "
                f"lr {self.opt.hypers[0]['lr']:.2e}, size {self.dls.train.dataset.lr_size}, "
                f"{dt * 1000:.0f} ms/iter",
                flush=True,
            )

    def after_epoch(self):
        ckpt = {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "arch": args.arch,
            "config": model_cfg,
            "epoch": self.epoch,
        }
        torch.save(ckpt, out / "ckpt.pth")
        if (self.epoch + 1) % args.keep_every == 0:
            torch.save(
                {k: ckpt[k] for k in ("model", "arch", "config", "epoch")},
                out / f"ckpt_{self.epoch + 1:03d}.pth",
            )


class CPUAutocast(Callback):
    """bf16 autocast for the forward pass on CPU (fastai's MixedPrecision is CUDA-only); weights,
    optimizer and loss stay float32, so no loss scaling is needed."""

    order = 10

    def before_batch(self):
        self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        self.ctx.__enter__()
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)

    def after_pred(self):
        self.ctx.__exit__(None, None, None)


class ChannelsLast(Callback):
    """NHWC activations: oneDNN and cuDNN's fast convolution paths want them."""

    order = 10

    def before_batch(self):
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)


cbs = [Progressive()] + ([GradientClip(args.clip)] if args.clip else [])
learn = Learner(
    dls,
    model,
    loss_func=loss_func,
    opt_func=Adam,
    lr=args.lr,
    wd=args.wd,
    metrics=[psnr],
    path=out,
    model_dir=".",
    cbs=cbs,
)
learn.remove_cb(ProgressCallback)  # plain printed lines: this runs under nohup into a log
learn.model.to(memory_format=torch.channels_last)
if precision == "bf16" and device.type == "cpu":
    learn.add_cb(CPUAutocast())
else:
    learn.add_cb(ChannelsLast())
    if precision == "fp16":
        learn.to_fp16()
    elif precision == "bf16":
        learn.to_bf16()

# ------------------------------------------------------------------------------------------ fit
start_epoch = 0
if args.resume:
    ckpt = torch.load(out / "ckpt.pth", map_location=device, weights_only=False)
    learn.model.load_state_dict(ckpt["model"])
    learn.create_opt()
    learn.opt.load_state_dict(ckpt["opt"])
    start_epoch = ckpt["epoch"] + 1
    print(f"resumed from {out / 'ckpt.pth'} at epoch {start_epoch}")

settings = {
    **vars(args),
    "nf": list(args.nf),
    "blocks": list(args.blocks),
    "sizes": list(args.sizes),
    "precision": precision,
    "model_config": model_cfg,
    "params": n_params,
    "degradation": degradation.to_dict(),
    "loss": loss_name,
    "command": " ".join(sys.argv),
}
(out / "args.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
t0 = time.time()
learn.fit_one_cycle(
    args.epochs,
    args.lr,
    pct_start=args.pct_start,
    start_epoch=start_epoch,
    reset_opt=not args.resume,
)
wall = time.time() - t0

# ----------------------------------------------------------------------------------------- save
learn.model.float().to(memory_format=torch.contiguous_format)
torch.save(
    {
        "model": learn.model.state_dict(),
        "arch": args.arch,
        "config": model_cfg,
        "epoch": args.epochs - 1,
    },
    out / "model.pth",
)
settings.update(
    wall_time_s=round(wall),
    steps=args.epochs * args.iters,
    history=[[float(v) for v in row[:3]] for row in learn.recorder.values],
    final_train_loss=float(learn.recorder.losses[-1]) if learn.recorder.losses else None,
    final_valid=[float(v) for v in learn.recorder.values[-1]] if learn.recorder.values else None,
    machine=f"{os.cpu_count()} CPU cores" if device.type == "cpu" else torch.cuda.get_device_name(),
)
(out / "args.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
print(f"saved {out / 'model.pth'} after {wall / 60:.1f} min ({args.epochs * args.iters} steps)")
if hasattr(loss_func, "remove"):
    loss_func.remove()
