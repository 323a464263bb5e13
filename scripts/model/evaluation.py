"""Scoring super-resolution the way papers do: Y-channel PSNR/SSIM, the bicubic and real-world
tracks, target checks and the markdown table (``python -m scripts.evaluate`` runs it; the
conventions are documented there).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from scripts.model import crappify

# ------------------------------------------------------------------------------------- metrics


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an HxWx3 RGB array in [0, 255], on the [16, 235] scale (float64)."""
    x = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def shave(x: np.ndarray, border: int) -> np.ndarray:
    return x[border:-border, border:-border] if border > 0 else x


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB; identical inputs give inf."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """'valid' 2-D Gaussian filtering as two 1-D passes (the window is separable): the same sums as
    the 11x11 window, without an 11x11 unfold of every image."""
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM of two grey images (Wang et al. 2004: 11x11 Gaussian, sigma 1.5, K1 .01, K2 .03,
    'valid' filtering as in their MATLAB code), in float64."""
    x = torch.from_numpy(a.astype(np.float64))[None, None]
    y = torch.from_numpy(b.astype(np.float64))[None, None]
    g = _gaussian_1d()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mx**2
    syy = _filter(y * y, g) - my**2
    sxy = _filter(x * y, g) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def score(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) of two HxWx3 uint8 RGB images on Y with ``scale`` pixels shaved."""
    ys, yh = shave(rgb_to_y(sr), scale), shave(rgb_to_y(hr), scale)
    return psnr(ys, yh), ssim(ys, yh)


# ----------------------------------------------------------------------------------- upscalers


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """Quantise as every served output is (the PNG the user gets)."""
    return (t.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy()


def bicubic(lr: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(lr.resize(size, Image.BICUBIC))


def engine_upscaler(
    model_path: str,
    card_path: str | None,
    device: str,
    *,
    level: int = 1,
    enhance_first: bool = False,
    native_path: str | None = None,
):
    """``Enhancer.upscale``: the server's own tiled, multi-pass code (``level`` and
    ``enhance_first`` as the request options; ``native_path``: with the native 4x model, which
    the engine then runs for scales of 4 and more)."""
    from enhancer.engine import Enhancer

    enh = Enhancer.load(model_path, card_path, device=device, native_path=native_path)

    def run(lr: Image.Image, scale: int) -> np.ndarray:
        out = enh.upscale(to_tensor(lr), float(scale), level=level, enhance_first=enhance_first)
        return to_uint8(out)

    return run, enh.card


def family_upscalers(model_path: str, restore_path: str, levels: list[float], device: str) -> dict:
    """One method per ``denoise`` level of a clean/restore pair loaded as the server loads it
    (blends computed at load; each level snapped as a request's would be), named "denoise L"."""
    from enhancer.engine import Enhancer

    enh = Enhancer.load(model_path, device=device, restore_path=restore_path)

    def at(level: float):
        def run(lr: Image.Image, scale: int) -> np.ndarray:
            return to_uint8(enh.upscale(to_tensor(lr), float(scale), denoise=level))

        return run

    return {f"denoise {level:g}": at(level) for level in levels}


def measure_speed(model_path: str, card_path: str | None, image: str, device: str, reps: int = 3):
    """Output megapixels per second of ``Enhancer.upscale`` at 2x on ``image`` (best of ``reps``
    after a warm-up), with the torch thread count it ran with."""
    from enhancer.engine import Enhancer

    enh = Enhancer.load(model_path, card_path, device=device)
    x = to_tensor(Image.open(image).convert("RGB"))
    enh.upscale(x[:, :64, :64], 2.0)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = enh.upscale(x, 2.0)
        best = min(best, time.perf_counter() - t0)
    mp = out.shape[1] * out.shape[2] / 1e6
    return {
        "image": Path(image).name,
        "output_mp": round(mp, 3),
        "seconds": round(best, 3),
        "output_mp_per_s": round(mp / best, 3),
        "threads": torch.get_num_threads(),
        "device": device,
        "tile": enh.card.tile,
        "overlap": enh.card.overlap,
    }


def direct_upscaler(checkpoint: str):
    """A training checkpoint on the whole image, reflect-padded to its multiple, one pass per
    factor of the model's scale (x4 on a 2x model: two passes; on a 4x model: one). For watching
    a run: the shipped numbers come from the engine."""
    from scripts.model.unet import load_trained

    model = load_trained(checkpoint)
    multiple = getattr(model, "multiple", 1)
    factor = getattr(model, "scale", 2)

    @torch.no_grad()
    def run(lr: Image.Image, scale: int) -> np.ndarray:
        passes = int(round(np.log(scale) / np.log(factor)))
        if factor**passes != scale:
            raise ValueError(f"a {factor}x checkpoint cannot make x{scale} in whole passes")
        x = to_tensor(lr)[None]
        for _ in range(passes):
            h, w = x.shape[-2:]
            ph, pw = -h % multiple, -w % multiple
            y = model(F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x)
            x = y[..., : factor * h, : factor * w]
        return to_uint8(x[0])

    return run


# ---------------------------------------------------------------------------------------- main


def hr_images(folder: str) -> list[tuple[str, Image.Image]]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in crappify.IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images in {folder}")
    # grey images (Set14 bridge) are scored as RGB, as the published tables do
    return [(p.name, Image.open(p).convert("RGB")) for p in paths]


def real_world_lr(hr: Image.Image, scale: int, index: int, seed: int) -> tuple[Image.Image, list]:
    """The fixed degradation of image ``index`` of a set, seeded by ``(seed, scale, index)``."""
    rng = np.random.default_rng([seed, scale, index])
    return crappify.crappify(hr, scale, rng, crappify.REAL_WORLD)


# The heavy track: JPEG quality 20-30 after noise sigma 10-15 (issue 8), on the bicubic LR.
HEAVY = {"noise_sigma": (10.0, 15.0), "jpeg_quality": (20, 30)}


def heavy_lr(hr: Image.Image, scale: int, index: int, seed: int) -> Image.Image:
    """Bicubic downscale, gaussian noise, then a low-quality JPEG; seeded per image."""
    rng = np.random.default_rng([seed, scale, index, 1])
    lr = hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC)
    sigma = rng.uniform(*HEAVY["noise_sigma"])
    noisy = np.asarray(lr, dtype=np.float64) + rng.normal(0.0, sigma, (lr.height, lr.width, 3))
    lr = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
    low, high = HEAVY["jpeg_quality"]
    return crappify.jpeg(lr, int(rng.integers(low, high + 1)))


