"""Face-aware enhancement: find faces with five landmarks, restore each aligned face, paste it back.

The path GFPGAN and CodeFormer use, without their face prior (no face is invented, so no identity
change): detect faces and five landmarks (eye centres, nose tip, mouth corners) on the input,
align each face to a fixed 5-point template by a similarity transform, run a face-tuned model of
the project's own family on the aligned crop, warp the result back with the inverse transform, and
blend it over the general model's output with an eroded, feathered mask sized from the face,
after a colour lock (per-channel mean and standard deviation of the face matched to the general
output's inside the mask), so a face never changes colour against its surroundings.

The detector is MTCNN (Zhang et al. 2016): three small networks (P-, R-, O-net). The network code
below is this project's own (a few dozen lines); the trained weights are the three state dicts
that ship inside the ``facenet-pytorch`` wheel (MIT; ``facenet_pytorch/data/{p,r,o}net.pt``).
That package pins old torch, numpy and Pillow, so ``scripts/setup.sh`` installs it with
``--no-deps`` and nothing here imports its code: only its weight files are read, from the
installed package directory, when the engine loads (a TorchServe worker runs in the same virtual
environment). Nothing is downloaded at run time. Where the wheel is absent, ``FaceDetector.load``
returns ``None``, the engine reports faces as unavailable and option ``faces=auto`` means off
(response header ``X-Enhance-Faces: unavailable``): no silent substitute.

Caps (README): at most ``MAX_FACES`` (8) faces per image, largest first; faces narrower than
``MIN_FACE`` (24) input pixels are skipped; and the face passes of one image stop once they have
taken ``TIME_BUDGET`` (2.0 s) or ``budget_share`` of the general pass's time, whichever is larger,
so a crowd photo costs at most a bounded multiple of the plain enhancement.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MAX_FACES = 8
MIN_FACE = 24
TIME_BUDGET = 2.0

# The 5-point template on a unit square: the mean landmarks (left eye, right eye, nose, left and
# right mouth corner) that this detector finds on the 40 training CelebA-HQ images, divided by
# the image side. CelebA-HQ is aligned by its authors, so its framing is the template and a
# resized CelebA-HQ image is an aligned training crop (scripts/face_crops.py).
TEMPLATE = np.array(
    [
        [0.3782, 0.4772],
        [0.6272, 0.4769],
        [0.4942, 0.6341],
        [0.3887, 0.7363],
        [0.6150, 0.7356],
    ],
    dtype=np.float64,
)


# ---------------------------------------------------------------------------------------------
# MTCNN networks (layer names match the facenet-pytorch state dicts)


class PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()  # the Caffe weights' flattening order
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def weights_dir() -> Path | None:
    """The folder of MTCNN weights inside the installed ``facenet-pytorch`` wheel, or None."""
    spec = importlib.util.find_spec("facenet_pytorch")  # finds the folder, runs none of its code
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    return d if all((d / f"{n}.pt").is_file() for n in ("pnet", "rnet", "onet")) else None


@dataclass
class Face:
    box: np.ndarray  # x1, y1, x2, y2 in input pixels
    score: float
    landmarks: np.ndarray  # 5 x 2 (x, y): left eye, right eye, nose, mouth left, mouth right

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def _nms(
    boxes: torch.Tensor, scores: torch.Tensor, thresh: float, mode: str = "union"
) -> torch.Tensor:
    order = torch.argsort(scores, descending=True)
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    keep = []
    while order.numel():
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        xx1 = torch.maximum(x1[i], x1[rest])
        yy1 = torch.maximum(y1[i], y1[rest])
        xx2 = torch.minimum(x2[i], x2[rest])
        yy2 = torch.minimum(y2[i], y2[rest])
        inter = (xx2 - xx1 + 1).clamp(min=0) * (yy2 - yy1 + 1).clamp(min=0)
        if mode == "min":
            o = inter / torch.minimum(area[i], area[rest])
        else:
            o = inter / (area[i] + area[rest] - inter)
        order = rest[o <= thresh]
    return torch.tensor(keep, dtype=torch.long)


def _square(b: torch.Tensor) -> torch.Tensor:
    b = b.clone()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = torch.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2:4] = b[:, :2] + side.unsqueeze(1)
    return b


def _regress(b: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    b = b.clone()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, 0] += reg[:, 0] * w
    b[:, 1] += reg[:, 1] * h
    b[:, 2] += reg[:, 2] * w
    b[:, 3] += reg[:, 3] * h
    return b


def _crops(img: torch.Tensor, boxes: torch.Tensor, side: int) -> torch.Tensor:
    _, h, w = img.shape
    out = []
    for x1, y1, x2, y2 in boxes[:, :4].trunc().int().tolist():
        x1, y1 = max(x1, 1), max(y1, 1)
        x2, y2 = min(x2, w), min(y2, h)
        if x2 <= x1 - 1 or y2 <= y1 - 1:
            out.append(torch.zeros(3, side, side))
            continue
        crop = img[:, y1 - 1 : y2, x1 - 1 : x2].unsqueeze(0)
        out.append(F.interpolate(crop, size=(side, side), mode="area")[0])
    return torch.stack(out)


class FaceDetector:
    """MTCNN on the facenet-pytorch weights: ``detect(rgb_uint8_array)`` -> faces, largest first."""

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet, min_size: int = 20) -> None:
        self.pnet, self.rnet, self.onet = pnet.eval(), rnet.eval(), onet.eval()
        self.min_size = min_size
        self.thresholds = (0.6, 0.7, 0.7)
        self.factor = 0.709

    @classmethod
    def load(cls, folder: Path | None = None) -> FaceDetector | None:
        folder = folder or weights_dir()
        if folder is None:
            return None
        nets = (PNet(), RNet(), ONet())
        for net, name in zip(nets, ("pnet", "rnet", "onet"), strict=True):
            net.load_state_dict(
                torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
            )
        return cls(*nets)

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray, min_face: int = MIN_FACE) -> list[Face]:
        """Faces in an H x W x 3 uint8 RGB array, each at least ``min_face`` pixels wide."""
        img = torch.from_numpy(np.array(rgb[..., :3], dtype=np.uint8)).permute(2, 0, 1).float()
        _, h, w = img.shape
        norm = (img - 127.5) * 0.0078125
        m = 12.0 / max(self.min_size, min_face)
        scales, minl = [], min(h, w) * m
        s = m
        while minl >= 12:
            scales.append(s)
            s *= self.factor
            minl *= self.factor
        cands = []
        for s in scales:
            im = F.interpolate(img.unsqueeze(0), size=(int(h * s + 1), int(w * s + 1)), mode="area")
            reg, prob = self.pnet((im - 127.5) * 0.0078125)
            p = prob[0, 1]
            ys, xs = torch.nonzero(p >= self.thresholds[0], as_tuple=True)
            if ys.numel() == 0:
                continue
            q1x, q1y = ((2 * xs + 1) / s).floor(), ((2 * ys + 1) / s).floor()
            q2x, q2y = ((2 * xs + 12) / s).floor(), ((2 * ys + 12) / s).floor()
            b = torch.stack([q1x, q1y, q2x, q2y, p[ys, xs]], 1)
            r = reg[0][:, ys, xs].T
            keep = _nms(b[:, :4], b[:, 4], 0.5)
            cands.append(torch.cat([b[keep], r[keep]], 1))
        if not cands:
            return []
        c = torch.cat(cands)
        c = c[_nms(c[:, :4], c[:, 4], 0.7)]
        bw, bh = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
        boxes = torch.stack(
            [
                c[:, 0] + c[:, 5] * bw,
                c[:, 1] + c[:, 6] * bh,
                c[:, 2] + c[:, 7] * bw,
                c[:, 3] + c[:, 8] * bh,
            ],
            1,
        )
        boxes = _square(boxes)
        # R-net
        reg, prob = self.rnet(_crops(norm, boxes, 24))
        ok = prob[:, 1] > self.thresholds[1]
        boxes, reg, score = boxes[ok], reg[ok], prob[ok, 1]
        if boxes.numel() == 0:
            return []
        keep = _nms(boxes, score, 0.7)
        boxes = _square(_regress(boxes[keep], reg[keep]))
        # O-net
        reg, pts, prob = self.onet(_crops(norm, boxes, 48))
        ok = prob[:, 1] > self.thresholds[2]
        boxes, reg, pts, score = boxes[ok], reg[ok], pts[ok], prob[ok, 1]
        if boxes.numel() == 0:
            return []
        bw = (boxes[:, 2] - boxes[:, 0] + 1).unsqueeze(1)
        bh = (boxes[:, 3] - boxes[:, 1] + 1).unsqueeze(1)
        px = bw * pts[:, :5] + boxes[:, :1] - 1
        py = bh * pts[:, 5:] + boxes[:, 1:2] - 1
        boxes = _regress(boxes, reg)
        keep = _nms(boxes, score, 0.7, mode="min")
        faces = [
            Face(
                boxes[i].numpy().astype(np.float64),
                float(score[i]),
                torch.stack([px[i], py[i]], 1).numpy().astype(np.float64),
            )
            for i in keep.tolist()
        ]
        faces = [f for f in faces if f.size >= min_face]
        return sorted(faces, key=lambda f: -f.size)


# ---------------------------------------------------------------------------------------------
# Alignment, blending


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity (rotation, uniform scale, shift) mapping ``src`` points onto ``dst``
    in the least-squares sense (Umeyama, without reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    scale = np.trace(np.diag(sig) @ e) / s.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = md - scale * r @ ms
    return m


def invert(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(m[:, :2])
    return np.concatenate([a, -a @ m[:, 2:]], 1)


def warp(img: torch.Tensor, m: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Sample ``img`` (N x C x H x W) into an ``size`` = (h, w) image whose pixel (x, y) comes from
    ``img`` at ``m`` applied to it inverted: ``m`` maps source pixel centres to destination ones.
    Bicubic, border pixels repeated."""
    n, _, h, w = img.shape
    oh, ow = size
    inv = invert(m)
    ys, xs = torch.meshgrid(
        torch.arange(oh, dtype=torch.float64), torch.arange(ow, dtype=torch.float64), indexing="ij"
    )
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], -1).to(img.dtype)
    out = F.grid_sample(
        img,
        grid.unsqueeze(0).expand(n, -1, -1, -1),
        mode="bicubic",
        padding_mode="border",
        align_corners=False,
    )
    return out.clamp(0, 1)


