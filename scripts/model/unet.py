"""Model architectures for training and export: the project's compact scale-2 U-Net, and helpers
that build fastai's DynamicUnet and wrap any network to the model contract (RGB in [0, 1] in and
out).

    from scripts.model.unet import CompactUNet
    model = CompactUNet(nf=(64, 96, 160, 256), blocks=(2, 2, 2, 2))   # scale 2, multiple 8

CompactUNet works at the low resolution and ends in an ICNR-initialised sub-pixel (PixelShuffle) 2x
head (or 4x: ``scale=4``, the same body with a head of 48 channels, so every layer but the last
PixelShuffle runs at the input resolution). Its output is ``bicubic_sx(input) + residual``: the
network only learns what bicubic misses, which converges several times faster than predicting the
image. It is fully convolutional with no Python shape branches, so one trace is valid at every size
that is a multiple of ``2**(levels-1)``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

# ImageNet statistics: what a fastai/torchvision ResNet body expects its input normalised with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def icnr_(weight: torch.Tensor, scale: int = 2, init=nn.init.kaiming_normal_) -> torch.Tensor:
    """ICNR init (Aitken et al. 2017) for a conv feeding PixelShuffle(scale), in place.

    Every group of ``scale**2`` output channels that PixelShuffle spreads over one ``scale x scale``
    block starts equal, so at init the head is a nearest-neighbour upsample: no checkerboard.
    """
    out_c, in_c, kh, kw = weight.shape
    sub = torch.zeros(out_c // scale**2, in_c, kh, kw)
    init(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(scale**2, dim=0))
    return weight


class RepConv(nn.Module):
    """A 3x3 conv trained as two parallel branches, 3x3 + 1x1 (RepVGG / ECBSR style, without the
    identity branch: the ResBlock around it already has one), that ``fused()`` folds into the one
    3x3 conv it equals: richer optimisation while training, a plain ``nn.Conv2d`` when serving."""

    def __init__(self, nf: int):
        super().__init__()
        self.conv3 = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv1 = nn.Conv2d(nf, nf, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(x) + self.conv1(x)

    def fused(self) -> nn.Conv2d:
        """The single 3x3 conv computing the same function (equal up to float rounding)."""
        nf = self.conv3.in_channels
        w = self.conv3.weight.detach().clone()
        w[:, :, 1:2, 1:2] += self.conv1.weight.detach()
        conv = nn.Conv2d(nf, nf, 3, padding=1).to(w.device, w.dtype)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(self.conv3.bias.detach() + self.conv1.bias.detach())
        return conv


class ResBlock(nn.Module):
    """conv-ReLU-conv with an identity skip (EDSR style: no normalisation, which costs SR PSNR).
    ``rep=True`` trains each conv as a RepConv (folded to plain 3x3 convs by ``fuse``)."""

    def __init__(self, nf: int, res_scale: float = 1.0, rep: bool = False):
        super().__init__()
        conv = RepConv if rep else (lambda c: nn.Conv2d(c, c, 3, padding=1))
        self.conv1 = conv(nf)
        self.conv2 = conv(nf)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x), inplace=True))

    def fuse(self) -> None:
        for name in ("conv1", "conv2"):
            conv = getattr(self, name)
            if isinstance(conv, RepConv):
                setattr(self, name, conv.fused())


class Up(nn.Module):
    """2x up by a 1x1 conv + ICNR PixelShuffle, then add the encoder skip (addition, not concat:
    half the decoder compute for the same quality in our runs)."""

    def __init__(self, ni: int, nf: int):
        super().__init__()
        self.conv = nn.Conv2d(ni, nf * 4, 1)
        icnr_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.shuf = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.shuf(self.conv(x)) + skip


class CompactUNet(nn.Module):
    """The project's scale-2 U-Net (see the module docstring).

    Args:
        nf: channels per level, full low resolution first; ``len(nf) - 1`` downsamplings.
        blocks: residual blocks per level, used on the way down and again on the way up (the
            deepest level's run once: they are the bottleneck).
        scale: 2 or 4: the sub-pixel head's factor (a 4x head is one 3x3 conv to 48 channels and
            PixelShuffle(4); the body is the same, at the input resolution). ``head_from_2x``
            turns a scale-2 model's weights into a scale-4 model's starting point.
        rep: train every block conv as a re-parameterisable RepConv (3x3 + 1x1);
            ``fuse()`` folds them into plain 3x3 convs for inference and export.
        dec_blocks: residual blocks per decoder level (all but the deepest), if not ``blocks``.
    """

    def __init__(
        self,
        nf: tuple[int, ...] = (64, 96, 160, 256),
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        scale: int = 2,
        rep: bool = False,
        dec_blocks: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if len(nf) != len(blocks):
            raise ValueError(f"nf {nf} and blocks {blocks} must have one entry per level")
        if scale not in (2, 4):
            raise ValueError(f"CompactUNet has a 2x or 4x sub-pixel head, not {scale}x")
        dec_blocks = tuple(blocks[:-1]) if dec_blocks is None else tuple(dec_blocks)
        if len(dec_blocks) != len(nf) - 1:
            raise ValueError(f"dec_blocks {dec_blocks} needs one entry per level but the deepest")
        self.nf, self.blocks, self.scale = tuple(nf), tuple(blocks), scale
        self.rep, self.dec_blocks = rep, dec_blocks
        self.multiple = 2 ** (len(nf) - 1)
        self.stem = nn.Conv2d(3, nf[0], 3, padding=1)
        self.enc = nn.ModuleList(
            nn.Sequential(*[ResBlock(c, rep=rep) for _ in range(n)])
            for c, n in zip(nf, blocks, strict=True)
        )
        # stride-2 3x3 conv down: learnable (a fixed pool throws away what SR needs most)
        self.down = nn.ModuleList(
            nn.Conv2d(nf[i], nf[i + 1], 3, stride=2, padding=1) for i in range(len(nf) - 1)
        )
        self.up = nn.ModuleList(Up(nf[i + 1], nf[i]) for i in range(len(nf) - 1))
        self.dec = nn.ModuleList(
            nn.Sequential(*[ResBlock(nf[i], rep=rep) for _ in range(dec_blocks[i])])
            for i in range(len(nf) - 1)
        )
        self.head = nn.Conv2d(nf[0], 3 * scale**2, 3, padding=1)
        icnr_(self.head.weight, scale)
        # start as exactly bicubic: the residual head begins at zero
        with torch.no_grad():
            self.head.weight.mul_(0.1)
        nn.init.zeros_(self.head.bias)
        self.shuf = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(x, scale_factor=float(self.scale), mode="bicubic", align_corners=False)
        h = self.stem(x - 0.5)
        skips = []
        for i, enc in enumerate(self.enc):
            h = enc(h)
            if i < len(self.down):
                skips.append(h)
                h = self.down[i](h)
        for i in reversed(range(len(self.up))):
            h = self.dec[i](self.up[i](h, skips[i]))
        out = base + self.shuf(self.head(h))
        # clamp only when serving: in training it would zero the gradient of out-of-range pixels
        return out if self.training else out.clamp(0.0, 1.0)

    def config(self) -> dict:
        """Constructor arguments, saved beside the weights so export can rebuild the module
        (the optional ones only when set, so older configs and cards stay as they were)."""
        cfg = {"nf": list(self.nf), "blocks": list(self.blocks), "scale": self.scale}
        if self.rep:
            cfg["rep"] = True
        if self.dec_blocks != tuple(self.blocks[:-1]):
            cfg["dec_blocks"] = list(self.dec_blocks)
        return cfg

    def fuse(self) -> CompactUNet:
        """Fold re-parameterised convs into plain ones (in place; a no-op without ``rep``).
        The fused module computes the same function and loads only as ``rep=False``."""
        for m in self.modules():
            if isinstance(m, ResBlock):
                m.fuse()
        self.rep = False
        return self


def head_from_2x(state: dict[str, torch.Tensor], scale: int = 4) -> dict[str, torch.Tensor]:
    """A scale-2 CompactUNet's state dict as a scale-``scale`` one's starting point: every body
    weight as it is, and the 2x head spread over the ``scale x scale`` sub-pixels (sub-pixel
    (a, b) of the new head takes the 2x head's sub-pixel (2a // scale, 2b // scale)), so the new
    model starts as ``bicubic_sx(x)`` plus the 2x model's residual, nearest-upsampled: fine-tuning
    starts from the 2x model's detail instead of from scratch."""
    out = dict(state)
    w, b = state["head.weight"], state["head.bias"]
    if w.shape[0] != 12:
        raise ValueError(f"not a 2x head: {w.shape[0]} output channels (a 2x head has 12)")
    # PixelShuffle(r): channel c * r * r + a * r + b -> colour c, sub-pixel (a, b)
    index = [
        c * 4 + (2 * a // scale) * 2 + (2 * bb // scale)
        for c in range(3)
        for a in range(scale)
        for bb in range(scale)
    ]
    out["head.weight"], out["head.bias"] = w[index].clone(), b[index].clone()
    return out


class ContractWrapper(nn.Module):
    """Wrap a network trained on other value ranges so the exported model takes and returns RGB in
    [0, 1] (the model contract), e.g. a fastai-course DynamicUnet trained on ImageNet-normalised
    images with ``y_range=(-3, 3)``.

    Args:
        net: the network.
        in_norm: "imagenet" to normalise the input with ImageNet statistics, or "none".
        out_norm: "imagenet" to undo ImageNet normalisation on the output, or "none".
    """

    def __init__(self, net: nn.Module, in_norm: str = "imagenet", out_norm: str = "imagenet"):
        super().__init__()
        for v in (in_norm, out_norm):
            if v not in ("imagenet", "none"):
                raise ValueError(f"normalisation must be 'imagenet' or 'none', not {v!r}")
        self.net = net
        self.in_norm, self.out_norm = in_norm == "imagenet", out_norm == "imagenet"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_norm:
            x = (x - self.mean) / self.std
        y = self.net(x)
        if self.out_norm:
            y = y * self.std + self.mean
        return y if self.training else y.clamp(0.0, 1.0)


def tiny_encoder() -> nn.Sequential:
    """A 4-stage encoder of a few thousand parameters, shaped like a ResNet body (stride 2 per
    stage, 32x total) so fastai's DynamicUnet builds on it: for tests and CPU smoke runs."""

    def stage(ni, nf):
        return nn.Sequential(
            nn.Conv2d(ni, nf, 3, stride=2, padding=1), nn.BatchNorm2d(nf), nn.ReLU()
        )

    return nn.Sequential(stage(3, 8), stage(8, 16), stage(16, 16), stage(16, 32), stage(32, 32))


def dynamic_unet(
    body: str = "resnet34", img_size: int = 128, self_attention: bool = False, blur: bool = True
) -> nn.Module:
    """fastai's DynamicUnet as in the course (NormType.Weight, blur, no pretrained weights),
    for a scale-1 model. ``body`` is a torchvision ResNet name or "tiny" (see ``tiny_encoder``).
    The returned U-Net works on ImageNet-normalised images; wrap it with ContractWrapper."""
    import torchvision
    from fastai.vision.all import DynamicUnet, NormType, create_body

    if body == "tiny":
        encoder = tiny_encoder()
    else:
        # weights=None: nothing may be downloaded; bring your own weights with --init-weights
        encoder = create_body(getattr(torchvision.models, body)(weights=None), pretrained=False)
    with warnings.catch_warnings():
        # NormType.Weight uses torch.nn.utils.weight_norm: deprecated, still correct and traceable
        warnings.filterwarnings(
            "ignore", "`torch.nn.utils.weight_norm` is deprecated", FutureWarning
        )
        return DynamicUnet(
            encoder,
            n_out=3,
            img_size=(img_size, img_size),
            blur=blur,
            self_attention=self_attention,
            y_range=(-3.0, 3.0),
            norm_type=NormType.Weight,
        )


def build_model(arch: str, cfg: dict) -> nn.Module:
    """Rebuild a model from the settings saved beside its weights (``args.yaml`` / checkpoint)."""
    if arch == "compact":
        dec = cfg.get("dec_blocks")
        return CompactUNet(
            tuple(cfg["nf"]),
            tuple(cfg["blocks"]),
            cfg.get("scale", 2),
            rep=bool(cfg.get("rep", False)),
            dec_blocks=None if dec is None else tuple(dec),
        )
    if arch == "dynamic_unet":
        net = dynamic_unet(
            cfg.get("body", "resnet34"),
            cfg.get("img_size", 128),
            cfg.get("self_attention", False),
            cfg.get("blur", True),
        )
        return ContractWrapper(net, cfg.get("in_norm", "imagenet"), cfg.get("out_norm", "imagenet"))
    raise ValueError(f"unknown arch {arch!r}: use 'compact' or 'dynamic_unet'")


def init_weights(model: nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Load the weights of ``path`` (a model.pth or ckpt*.pth of scripts/train.py, or a bare state
    dict) into ``model`` as its starting point, non-strictly; returns (missing, unexpected) keys.

    A CompactUNet checkpoint is adapted to ``model``: re-parameterised convs are folded when
    ``model`` has plain ones, and a scale-2 head becomes a scale-4 one (``head_from_2x``) when
    ``model`` is a 4x CompactUNet: the 4x model is fine-tuned from the 2x model's body."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a full training checkpoint also holds numpy RNG states
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt)
    if isinstance(model, CompactUNet) and ckpt.get("arch") == "compact":
        src = build_model("compact", ckpt["config"])
        src.load_state_dict(state)
        if src.rep and not model.rep:
            src.fuse()
        state = src.state_dict()
        if src.scale == 2 and model.scale != 2:
            state = head_from_2x(state, model.scale)
    missing, unexpected = model.load_state_dict(state, strict=False)
    return list(missing), list(unexpected)


def load_trained(path: str) -> nn.Module:
    """A model saved by scripts/train.py (model.pth or a ckpt*.pth), rebuilt, in eval mode, with
    any re-parameterised convs folded (what inference and export run)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ckpt["arch"], ckpt["config"])
    model.load_state_dict(ckpt["model"])
    if hasattr(model, "fuse"):
        model.fuse()
    return model.float().eval()