def degraded_lr(track: str, hr: Image.Image, scale: int, index: int, seed: int) -> Image.Image:
    """The low-resolution input of one track for one HR image."""
    if track == "bicubic":
        return hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC)
    if track == "real_world":
        return real_world_lr(hr, scale, index, seed)[0]
    if track == "heavy":
        return heavy_lr(hr, scale, index, seed)
    raise ValueError(f"unknown track {track!r}")


def colour_shift(out: np.ndarray, reference: np.ndarray) -> float:
    """Largest difference, in 8-bit levels, between the per-channel means of two RGB images."""
    mean = lambda a: a.reshape(-1, 3).astype(np.float64).mean(axis=0)  # noqa: E731
    return float(np.abs(mean(out) - mean(reference)).max())


COLOUR_TOLERANCE = 1.0  # levels of 255: a model's output keeps a plain resize's colour


def detail_box(hr: np.ndarray, side: int) -> tuple[int, int, int, int]:
    """The ``side`` x ``side`` window of the HR image with the most detail (gradient energy)."""
    y = rgb_to_y(hr)
    energy = np.abs(np.diff(y, axis=0))[:, :-1] + np.abs(np.diff(y, axis=1))[:-1, :]
    h, w = energy.shape
    side = min(side, h, w)
    best, box = -1.0, (0, 0, side, side)
    step = max(side // 2, 1)
    for top in range(0, h - side + 1, step):
        for left in range(0, w - side + 1, step):
            e = float(energy[top : top + side, left : left + side].sum())
            if e > best:
                best, box = e, (left, top, left + side, top + side)
    return box


def contact_sheet(
    columns: list[tuple[str, np.ndarray]], title: str, width: int = 360, zoom: int = 4
) -> Image.Image:
    """One row of images (each scaled to ``width``) over one row of 4x nearest-neighbour crops of
    the same most detailed region, each labelled."""
    from PIL import ImageDraw

    hr = columns[-1][1]
    crop = detail_box(hr, max(24, min(hr.shape[:2]) // 6))
    side = crop[2] - crop[0]
    h = round(hr.shape[0] * width / hr.shape[1])
    cell_w, label = max(width, side * zoom), 18
    sheet = Image.new("RGB", (cell_w * len(columns), label * 2 + h + side * zoom), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), title, fill="black")
    for k, (name, arr) in enumerate(columns):
        image = Image.fromarray(arr)
        x = k * cell_w
        sheet.paste(image.resize((width, h), Image.LANCZOS), (x, label * 2))
        draw.text((x + 4, label), name, fill="black")
        zoomed = image.crop(crop).resize((side * zoom, side * zoom), Image.NEAREST)
        sheet.paste(zoomed, (x, label * 2 + h))
    return sheet


def evaluate(sets, scales, methods, tracks, seed, log=print, sheets=None) -> list[dict]:
    """Score every method on every set, scale and track: one dict per (track, set, scale).
    With ``sheets`` (a folder), also write a contact sheet per image there."""
    rows = []
    for track in tracks:
        for folder in sets:
            images = hr_images(folder)
            for scale in scales:
                acc = {name: [] for name in ["bicubic", *methods]}
                seconds = {name: 0.0 for name in methods}
                shifts = {name: 0.0 for name in methods}
                for index, (image_name, hr) in enumerate(images):
                    w, h = hr.size
                    hr = hr.crop((0, 0, w - w % scale, h - h % scale))
                    lr = degraded_lr(track, hr, scale, index, seed)
                    target = np.asarray(hr)
                    plain = bicubic(lr, hr.size)
                    acc["bicubic"].append(score(plain, target, scale))
                    columns = [("bicubic", plain)]
                    for name, run in methods.items():
                        t0 = time.perf_counter()
                        out = run(lr, scale)
                        seconds[name] += time.perf_counter() - t0
                        if out.shape != target.shape:
                            raise RuntimeError(f"{name} gave {out.shape}, expected {target.shape}")
                        acc[name].append(score(out, target, scale))
                        shifts[name] = max(shifts[name], colour_shift(out, plain))
                        columns.append((name, out))
                    if sheets:
                        folder_name = Path(folder).name
                        title = f"{track} {folder_name} x{scale} {image_name}"
                        sheet = contact_sheet([*columns, ("original", target)], title)
                        stem = Path(image_name).stem
                        Path(sheets).mkdir(parents=True, exist_ok=True)
                        sheet.save(Path(sheets) / f"{track}_{folder_name}_x{scale}_{stem}.png")
                row = {
                    "track": track,
                    "set": Path(folder).name,
                    "scale": scale,
                    "images": len(images),
                }
                for name, vals in acc.items():
                    row[name] = {
                        "psnr": round(float(np.mean([v[0] for v in vals])), 3),
                        "ssim": round(float(np.mean([v[1] for v in vals])), 4),
                    }
                row["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
                # worst image: the per-channel mean's distance from the bicubic upscale's
                row["colour_shift"] = {k: round(v, 3) for k, v in shifts.items()}
                rows.append(row)
                bad = [k for k, v in shifts.items() if v > COLOUR_TOLERANCE]
                if bad:
                    where = f"{track} {Path(folder).name} x{scale}"
                    log(f"colour shift over {COLOUR_TOLERANCE}/255 in {where}: {bad}")
                log(
                    f"{track:9s} {row['set']:8s} x{scale}: "
                    + ", ".join(f"{k} {row[k]['psnr']:.2f}/{row[k]['ssim']:.4f}" for k in acc)
                )
    return rows


def lq_sheets(folders, methods, scale: int, sheets: str, log=print) -> list[Path]:
    """Contact sheets of photos that have no clean original (real low-quality photos): the input
    enlarged with bicubic | each method, and the 4x zoomed crop of the most detailed region of the
    last method's output. One PNG per image, ``lq_<folder>_x<scale>_<stem>.png``."""
    written = []
    for folder in folders:
        for image_name, lr in hr_images(folder):
            size = (lr.width * scale, lr.height * scale)
            columns = [("bicubic", bicubic(lr, size))]
            columns += [(name, run(lr, scale)) for name, run in methods.items()]
            title = f"{Path(folder).name} x{scale} {image_name} (no original)"
            path = Path(sheets) / f"lq_{Path(folder).name}_x{scale}_{Path(image_name).stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            contact_sheet(columns, title).save(path)
            written.append(path)
            log(f"sheet {path}")
    return written


# The models' targets (issue 8): Y-PSNR floors on the bicubic track for `clean` (VDSR level), and
# for `restore` the gain over bicubic on the real-world track (x2) and on the heavy track.
PSNR_TARGETS = {("set5", 2): 37.5, ("set14", 2): 33.0, ("b100", 2): 31.9, ("set5", 4): 31.0}
GAIN_TARGETS = {("real_world", "b100", 2): 2.0, ("real_world", "kodak24", 2): 2.0}
HEAVY_GAIN_TARGET = 3.0


def target_checks(rows: list[dict], method: str = "model") -> list[dict]:
    """Each target that ``rows`` measure, with the measured figure and whether it is met."""
    checks = []
    for r in rows:
        if method not in r:
            continue
        key, psnr = (r["set"], r["scale"]), r[method]["psnr"]
        gain = psnr - r["bicubic"]["psnr"]
        if r["track"] == "bicubic" and key in PSNR_TARGETS:
            target = PSNR_TARGETS[key]
            what = f"{r['set']} x{r['scale']} PSNR"
            checks.append({"what": what, "target": target, "measured": round(psnr, 2)})
        elif (r["track"], *key) in GAIN_TARGETS:
            target = GAIN_TARGETS[(r["track"], *key)]
            what = f"real-world {r['set']} x{r['scale']} gain over bicubic"
            checks.append({"what": what, "target": target, "measured": round(gain, 2)})
        elif r["track"] == "heavy":
            what = f"heavy {r['set']} x{r['scale']} gain over bicubic"
            checks.append({"what": what, "target": HEAVY_GAIN_TARGET, "measured": round(gain, 2)})
        shift = r.get("colour_shift", {}).get(method)
        if shift is not None:
            what = f"{r['track']} {r['set']} x{r['scale']} colour shift (levels, max over images)"
            checks.append({"what": what, "target": COLOUR_TOLERANCE, "measured": shift})
    for check in checks:
        ceiling = "colour shift" in check["what"]
        measured, target = check["measured"], check["target"]
        check["met"] = measured <= target if ceiling else measured >= target
    return checks


def markdown(rows: list[dict], names: list[str], seed: int, command: str) -> str:
    """The tables: one per track, PSNR / SSIM per method, plus the command that made them."""
    rw = crappify.REAL_WORLD
    headers = {
        "bicubic": "Bicubic track: LR = PIL bicubic downscale of the HR image (as published).",
        "real_world": (
            f"Real-world track (seed {seed}): each HR image gets gaussian blur sigma "
            f"U{rw.blur_sigma} HR px (before the downscale, or after it at 1/scale the sigma), "
            f"a downscale kernel drawn from {list(rw.kernels)}, gaussian noise sigma "
            f"U{rw.noise_sigma}/255 "
            f"and JPEG quality U{rw.jpeg_quality} (noise and JPEG in random order); "
            "`bicubic` is the plain bicubic upscale of that degraded input."
        ),
        "heavy": (
            f"Heavy track (seed {seed}): bicubic downscale, gaussian noise sigma "
            f"U{HEAVY['noise_sigma']}/255, then JPEG quality U{HEAVY['jpeg_quality']}."
        ),
    }
    parts = ["Y-channel PSNR (dB) / SSIM, BT.601, `scale` pixels shaved, 8-bit outputs.\n"]
    for track in dict.fromkeys(r["track"] for r in rows):
        parts.append(headers[track] + "\n")
        cols = ["bicubic", *names]
        parts.append("| set | scale | " + " | ".join(cols) + " |")
        parts.append("|---|---|" + "---|" * len(cols))
        for r in (r for r in rows if r["track"] == track):
            cells = [f"{r[c]['psnr']:.2f} / {r[c]['ssim']:.4f}" for c in cols]
            parts.append(f"| {r['set']} | x{r['scale']} | " + " | ".join(cells) + " |")
        parts.append("")
    checks = target_checks(rows)
    if checks:
        parts.append("Targets (dB):\n")
        parts.append("| target | floor (ceiling for colour) | measured | met |")
        parts.append("|---|---|---|---|")
        for c in checks:
            met = "yes" if c["met"] else "**no**"
            parts.append(f"| {c['what']} | {c['target']:.1f} | {c['measured']:.2f} | {met} |")
        parts.append("")
    parts.append(f"Command: `{command}`\n")
    return "\n".join(parts)


def write_quality(
    card_path: Path, rows: list[dict], seed: int, speed: dict | None, table: str, command: str
) -> None:
    """Store the evaluation as the ``quality`` field of a model card."""
    data = json.loads(Path(card_path).read_text())
    data["quality"] = {
        "protocol": "Y-channel PSNR (dB) and SSIM, ITU-R BT.601, scale pixels shaved, "
        "PIL bicubic LR, "
        "8-bit outputs, model through Enhancer.upscale (tiled, 2x passes)",
        "real_world_track": {
            "seed": seed,
            "degradation": dataclasses.asdict(crappify.REAL_WORLD),
        },
        "results": rows,
        "targets": target_checks(rows),
        "speed": speed,
        "table": table,
        "command": command,
    }
    Path(card_path).write_text(json.dumps(data, indent=2) + "\n")


def val_pairs(
    sources: list[str], scale: int = 2, track: str = "bicubic", upsampled: bool = False
) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(name, model input, HR uint8) per image of ``sources`` (folders or files), for training
    curves: HR cropped to a multiple of ``scale``, LR made as scripts/evaluate.py's ``track`` makes
    it (bicubic: PIL bicubic downscaling; real_world, heavy: the same seeded degradations, per
    image of each source folder); ``upsampled`` (a scale-1 model): the input is the LR resized
    back up with bicubic (what the engine feeds it)."""
    pairs = []
    for src in sources:
        path = Path(src)
        files = (
            sorted(q for q in path.iterdir() if q.suffix.lower() in crappify.IMAGE_SUFFIXES)
            if path.is_dir()
            else [path]
        )
        for index, f in enumerate(files):
            hr = Image.open(f).convert("RGB")
            hr = hr.crop((0, 0, hr.width - hr.width % scale, hr.height - hr.height % scale))
            lr = degraded_lr(track, hr, scale, index, crappify.REAL_WORLD_SEED)
            if upsampled:
                lr = lr.resize(hr.size, Image.BICUBIC)
            x = torch.from_numpy(np.asarray(lr, dtype=np.float32) / 255.0).permute(2, 0, 1)
            pairs.append((f"{path.name}/{f.name}" if path.is_dir() else f.name, x, np.asarray(hr)))
    return pairs
