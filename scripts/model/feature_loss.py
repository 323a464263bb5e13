"""Training losses: pixel L1 + a frequency term (the default), and the feature (perceptual) loss
with Gram-matrix style terms, as in fastai course-v3's lesson7-superres.

Training only: nothing in handlers/ imports this. The feature loss needs a VGG16-BN (torchvision
layout) whose weights the user supplies (nothing is downloaded here):

    from scripts.model.feature_loss import FeatureLoss, vgg16_features
    m_feat = vgg16_features("vgg16_bn.pth")
    loss = FeatureLoss(m_feat, layer_ids=[22, 32, 42], layer_wgts=[5, 15, 2])

Model outputs and targets are RGB in [0, 1]; they are ImageNet-normalised here before the VGG,
which is what its weights expect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fft_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between orthonormal 2-D spectra: weighs every frequency equally, so fine detail (which
    pixel L1 under-weighs next to PSNR's squared error) gets its share."""
    d = torch.fft.rfft2(pred - target, norm="ortho")
    return torch.view_as_real(d).abs().mean()


class PixelFreqLoss(nn.Module):
    """L1 + ``fft_weight`` x frequency L1, computed in float32 whatever the autocast precision."""

    def __init__(self, fft_weight: float):
        super().__init__()
        self.fft_weight = fft_weight

    def forward(self, pred, target):
        pred, target = pred.float(), target.float()
        loss = F.l1_loss(pred, target)
        return loss + self.fft_weight * fft_l1(pred, target) if self.fft_weight else loss


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """Channel-by-channel feature correlations, normalised by the feature map's size."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, -1)
    return (x @ x.transpose(1, 2)) / (c * h * w)


def vgg16_features(weights: str) -> nn.Sequential:
    """torchvision's VGG16-BN feature extractor with the user's weights, frozen, in eval mode."""
    import torchvision

    vgg = torchvision.models.vgg16_bn(weights=None)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    vgg.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return vgg.features.eval().requires_grad_(False)


def pool_block_ends(m_feat: nn.Sequential) -> list[int]:
    """Indices of the layers just before each max-pool: the course picks the 3rd to 5th of them."""
    return [i - 1 for i, layer in enumerate(m_feat) if isinstance(layer, nn.MaxPool2d)]


class FeatureLoss(nn.Module):
    """Pixel L1 + weighted L1 between VGG activations + L1 between their Gram matrices.

    Args:
        m_feat: a frozen feature extractor (nn.Sequential); its layers ``layer_ids`` are hooked.
        layer_ids: which layers' activations to compare (course: [22, 32, 42] of VGG16-BN).
        layer_wgts: weight of each layer's term (course: [5, 15, 2]); Gram terms use ``w**2 * 5e3``.
        base_loss: the distance used throughout (course: L1).
    """

    def __init__(self, m_feat, layer_ids, layer_wgts, base_loss=F.l1_loss):
        super().__init__()
        self.m_feat = m_feat.eval().requires_grad_(False)
        self.base_loss = base_loss
        self.wgts = list(layer_wgts)
        self.stored: dict[int, torch.Tensor] = {}
        self.hooks = [
            m_feat[i].register_forward_hook(self._hook(k)) for k, i in enumerate(layer_ids)
        ]
        self.metric_names = (
            ["pixel"]
            + [f"feat_{k}" for k in range(len(layer_ids))]
            + [f"gram_{k}" for k in range(len(layer_ids))]
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _hook(self, k):
        def store(module, inputs, output):
            self.stored[k] = output

        return store

    def make_features(self, x: torch.Tensor, clone: bool = False) -> list[torch.Tensor]:
        self.m_feat((x - self.mean) / self.std)
        return [self.stored[k].clone() if clone else self.stored[k] for k in range(len(self.hooks))]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float(), target.float()
        with torch.no_grad():
            out_feat = self.make_features(target, clone=True)
        in_feat = self.make_features(pred)
        losses = [self.base_loss(pred, target)]
        losses += [
            self.base_loss(fi, fo) * w
            for fi, fo, w in zip(in_feat, out_feat, self.wgts, strict=True)
        ]
        losses += [
            self.base_loss(gram_matrix(fi), gram_matrix(fo)) * w**2 * 5e3
            for fi, fo, w in zip(in_feat, out_feat, self.wgts, strict=True)
        ]
        self.metrics = dict(zip(self.metric_names, [v.detach() for v in losses], strict=True))
        return sum(losses)

    def remove(self) -> None:
        """Free the hooks (as fastai's DynamicUnet.__del__ does), so the VGG can be reused."""
        for h in getattr(self, "hooks", []):
            h.remove()
        self.hooks = []

    def __del__(self):
        self.remove()
