"""NoGAN sharpening (the fastai course's recipe): a small patch critic trained from scratch, and the
steps of the two phases that follow the generator's pixel-loss pretraining.

1. critic pretraining: the generator is frozen; the critic learns to tell its outputs from the
   originals (hinge loss on every patch of its output map);
2. a short adversarial phase: the generator's loss is the pixel loss it was trained with (kept, at
   weight ``pixel``), plus ``adv`` x the hinge adversarial loss, plus ``fm`` x feature matching on
   the critic's own layers (no pretrained network: nothing can be downloaded); one critic step per
   generator step.

``scripts/train_gan.py`` drives them (budgets, checkpoints, resume); the tests run them on a tiny
generator.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchCritic(nn.Module):
    """A fully convolutional critic: spectral-norm convolutions, LeakyReLU, no normalisation
    layers; one logit per patch (receptive field about 30 px at three levels), so it judges local
    texture and sharpness, not the image's content. Takes RGB in [0, 1] (N, 3, H, W); returns
    (N, 1, H / 2**levels, W / 2**levels) logits, and with ``features=True`` also the activations
    of every level (for feature matching)."""

    def __init__(self, nf: tuple[int, ...] = (32, 64, 128), in_ch: int = 3):
        super().__init__()
        self.nf = tuple(nf)
        self.stem = spectral_norm(nn.Conv2d(in_ch, nf[0], 3, padding=1))
        blocks, ni = [], nf[0]
        for no in nf:
            blocks.append(
                nn.Sequential(
                    spectral_norm(nn.Conv2d(ni, no, 4, stride=2, padding=1)),
                    nn.LeakyReLU(0.2),
                    spectral_norm(nn.Conv2d(no, no, 3, padding=1)),
                    nn.LeakyReLU(0.2),
                )
            )
            ni = no
        self.blocks = nn.ModuleList(blocks)
        self.head = spectral_norm(nn.Conv2d(ni, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, features: bool = False):
        h = F.leaky_relu(self.stem(x * 2 - 1), 0.2)
        feats = []
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        logits = self.head(h)
        return (logits, feats) if features else logits


def critic_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


@dataclasses.dataclass
class GanWeights:
    pixel: float = 1.0  # the generator's own pixel loss (L1 + FFT), kept
    adv: float = 0.01  # hinge adversarial loss, -critic(fake).mean()
    fm: float = 0.0  # L1 between the critic's activations on fake and real


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def critic_step(gen, critic, opt_d, lr, hr, bf16: bool = False) -> float:
    """One critic update on a batch: originals against the (frozen here) generator's outputs."""
    with torch.no_grad(), _autocast(bf16):
        fake = gen(lr).float().clamp(0, 1)
    critic.train()
    with _autocast(bf16):
        loss = critic_hinge(critic(hr), critic(fake))
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return float(loss.detach())


def gan_step(
    gen, critic, opt_g, opt_d, lr, hr, pixel_loss, w: GanWeights, bf16: bool = False, clip=0.0
) -> dict:
    """One adversarial step: a generator update (pixel + adversarial + feature matching), then a
    critic update on the same batch. Returns the losses as floats."""
    gen.train()
    critic.train()
    # generator: the critic's weights take no gradient from this loss
    critic.requires_grad_(False)
    with _autocast(bf16):
        out = gen(lr)
        fake = out.float().clamp(0, 1)
        fake_logits, fake_feats = critic(fake, features=True)
        g_adv = -fake_logits.float().mean()
        g_fm = torch.zeros((), device=lr.device)
        if w.fm:
            with torch.no_grad():
                _, real_feats = critic(hr, features=True)
            g_fm = sum(
                F.l1_loss(f.float(), r.float()) for f, r in zip(fake_feats, real_feats, strict=True)
            ) / len(fake_feats)
    g_pix = pixel_loss(out.float(), hr)
    g_loss = w.pixel * g_pix + w.adv * g_adv + w.fm * g_fm
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    if clip:
        nn.utils.clip_grad_norm_(gen.parameters(), clip)
    opt_g.step()
    critic.requires_grad_(True)
    # critic: against the output just made (detached)
    with _autocast(bf16):
        d_loss = critic_hinge(critic(hr), critic(fake.detach()))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    return {
        "g_loss": float(g_loss.detach()),
        "g_pix": float(g_pix.detach()),
        "g_adv": float(g_adv.detach()),
        "g_fm": float(g_fm.detach()),
        "d_loss": float(d_loss.detach()),
    }
