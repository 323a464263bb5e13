"""Degradations ("crappify") and training pairs made on the fly from random crops of clean photos.

    .venv/bin/python -m scripts.model.crappify ../shared/data/eval/set5/baby.png \
        --out runs/crappy --n 4
        # writes 4 degraded copies and prints the recipe (ops and parameters) of each

Every degradation is driven by a ``numpy.random.Generator``: the same seed gives the same pixels.
A degradation is first *sampled* as a recipe (a list of ``(op, params)``), then *applied*, so the
recipe of any pair can be logged or written into a model card. The ops, as in the fastai course's
crappify and Real-ESRGAN's first-order model, are:

- ``gaussian_blur`` (isotropic or anisotropic, sigma in HR pixels) and ``motion_blur`` (a short
  line), before the downscale (lens, focus) or after it (blur of the small image);
- ``downscale`` by the pair's factor (2 or 4) with a varied PIL kernel (bicubic, bilinear, box,
  lanczos);
- ``noise``: additive Gaussian, colour or grey, sigma in 8-bit levels;
- ``jpeg`` at a quality, through PIL's encoder;
- ``text``: the course's overlay of a random number, off unless asked for.

``Degradation.p_clean`` is the share of pairs made by plain PIL bicubic downscaling, exactly like
the evaluation's low-resolution inputs; the rest get blur, a varied kernel, noise and JPEG in varied
order.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

KERNELS = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "box": Image.BOX,
    "lanczos": Image.LANCZOS,
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class Degradation:
    """What a degraded copy may suffer, with probabilities and parameter ranges (uniform draws).

    Sigmas of blur are in HR pixels, noise in 8-bit levels (0-255), JPEG quality in PIL's 1-95.
    """

    p_clean: float = 0.5  # plain PIL bicubic downscale and nothing else
    p_blur: float = 0.7  # some blur (of which p_motion is motion blur)
    blur_sigma: tuple[float, float] = (0.3, 1.6)
    p_aniso: float = 0.3  # anisotropic gaussian (two sigmas, a rotation)
    p_motion: float = 0.15
    motion_len: tuple[int, int] = (3, 7)
    kernels: tuple[str, ...] = ("bicubic", "bilinear", "box", "lanczos")
    p_noise: float = 0.6
    noise_sigma: tuple[float, float] = (1.0, 12.0)
    p_gray_noise: float = 0.3
    p_jpeg: float = 0.75
    jpeg_quality: tuple[int, int] = (30, 95)
    p_text: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The default training mix of the shipped model.
TRAIN = Degradation()
# The evaluation's real-world track: every op on, moderate strengths, its own fixed seed.
REAL_WORLD = Degradation(
    p_clean=0.0,
    p_blur=1.0,
    blur_sigma=(0.4, 1.2),
    p_aniso=0.0,
    p_motion=0.0,
    kernels=("bicubic", "bilinear", "box", "lanczos"),
    p_noise=1.0,
    noise_sigma=(2.0, 8.0),
    p_gray_noise=0.0,
    p_jpeg=1.0,
    jpeg_quality=(40, 90),
)
REAL_WORLD_SEED = 20240601


@dataclasses.dataclass(frozen=True)
class SecondOrder:
    """Real-ESRGAN's second-order degradation model with BSRGAN's shuffled order: two rounds of
    (blur, resize, noise) in a random order each, each round ending in JPEG, then a resize to the
    pair's size and, in random order, a sinc (ringing) filter and a last JPEG.

    Blur sigmas are in the current image's pixels, noise sigma in 8-bit levels, Poisson scale as
    Real-ESRGAN's (1 = photon noise of about 255 photons at white), JPEG quality in PIL's 1-95.
    """

    p_clean: float = 0.0  # plain PIL bicubic downscale and nothing else
    # how a blur kernel is drawn: isotropic/anisotropic Gaussian, generalised Gaussian, sinc
    p_aniso: float = 0.35
    p_generalized: float = 0.15
    gen_beta: tuple[float, float] = (0.5, 4.0)
    p_sinc_blur: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    p_blur2: float = 0.8
    # resize of each round: up / down / keep, scale range
    p_up: float = 0.2
    p_down: float = 0.7
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    kernels: tuple[str, ...] = ("bicubic", "bilinear", "box", "lanczos")
    # noise of each round: Gaussian or Poisson, colour or grey
    p_noise: float = 1.0
    p_poisson: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 30.0)
    noise_sigma2: tuple[float, float] = (1.0, 25.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    poisson_scale2: tuple[float, float] = (0.05, 2.5)
    p_gray_noise: float = 0.4
    jpeg_quality: tuple[int, int] = (15, 95)
    # sinc (ringing, overshoot) filter at the end, cutoff in radians per pixel
    p_final_sinc: float = 0.8
    sinc_cutoff: tuple[float, float] = (math.pi / 3, math.pi)
    p_shuffle: float = 1.0  # BSRGAN: shuffle the order inside each round
    p_text: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The restore model's training mix (issue 8): the full second-order model.
RESTORE = SecondOrder()


# ---------------------------------------------------------------------------------------- kernels


def gaussian_kernel(sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> np.ndarray:
    """A normalised 2-D Gaussian, odd side of about 6 sigma, rotated by ``theta`` radians."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    radius = max(1, math.ceil(3 * max(sigma_x, sigma_y)))
    ax = np.arange(-radius, radius + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).astype(np.float32)


