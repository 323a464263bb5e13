"""Measure the face path (enhancer/faces.py): detection rate, face-region Y-PSNR, contact sheets.

    .venv/bin/python -m scripts.evaluate_faces --faces ../shared/data/faces \
        --face model_store/face.pt --sheets ../scratch-faces/sheets

1. Detection rate: the share of images in ``celebahq/`` (each holds one face; detected at 256 px,
   what the face track's inputs measure) and ``real_lq/`` (at their own size) where the detector
   finds at least one face.
2. The face track: the 16 held-out CelebA-HQ images (the first 16 by sorted name, never used in
   training: scripts/face_crops.py), resized to 512 px (the HR), degraded by x4 bicubic
   downscaling (PIL, antialiased) and JPEG quality 40 (deterministic: no random step). Y-PSNR
   (BT.601) inside the face region (the face-path mask placed by the landmarks found on the HR,
   where it is at least 0.5) for bicubic, the general model (the served family at ``--denoise``,
   ``faces=off``) and the face path (the same plus ``faces=auto``), and over the whole image.
3. Contact sheets of ``real_lq/`` at x2 (bicubic | general | face path, the largest face zoomed
   below): PNGs under ``--sheets`` for a person to look at (they have no clean original).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from enhancer import faces
from enhancer.engine import Enhancer
from scripts.face_crops import split
from scripts.model.evaluation import psnr, rgb_to_y


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _run(engine: Enhancer, img: Image.Image, **options) -> tuple[Image.Image, dict]:
    res = engine.enhance(_png(img), {"format": "png", **{k: str(v) for k, v in options.items()}})
    return Image.open(io.BytesIO(res.data)).convert("RGB"), res.headers


def region(hr: np.ndarray, detector: faces.FaceDetector) -> np.ndarray | None:
    found = detector.detect(hr)
    if not found:
        return None
    side = 512
    m = faces.similarity(found[0].landmarks, faces.TEMPLATE * side)
    mask = faces.warp(faces.face_mask(side), faces.invert(m), hr.shape[:2])
    return mask[0, 0].numpy() >= 0.5


def detection_rate(root: Path, detector: faces.FaceDetector) -> None:
    for sub, side in (("celebahq", 256), ("real_lq", None)):
        files = sorted(p for p in (root / sub).iterdir() if p.suffix.lower() in (".png", ".jpg"))
        hit, t0 = 0, time.perf_counter()
        for p in files:
            img = Image.open(p).convert("RGB")
            if side:
                img = img.resize((side, side), Image.Resampling.BICUBIC)
            hit += bool(detector.detect(np.asarray(img)))
        dt = (time.perf_counter() - t0) / len(files)
        print(
            f"detection {sub}: {hit}/{len(files)} ({100 * hit / len(files):.0f}%), "
            f"{dt:.2f} s/image on this machine"
        )


def face_track(root: Path, general: Enhancer, detector, denoise: float) -> None:
    held, _ = split(root / "celebahq")
    rows = []
    for p in held:
        hr_img = Image.open(p).convert("RGB").resize((512, 512), Image.Resampling.LANCZOS)
        hr = np.asarray(hr_img)
        lr = hr_img.resize((128, 128), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        lr.save(buf, "JPEG", quality=40)
        lq = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        mask = region(hr, detector)
        bic = np.asarray(lq.resize((512, 512), Image.Resampling.BICUBIC))
        gen, _ = _run(general, lq, scale=4, denoise=denoise, faces="off")
        fp, headers = _run(general, lq, scale=4, denoise=denoise, faces="auto")
        y = rgb_to_y(hr.astype(np.float64))
        row = [p.name, headers.get("X-Enhance-Faces")]
        for out in (bic, np.asarray(gen), np.asarray(fp)):
            yo = rgb_to_y(np.asarray(out).astype(np.float64))
            row.append(psnr(yo[mask], y[mask]) if mask is not None else float("nan"))
            row.append(psnr(yo[4:-4, 4:-4], y[4:-4, 4:-4]))
        rows.append(row)
        print(
            f"{row[0]:28s} faces {row[1]:>3s}  face region: bicubic {row[2]:.2f} "
            f"general {row[4]:.2f} face path {row[6]:.2f}   whole: {row[3]:.2f} {row[5]:.2f} "
            f"{row[7]:.2f}",
            flush=True,
        )
    arr = np.array([r[2:] for r in rows], dtype=np.float64)
    mean = np.nanmean(arr, 0)
    print(f"\nheld-out CelebA-HQ x4 + JPEG 40 ({len(rows)} images, 512 px HR), Y-PSNR dB")
    print("| | bicubic | general | face path |\n|---|---|---|---|")
    print(f"| face region | {mean[0]:.2f} | {mean[2]:.2f} | {mean[4]:.2f} |")
    print(f"| whole image | {mean[1]:.2f} | {mean[3]:.2f} | {mean[5]:.2f} |")


def sheets(
    root: Path, general: Enhancer, detector, denoise: float, out: Path, only: list[str]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted((root / "real_lq").iterdir()):
        if only and p.name not in only:
            continue
        img = Image.open(p).convert("RGB")
        w, h = img.size
        bic = img.resize((2 * w, 2 * h), Image.Resampling.BICUBIC)
        gen, _ = _run(general, img, scale=2, denoise=denoise, faces="off")
        fp, headers = _run(general, img, scale=2, denoise=denoise, faces="auto")
        panels = [bic, gen, fp]
        sheet = Image.new("RGB", (6 * w, 2 * h + 2 * h), "white")
        for i, im in enumerate(panels):
            sheet.paste(im, (2 * w * i, 0))
        found = detector.detect(np.asarray(img))
        if found:  # the largest face, zoomed 2x more
            x1, y1, x2, y2 = (found[0].box * 2).tolist()
            c = ((x1 + x2) / 2, (y1 + y2) / 2)
            r = min(max(x2 - x1, y2 - y1) * 0.6, w, h)
            box = tuple(int(v) for v in (c[0] - r, c[1] - r, c[0] + r, c[1] + r))
            for i, im in enumerate(panels):
                zoom = im.crop(box).resize((2 * w, 2 * h), Image.Resampling.NEAREST)
                sheet.paste(zoom, (2 * w * i, 2 * h))
        sheet.save(out / f"{p.stem}_faces{headers.get('X-Enhance-Faces')}.png")
        print(f"sheet {p.name}: faces {headers.get('X-Enhance-Faces')}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m scripts.evaluate_faces",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--faces", default="../shared/data/faces")
    ap.add_argument("--model", default="model_store/enhancer.pt")
    ap.add_argument("--restore", default="model_store/restore.pt")
    ap.add_argument("--face", default="model_store/face.pt")
    ap.add_argument(
        "--denoise",
        type=float,
        default=1.0,
        help="the general model's level (1: the restore model the face model is fine-tuned from)",
    )
    ap.add_argument("--sheets", help="write the real_lq contact sheets here")
    ap.add_argument("--only", nargs="*", default=[], help="real_lq file names to sheet")
    ap.add_argument("--skip", nargs="*", default=[], choices=("detect", "track", "sheets"))
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.faces)
    detector = faces.FaceDetector.load()
    if detector is None:
        raise SystemExit("no detector weights: pip install --no-deps facenet-pytorch==2.6.0")
    if "detect" not in args.skip:
        detection_rate(root, detector)
    engine = Enhancer.load(args.model, restore_path=args.restore, face_path=args.face)
    if "track" not in args.skip:
        face_track(root, engine, detector, args.denoise)
    if args.sheets and "sheets" not in args.skip:
        sheets(root, engine, detector, args.denoise, Path(args.sheets), args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