def face_mask(side: int, erode: float = 0.08, feather: float = 0.06) -> torch.Tensor:
    """A 1 x 1 x side x side mask on the aligned crop: an ellipse around the template's face
    (eyebrows to chin, cheek to cheek), eroded by ``erode`` and feathered over ``feather`` of
    the side, so the crop's own borders (and the warp's repeated border pixels) never show."""
    t = TEMPLATE * side
    cx = t[:, 0].mean()
    cy = (t[:2, 1].mean() + t[3:, 1].mean()) / 2
    eye = t[1, 0] - t[0, 0]
    rx, ry = 1.05 * eye, 1.45 * eye
    ys, xs = torch.meshgrid(
        torch.arange(side, dtype=torch.float32) + 0.5,
        torch.arange(side, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    r = torch.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
    # distance (as a share of the radius) inside the eroded ellipse, ramped over the feather
    inner = 1.0 - erode / 0.5
    m = ((inner - r) / (feather / 0.5)).clamp(0, 1)
    m = m * m * (3 - 2 * m)  # smoothstep
    return m[None, None]


def colour_lock(face: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``face`` with each channel's mean and standard deviation inside ``mask`` matched to
    ``ref``'s (N x 3 x h x w tensors in [0, 1])."""
    w = mask / mask.sum().clamp(min=1e-6)
    mf = (face * w).sum((2, 3), keepdim=True)
    mr = (ref * w).sum((2, 3), keepdim=True)
    sf = (((face - mf) ** 2) * w).sum((2, 3), keepdim=True).sqrt()
    sr = (((ref - mr) ** 2) * w).sum((2, 3), keepdim=True).sqrt()
    gain = (sr / sf.clamp(min=1e-4)).clamp(0.5, 2.0)
    return ((face - mf) * gain + mr).clamp(0, 1)


def blend(base: torch.Tensor, face: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``base`` where ``mask`` is 0 (exactly: the pixels are copied), ``face`` where it is 1."""
    out = base.clone()
    sel = mask.expand_as(base) > 0
    out[sel] = (base + mask * (face - base))[sel]
    return out


# ---------------------------------------------------------------------------------------------
# The face path


@dataclass
class FaceReport:
    found: int  # faces detected at or above MIN_FACE
    restored: int  # faces that went through the face model (cap and time budget)
    seconds: float


def crop_side(face: Face, scale: float) -> int:
    """The aligned crop's side at the output resolution: the template's eye distance there equals
    the face's eye distance in the output, rounded to a multiple of 8, within 64-1024."""
    eye = float(np.linalg.norm(face.landmarks[1] - face.landmarks[0])) * scale
    t_eye = TEMPLATE[1, 0] - TEMPLATE[0, 0]
    return int(min(1024, max(64, round(eye / t_eye / 8) * 8)))


def restore_faces(
    model,
    source: torch.Tensor,
    enhanced: torch.Tensor,
    faces: list[Face],
    scale: float,
    *,
    model_scale: int = 2,
    budget: float = TIME_BUDGET,
    max_faces: int = MAX_FACES,
) -> tuple[torch.Tensor, FaceReport]:
    """Paste face-model restorations of ``faces`` into ``enhanced`` (1 x 3 x H x W, the general
    output at the final size) from ``source`` (1 x 3 x h x w, the input in [0, 1]).

    Each face: the input is sampled, aligned, at 1/``model_scale`` of the output resolution (for
    a 2x face model at scale 4 that is the input enlarged 2x by the warp, at scale 2 the input
    itself), the face model enlarges it ``model_scale`` times to the aligned crop at the output
    resolution, and that crop is colour-locked to the general output, warped back and blended.
    ``model`` is any callable (N x 3 x h x w -> N x 3 x sh x sw); None skips the restoration.
    """
    t0 = time.perf_counter()
    out = enhanced
    done = 0
    for face in faces[:max_faces]:
        if done and time.perf_counter() - t0 > budget:
            break
        side = crop_side(face, scale)
        lo = side // model_scale
        # input -> low-res aligned crop, and output -> full-res aligned crop
        m_lo = similarity(face.landmarks, TEMPLATE * lo)
        m_hi = similarity(face.landmarks * scale + (scale - 1) / 2, TEMPLATE * side)
        crop = warp(source, m_lo, (lo, lo))
        restored = model(crop).float().clamp(0, 1)
        if restored.shape[-1] != side:
            restored = F.interpolate(
                restored, size=(side, side), mode="bicubic", align_corners=False
            ).clamp(0, 1)
        ref = warp(out, m_hi, (side, side))
        mask = face_mask(side)
        restored = colour_lock(restored, ref, mask)
        # warp back over the crop's bounding box in the output only
        h, w = out.shape[-2:]
        inv = invert(m_hi)
        corners = np.array([[0, 0], [side, 0], [0, side], [side, side]], np.float64)
        pts = corners @ inv[:, :2].T + inv[:, 2]
        x0, y0 = (max(0, int(math.floor(v)) - 2) for v in pts.min(0))
        x1, y1 = (
            min(w, int(math.ceil(pts[:, 0].max())) + 2),
            min(h, int(math.ceil(pts[:, 1].max())) + 2),
        )
        if x1 <= x0 or y1 <= y0:
            continue
        local = inv.copy()
        local[:, 2] -= (x0, y0)
        back = warp(restored, local, (y1 - y0, x1 - x0))
        back_mask = warp(mask, local, (y1 - y0, x1 - x0))
        out = out.clone() if out is enhanced else out
        out[..., y0:y1, x0:x1] = blend(out[..., y0:y1, x0:x1], back, back_mask)
        done += 1
    return out, FaceReport(len(faces), done, time.perf_counter() - t0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def eye_distance(face: Face) -> float:
    return float(math.dist(face.landmarks[0], face.landmarks[1]))


class FacePath:
    """The detector and the face model, loaded once by the engine (``Enhancer.load``)."""

    def __init__(self, detector: FaceDetector, model, model_scale: int) -> None:
        self.detector = detector
        self.model = model
        self.model_scale = model_scale

    @classmethod
    def load(cls, face_path: Path, device: torch.device, settings) -> FacePath | None:
        """The face path of the ``face.pt`` model (card beside it), or None where the detector's
        weights (the facenet-pytorch wheel) are not installed: faces are then unavailable."""
        from enhancer.card import ModelCard
        from enhancer.runner import ModelRunner

        detector = FaceDetector.load()
        if detector is None:
            return None
        card = ModelCard.load(Path(face_path).with_suffix(".json"))
        card.verify(face_path)
        runner = ModelRunner(face_path, card, device, settings.precision, settings.backend)
        return cls(detector, runner, card.scale)

    def apply(self, source: torch.Tensor, enhanced: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``enhanced`` (3 x H x W) with the faces of ``source`` (3 x h x w, the input) restored;
        and how many faces were found."""
        h, w = source.shape[-2:]
        scale = enhanced.shape[-1] / w
        faces = self.detector.detect(to_uint8(source.float().cpu()[None]))
        if not faces:
            return enhanced, 0
        dev = enhanced.device
        model = self.model

        def run(x: torch.Tensor) -> torch.Tensor:
            return model(x.to(dev))

        out, report = restore_faces(
            run,
            source[None].float().to(dev),
            enhanced[None].float(),
            faces,
            scale,
            model_scale=self.model_scale,
        )
        return out[0].to(enhanced.dtype), report.found