def motion_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised line of ``length`` pixels at ``angle`` radians (a small camera shake)."""
    size = length if length % 2 else length + 1
    k = np.zeros((size, size), np.float64)
    centre = size // 2
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length):
        x, y = centre + t * math.cos(angle), centre + t * math.sin(angle)
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        # bilinear splat, so any angle gives a smooth, centred line
        for dx, dy, w in (
            (0, 0, (1 - fx) * (1 - fy)),
            (1, 0, fx * (1 - fy)),
            (0, 1, (1 - fx) * fy),
            (1, 1, fx * fy),
        ):
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                k[y0 + dy, x0 + dx] += w
    return (k / k.sum()).astype(np.float32)


def generalized_gaussian_kernel(
    sigma_x: float, sigma_y: float, theta: float, beta: float
) -> np.ndarray:
    """exp(-0.5 * q**beta), q the rotated quadratic form of a Gaussian: beta < 1 peaks harder and
    has heavier tails than a Gaussian (beta = 1), beta > 1 flattens the top (Real-ESRGAN)."""
    radius = min(10, max(1, math.ceil(3 * max(sigma_x, sigma_y))))
    ax = np.arange(-radius, radius + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2) ** beta)
    return (k / k.sum()).astype(np.float32)


def sinc_kernel(cutoff: float, radius: int = 10) -> np.ndarray:
    """A circular ideal low-pass (a 2-D sinc), ``cutoff`` in radians per pixel (pi: none), cut to
    ``2 * radius + 1`` pixels: what sharpening and over-compression leave, ringing at edges."""
    n = 64
    f = np.fft.fftfreq(n) * 2 * math.pi
    fx, fy = np.meshgrid(f, f)
    disc = (np.hypot(fx, fy) <= cutoff).astype(np.float64)
    k = np.fft.fftshift(np.real(np.fft.ifft2(disc)))
    c = n // 2
    k = k[c - radius : c + radius + 1, c - radius : c + radius + 1]
    return (k / k.sum()).astype(np.float32)


def convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Filter an HxWx3 float image with a 2-D kernel, reflect-padded so borders keep their level."""
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    r = kernel.shape[0] // 2
    mode = "reflect" if min(img.shape[:2]) > r else "replicate"
    t = F.pad(t, (r, r, r, r), mode=mode)
    w = torch.from_numpy(kernel)[None, None].expand(3, 1, *kernel.shape)
    return F.conv2d(t, w, groups=3)[0].numpy().transpose(1, 2, 0)


# --------------------------------------------------------------------------------- the operations


def to_float(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def to_pil(arr: np.ndarray) -> Image.Image:
    """Quantise to 8 bits, as every real input is."""
    return Image.fromarray(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8))


def downscale(img: Image.Image, factor: int, kernel: str = "bicubic") -> Image.Image:
    """Shrink by an integer factor with a PIL kernel (PIL antialiases by widening the kernel)."""
    w, h = img.size
    return img.resize((max(1, w // factor), max(1, h // factor)), KERNELS[kernel])


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    """Round-trip through PIL's JPEG encoder (4:2:0 chroma, as cameras and the web do)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def add_noise(
    img: np.ndarray, sigma: float, rng: np.random.Generator, gray: bool = False
) -> np.ndarray:
    """Additive Gaussian noise of ``sigma`` 8-bit levels, the same in all channels if ``gray``."""
    shape = img.shape[:2] + ((1,) if gray else (3,))
    return img + rng.standard_normal(shape, dtype=np.float32) * (sigma / 255.0)


def add_poisson_noise(
    img: np.ndarray, scale: float, rng: np.random.Generator, gray: bool = False
) -> np.ndarray:
    """Photon (shot) noise: variance grows with brightness; ``scale`` 1 is about 255 photons at
    white, larger is noisier. ``gray``: one noise field (from the luma) for all channels."""
    photons = 255.0
    base = img @ np.array([0.299, 0.587, 0.114], np.float32)[:, None] if gray else img
    base = np.clip(base, 0, 1)
    noise = rng.poisson(base * photons).astype(np.float32) / photons - base
    return img + scale * noise


def text_overlay(img: Image.Image, text: str, xy: tuple[int, int]) -> Image.Image:
    """Draw ``text`` in white at ``xy`` (the fastai course's crappify writes the JPEG quality)."""
    img = img.copy()
    size = max(10, img.size[1] // 8)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    ImageDraw.Draw(img).text(xy, text, fill=(255, 255, 255), font=font)
    return img


def text_op(rng: np.random.Generator) -> tuple[str, dict]:
    """The fastai course's overlay: a random two-digit number at a random place."""
    text = str(int(rng.integers(10, 100)))
    return ("text", {"text": text, "x": float(rng.random()), "y": float(rng.random())})


def sample_recipe(
    rng: np.random.Generator, cfg: Degradation, factor: int
) -> list[tuple[str, dict]]:
    """Draw one degradation recipe: an ordered list of ``(op, params)``."""
    if rng.random() < cfg.p_clean:
        return [("downscale", {"factor": factor, "kernel": "bicubic"})]
    blur = None
    if rng.random() < cfg.p_blur:
        if rng.random() < cfg.p_motion:
            blur = (
                "motion_blur",
                {
                    "length": int(rng.integers(cfg.motion_len[0], cfg.motion_len[1] + 1)),
                    "angle": float(rng.uniform(0, math.pi)),
                },
            )
        else:
            sx = float(rng.uniform(*cfg.blur_sigma))
            sy, theta = sx, 0.0
            if rng.random() < cfg.p_aniso:
                sy, theta = float(rng.uniform(*cfg.blur_sigma)), float(rng.uniform(0, math.pi))
            blur = ("gaussian_blur", {"sigma_x": sx, "sigma_y": sy, "theta": theta})
    kernel = str(cfg.kernels[int(rng.integers(len(cfg.kernels)))])
    ops: list[tuple[str, dict]] = []
    # blur before the downscale is lens/focus blur; after it, blur of the small image (stronger)
    blur_first = rng.random() < 0.7
    if blur and blur_first:
        ops.append(blur)
    ops.append(("downscale", {"factor": factor, "kernel": kernel}))
    if blur and not blur_first:
        # sigmas are drawn in HR pixels: convert so the strength is comparable
        name, p = blur
        if name == "gaussian_blur":
            blur = (
                name,
                {
                    "sigma_x": max(0.3, p["sigma_x"] / factor),
                    "sigma_y": max(0.3, p["sigma_y"] / factor),
                    "theta": p["theta"],
                },
            )
        ops.append(blur)
    tail = []
    if rng.random() < cfg.p_noise:
        tail.append(
            (
                "noise",
                {
                    "sigma": float(rng.uniform(*cfg.noise_sigma)),
                    "gray": bool(rng.random() < cfg.p_gray_noise),
                    "seed": int(rng.integers(2**31)),
                },
            )
        )
    if rng.random() < cfg.p_jpeg:
        tail.append(
            ("jpeg", {"quality": int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))})
        )
    if len(tail) == 2 and rng.random() < 0.25:
        tail.reverse()  # noise after compression: a noisy re-encode chain (varied order)
    ops += tail
    if rng.random() < cfg.p_text:
        ops.append(text_op(rng))
    return ops


def _sample_blur(rng: np.random.Generator, cfg: SecondOrder, sigma: tuple) -> tuple[str, dict]:
    """One blur kernel of the second-order model: sinc, generalised or plain Gaussian, isotropic
    or anisotropic."""
    if rng.random() < cfg.p_sinc_blur:
        return ("sinc", {"cutoff": float(rng.uniform(*cfg.sinc_cutoff)), "radius": 10})
    sx = float(rng.uniform(*sigma))
    sy, theta = sx, 0.0
    if rng.random() < cfg.p_aniso:
        sy, theta = float(rng.uniform(*sigma)), float(rng.uniform(0, math.pi))
    if rng.random() < cfg.p_generalized:
        beta = float(rng.uniform(*cfg.gen_beta))
        return ("generalized_blur", {"sigma_x": sx, "sigma_y": sy, "theta": theta, "beta": beta})
    return ("gaussian_blur", {"sigma_x": sx, "sigma_y": sy, "theta": theta})


def _sample_round(
    rng: np.random.Generator, cfg: SecondOrder, second: bool
) -> list[tuple[str, dict]]:
    """Blur, resize and noise (each possibly absent), shuffled, then JPEG."""
    ops: list[tuple[str, dict]] = []
    if not second or rng.random() < cfg.p_blur2:
        ops.append(_sample_blur(rng, cfg, cfg.blur_sigma2 if second else cfg.blur_sigma))
    lo, hi = cfg.resize_range2 if second else cfg.resize_range
    u = rng.random()
    scale = (
        float(rng.uniform(1.0, hi))
        if u < cfg.p_up
        else float(rng.uniform(lo, 1.0))
        if u < cfg.p_up + cfg.p_down
        else 1.0
    )
    kernel = str(cfg.kernels[int(rng.integers(len(cfg.kernels)))])
    if scale != 1.0:
        ops.append(("resize", {"scale": scale, "kernel": kernel}))
    if rng.random() < cfg.p_noise:
        gray = bool(rng.random() < cfg.p_gray_noise)
        seed = int(rng.integers(2**31))
        if rng.random() < cfg.p_poisson:
            scale_range = cfg.poisson_scale2 if second else cfg.poisson_scale
            ops.append(
                ("poisson", {"scale": float(rng.uniform(*scale_range)), "gray": gray, "seed": seed})
            )
        else:
            sigma_range = cfg.noise_sigma2 if second else cfg.noise_sigma
            ops.append(
                ("noise", {"sigma": float(rng.uniform(*sigma_range)), "gray": gray, "seed": seed})
            )
    if rng.random() < cfg.p_shuffle:
        ops = [ops[i] for i in rng.permutation(len(ops))]
    q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    return ops + [("jpeg", {"quality": q})]


def sample_second_order(
    rng: np.random.Generator, cfg: SecondOrder, factor: int
) -> list[tuple[str, dict]]:
    """Draw a second-order recipe: round 1, round 2 (each blur/resize/noise shuffled, then JPEG),
    then the resize to the pair's size, and a sinc filter and a last JPEG in random order."""
    if rng.random() < cfg.p_clean:
        return [("downscale", {"factor": factor, "kernel": "bicubic"})]
    ops = _sample_round(rng, cfg, second=False) + _sample_round(rng, cfg, second=True)
    kernel = str(cfg.kernels[int(rng.integers(len(cfg.kernels)))])
    ops.append(("resize_to", {"factor": factor, "kernel": kernel}))
    tail = [("jpeg", {"quality": int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))})]
    if rng.random() < cfg.p_final_sinc:
        tail.append(("sinc", {"cutoff": float(rng.uniform(*cfg.sinc_cutoff)), "radius": 10}))
        if rng.random() < 0.5:
            tail.reverse()
    ops += tail
    if rng.random() < cfg.p_text:
        ops.append(text_op(rng))
    return ops


def apply_recipe(img: Image.Image, ops: list[tuple[str, dict]]) -> Image.Image:
    """Apply a recipe from ``sample_recipe``; the result is an 8-bit RGB PIL image."""
    img = img.convert("RGB")
    orig = img.size
    for name, p in ops:
        if name == "downscale":
            img = downscale(img, p["factor"], p["kernel"])
        elif name == "resize":  # by a scale of the current size (a round of the second order)
            w, h = img.size
            size = (max(1, round(w * p["scale"])), max(1, round(h * p["scale"])))
            img = img.resize(size, KERNELS[p["kernel"]])
        elif name == "resize_to":  # to the pair's size: the original's divided by the factor
            size = (max(1, orig[0] // p["factor"]), max(1, orig[1] // p["factor"]))
            img = img.resize(size, KERNELS[p["kernel"]])
        elif name == "generalized_blur":
            k = generalized_gaussian_kernel(p["sigma_x"], p["sigma_y"], p["theta"], p["beta"])
            img = to_pil(convolve(to_float(img), k))
        elif name == "sinc":
            img = to_pil(convolve(to_float(img), sinc_kernel(p["cutoff"], p["radius"])))
        elif name == "poisson":
            noisy = add_poisson_noise(
                to_float(img), p["scale"], np.random.default_rng(p["seed"]), p["gray"]
            )
            img = to_pil(noisy)
        elif name == "gaussian_blur":
            img = to_pil(
                convolve(to_float(img), gaussian_kernel(p["sigma_x"], p["sigma_y"], p["theta"]))
            )
        elif name == "motion_blur":
            img = to_pil(convolve(to_float(img), motion_kernel(p["length"], p["angle"])))
        elif name == "noise":
            noisy = add_noise(
                to_float(img), p["sigma"], np.random.default_rng(p["seed"]), p["gray"]
            )
            img = to_pil(noisy)
        elif name == "jpeg":
            img = jpeg(img, p["quality"])
        elif name == "text":
            w, h = img.size
            img = text_overlay(img, p["text"], (int(p["x"] * w * 0.7), int(p["y"] * h * 0.7)))
        else:
            raise ValueError(f"unknown degradation op {name!r}")
    return img


def crappify(
    img: Image.Image,
    factor: int,
    rng: np.random.Generator,
    cfg: Degradation | SecondOrder = TRAIN,
) -> tuple[Image.Image, list[tuple[str, dict]]]:
    """Degrade ``img`` and shrink it by ``factor``: returns the low-quality image and its recipe.
    ``cfg`` is a first-order ``Degradation`` or the ``SecondOrder`` model."""
    if isinstance(cfg, SecondOrder):
        ops = sample_second_order(rng, cfg, factor)
    else:
        ops = sample_recipe(rng, cfg, factor)
    return apply_recipe(img, ops), ops


# ------------------------------------------------------------------------------------------ pairs


def load_images(sources: list[str | Path], min_side: int = 0) -> list[np.ndarray]:
    """Read every image under the given folders (recursively) or files as HxWx3 uint8 arrays.

    Grey images become RGB. JPEG sources are shrunk by 3/4 with an antialiasing filter first, so
    their compression blocks do not become targets the model learns to reproduce.
    """
    paths: list[Path] = []
    for src in sources:
        p = Path(src)
        paths += (
            sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
            if p.is_dir()
            else [p]
        )
    if not paths:
        raise FileNotFoundError(f"no images found in {sources}")
    images = []
    for path in paths:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if path.suffix.lower() in (".jpg", ".jpeg"):
                im = im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.BICUBIC)
            if min(im.size) >= min_side:
                images.append(np.asarray(im))
    return images


def augment(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random flip and rot90 (the 8 dihedral transforms): photos have no preferred orientation."""
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    return np.rot90(arr, int(rng.integers(4)))


def make_pair(
    arr: np.ndarray,
    rng: np.random.Generator,
    lr_size: int,
    factor: int,
    cfg: Degradation,
    out_scale: int,
    aug: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training pair from a random crop of the HxWx3 uint8 ``arr``.

    The target is an HR crop of ``lr_size * factor`` pixels; the input is its degraded copy, shrunk
    by ``factor`` and, for a model of ``out_scale`` < factor, resized back up with bicubic to
    ``lr_size * out_scale`` (the engine does that resize before a scale-1 model).
    Returns (input, target) float32 CHW tensors in [0, 1].
    """
    hr = lr_size * factor
    h, w = arr.shape[:2]
    if h < hr or w < hr:
        raise ValueError(f"image {w}x{h} is smaller than the crop {hr}")
    y, x = int(rng.integers(h - hr + 1)), int(rng.integers(w - hr + 1))
    crop = arr[y : y + hr, x : x + hr]
    if aug:
        crop = augment(crop, rng)
    target = Image.fromarray(np.ascontiguousarray(crop))
    low, _ = crappify(target, factor, rng, cfg)
    if out_scale != factor:
        side = lr_size * factor // out_scale
        low = low.resize((side, side), Image.BICUBIC)
    to_t = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)  # noqa: E731
    return to_t(low), to_t(target)


class PairDataset(torch.utils.data.Dataset):
    """Pairs made on the fly: item ``i`` of epoch ``e`` is fully determined by ``(seed, e, i)``.

    Args:
        images: HxWx3 uint8 arrays (``load_images``).
        length: items per epoch.
        lr_size: input side (before any resize back for a scale-1 model); set between epochs for
            progressive resizing.
        factor: downscale factor of the pairs (2 or 4).
        out_scale: the model's scale (2 for CompactUNet, 1 for a DynamicUnet).
        cfg: the degradation mix.
        seed: base seed; ``epoch`` is set by the training loop.
    """

    def __init__(self, images, length, lr_size, factor=2, out_scale=2, cfg=TRAIN, seed=0, aug=True):
        self.images, self.length, self.lr_size = images, length, lr_size
        self.factor, self.out_scale, self.cfg, self.seed, self.aug = (
            factor,
            out_scale,
            cfg,
            seed,
            aug,
        )
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        need = self.lr_size * self.factor
        # redraw until the image is big enough for this crop size (small T91 images drop out late)
        while True:
            arr = self.images[int(rng.integers(len(self.images)))]
            if min(arr.shape[:2]) >= need:
                break
        return make_pair(arr, rng, self.lr_size, self.factor, self.cfg, self.out_scale, self.aug)


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Write degraded copies of an image and print their recipes."
    )
    ap.add_argument("image", help="a clean image")
    ap.add_argument("--out", default="runs/crappy", help="output folder")
    ap.add_argument("--n", type=int, default=4, help="how many degraded copies")
    ap.add_argument("--factor", type=int, default=2, choices=(1, 2, 4), help="downscale factor")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed, same pixels)")
    ap.add_argument("--real-world", action="store_true", help="use the evaluation's real-world mix")
    ap.add_argument(
        "--second-order",
        action="store_true",
        help="use the restore model's second-order mix (two shuffled rounds, sinc, JPEG 15-95)",
    )
    ap.add_argument("--text", action="store_true", help="add the course's text overlay")
    args = ap.parse_args()
    cfg = RESTORE if args.second_order else REAL_WORLD if args.real_world else TRAIN
    if args.text:
        cfg = dataclasses.replace(cfg, p_text=1.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    img = Image.open(args.image).convert("RGB")
    rng = np.random.default_rng(args.seed)
    for k in range(args.n):
        low, ops = crappify(img, args.factor, rng, cfg)
        low.save(out / f"{Path(args.image).stem}_{k}.png")
        print(k, ops)


if __name__ == "__main__":
    main()
