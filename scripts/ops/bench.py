"""The benchmark's work: engine vs naive baseline vs TorchServe end to end (``python -m
scripts.bench`` parses the arguments; what is measured is documented there).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from enhancer.admission import model_overhead
from enhancer.card import ModelCard, file_sha256
from enhancer.contract import MODEL_NAME, option_header
from enhancer.engine import Enhancer, configure_cpu_threads
from enhancer.passes import plan_passes
from enhancer.settings import EnhancerSettings
from scripts.ops.paths import DEFAULT_MODEL, MODEL_CONFIG

SIZES = {"1": (1152, 864), "4": (2304, 1728)}  # 1.0 and 4.0 MP, multiples of 32
DEFAULT_CASES = ("1x2", "1x4", "4x2", "4x4")
STANDIN = {"nf": (48, 64, 128, 256), "blocks": (2, 1, 2, 2), "tile": 256, "overlap": 32}


# -- inputs --------------------------------------------------------------------------------------


def photo(width: int, height: int, source: Path | None = None, seed: int = 0) -> np.ndarray:
    """A (height, width, 3) uint8 photo: ``source`` resized, or made in code (gradients, edges,
    texture), so PNG sizes and model work look like a real photo's."""
    if source is not None:
        from PIL import Image

        with Image.open(source) as image:
            return np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC))
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack(
        [
            0.5 + 0.4 * np.sin(x / width * 6.2 + 0.3),
            0.5 + 0.4 * np.cos(y / height * 5.1),
            0.5 + 0.3 * np.sin((x + y) / 37.0),
        ],
        axis=-1,
    )
    rgb[((x // 53 + y // 41) % 3 == 0)] *= 0.8  # hard edges
    rgb += rng.normal(0, 0.02, rgb.shape)  # texture
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG", compress_level=3)
    return out.getvalue()


def standin_model(folder: Path) -> Path:
    """The project's CompactUNet with the training defaults, random weights, traced and carded."""
    from scripts.model.unet import CompactUNet

    torch.manual_seed(0)
    model = CompactUNet(STANDIN["nf"], STANDIN["blocks"]).eval()
    tile = STANDIN["tile"]
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 3, tile, tile))
    path = folder / "enhancer.pt"
    torch.jit.save(traced, str(path))
    card = {
        "name": "enhancer",
        "version": "bench-standin",
        "scale": 2,
        "multiple": model.multiple,
        "tile": tile,
        "overlap": STANDIN["overlap"],
        "dtypes": ["float32", "float16", "bfloat16"],
        "sha256": file_sha256(path),
        "dynamic": True,
        "training": {
            "note": "random weights: a stand-in with the default model's architecture, for timing"
        },
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    path.with_suffix(".json").write_text(json.dumps(card, indent=2))
    return path


def service_settings() -> EnhancerSettings:
    import yaml

    return EnhancerSettings.from_model_config(yaml.safe_load(MODEL_CONFIG.read_text()))


# -- one measured run (child process) ------------------------------------------------------------


def naive_upscale(
    model: torch.jit.ScriptModule,
    card: ModelCard,
    rgb: torch.Tensor,
    scale: float,
    device: torch.device,
) -> torch.Tensor:
    """The baseline: per pass, the whole image to the device, one float32 model call, back."""
    import torch.nn.functional as F

    height, width = rgb.shape[1:]
    current = rgb
    for step in plan_passes(width, height, scale, model_scale=card.scale):
        x = current.unsqueeze(0).to(device)
        if card.scale == 1:  # a restoring model runs at the target size
            x = F.interpolate(x, size=step.dst[::-1], mode="bicubic", align_corners=False)
        pad_h, pad_w = -x.shape[2] % card.multiple, -x.shape[3] % card.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        with torch.inference_mode():
            y = model(x)
        s = card.scale
        y = y[..., : s * (x.shape[2] - pad_h), : s * (x.shape[3] - pad_w)]
        if tuple(y.shape[-2:]) != step.dst[::-1]:
            y = F.interpolate(y, size=step.dst[::-1], mode="bicubic", align_corners=False)
        current = y.clamp(0, 1)[0].cpu()
    return current


def naive_overhead(width: int, height: int, scale: float, card: ModelCard) -> float:
    """Model pixels per output pixel of ``naive_upscale``: each pass padded to the multiple only."""
    model_pixels = pass_pixels = 0
    for step in plan_passes(width, height, scale):
        w, h = step.dst if card.scale == 1 else step.src
        m = card.multiple
        model_pixels += (-(-w // m) * m) * (-(-h // m) * m)
        pass_pixels += w * h
    return model_pixels / pass_pixels


def child(args: argparse.Namespace) -> None:
    """Load, warm up, run one case once, print a JSON line of measurements."""
    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.split("x"))
    settings = service_settings()
    torch.set_num_threads(settings.cpu_threads or len(os.sched_getaffinity(0)))
    rgb = torch.from_numpy(photo(width, height, args.photo)).permute(2, 0, 1).float().div(255)
    small = rgb[:, :96, :128].clone()
    if args.child == "engine":
        if args.precision:
            settings = dataclasses.replace(settings, precision=args.precision)
        if args.backend:
            settings = dataclasses.replace(settings, backend=args.backend)
        configure_cpu_threads(settings)
        enhancer = Enhancer.load(
            args.model, device=device, settings=settings, native_path=args.native
        )
        backend = enhancer.runner.backend
        tile = args.tile or enhancer.tile
        # the planner's ratio is the 2x plan's: none is given for the native 4x path
        overhead = (
            None if args.native else model_overhead(width, height, args.scale, enhancer.card, tile)
        )

        def run(image):
            return enhancer.upscale(image, args.scale, tile=args.tile)
    else:
        card = ModelCard.load(Path(args.model).with_suffix(".json"))
        model = torch.jit.load(str(args.model), map_location=device).eval()

        def run(image):
            return naive_upscale(model, card, image, args.scale, device)

        backend = "torchscript"
        tile, overhead = None, naive_overhead(width, height, args.scale, card)

    run(small)  # warm-up: allocator, kernels, CUDA context
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_now_mb()
    started = time.perf_counter()
    out = run(rgb)
    if device.type == "cuda":
        torch.cuda.synchronize()
    latency = time.perf_counter() - started
    expected = (round(args.scale * height), round(args.scale * width))
    assert tuple(out.shape[1:]) == expected, (tuple(out.shape), expected)
    result = {
        "latency_s": latency,
        "rss_before_mb": rss_before,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else None,
        "threads": torch.get_num_threads(),
        "backend": backend,
        "tile": tile,
        "model_px_per_output_px": overhead,
    }
    print("RESULT " + json.dumps(result))


def backend_parity(model: Path, args) -> str:
    """The largest difference, in 8-bit levels, between each CPU backend's output and
    TorchScript's, on the benchmark photo at 1 MP, x2 and x4."""
    settings = service_settings()
    configure_cpu_threads(settings)
    rgb = torch.from_numpy(photo(*SIZES["1"], args.photo)).permute(2, 0, 1).float().div(255)
    loaded = {
        name: Enhancer.load(model, settings=dataclasses.replace(settings, backend=name))
        for name in ("torchscript", "openvino")
    }
    lines = []
    for scale in (2.0, 4.0):
        reference = loaded["torchscript"].upscale(rgb, scale)
        for name, enhancer in loaded.items():
            if name == "torchscript":
                continue
            if enhancer.runner.backend != name:
                lines.append(f"parity x{scale:g}: {name} not available here")
                continue
            diff = (enhancer.upscale(rgb, scale) - reference).abs()
            lines.append(
                f"parity x{scale:g}: {name} vs torchscript, max {float(diff.max()) * 255:.4f} "
                f"levels, mean {float(diff.mean()) * 255:.6f} levels"
            )
    return "\n".join(lines)


def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(method: str, model: Path, size: tuple[int, int], scale: float, args) -> dict:
    """Run one measured case in a fresh process.

    ``method`` is "naive", "engine", "engine@TILE" (another tile size), "engine:DTYPE" (another
    precision than model-config.yaml's), "engine/BACKEND" (another CPU backend) or "engine+x4"
    (with the native 4x model ``--native``: passes.py).
    """
    method, native, _ = method.partition("+x4")
    method, _, backend = method.partition("/")
    kind, _, precision = method.partition(":")
    kind, _, tile = kind.partition("@")
    command = [
        sys.executable,
        "-m",
        "scripts.bench",
        "--child",
        kind,
        "--model",
        str(model),
        "--device",
        args.device,
        "--size",
        f"{size[0]}x{size[1]}",
        "--scale",
        str(scale),
    ]
    if tile:
        command += ["--tile", tile]
    if precision:
        command += ["--precision", precision]
    if backend:
        command += ["--backend", backend]
    if native:
        command += ["--native", str(args.native)]
    if args.photo:
        command += ["--photo", str(args.photo)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{method} {size} x{scale} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1][7:])


# -- the cases -----------------------------------------------------------------------------------


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def largest_pass_input(size: tuple[int, int], scale: float) -> int:
    return max(step.src[0] * step.src[1] for step in plan_passes(size[0], size[1], scale))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def engine_methods(args) -> list[str]:
    """The engine as configured, then at each extra tile size, precision and CPU backend."""
    return [
        "engine",
        *(["engine+x4"] if args.native else []),
        *(f"engine@{tile}" for tile in args.engine_tiles),
        *(f"engine:{dtype}" for dtype in args.engine_precisions),
        *(f"engine/{backend}" for backend in args.engine_backends),
    ]


def bench_cases(model: Path, args) -> list[dict]:
    rows = []
    naive_mb_per_px = (
        None  # working memory per pixel of the largest naive pass input, once measured
    )
    for case in args.cases:
        mp, scale = case.split("x")
        size, scale = SIZES[mp], float(scale)
        out_mp = round(scale * size[0]) * round(scale * size[1]) / 1e6
        methods = [*engine_methods(args), *([] if args.no_naive else ["naive"])]
        runs: dict[str, list[dict]] = {method: [] for method in methods}
        skip_naive = None
        if (
            naive_mb_per_px is None
            and not args.no_naive
            and args.device == "cpu"
            and largest_pass_input(size, scale) > 2e6
        ):
            # never start a large naive run blind: measure a small one first
            probe = run_child("naive", model, (576, 432), 2.0, args)
            naive_mb_per_px = (probe["rss_peak_mb"] - probe["rss_before_mb"]) / (576 * 432)
        if naive_mb_per_px is not None and args.device == "cpu":
            need = naive_mb_per_px * largest_pass_input(size, scale)
            if need > 0.5 * available_mb():
                skip_naive = (
                    f"needs about {need / 1024:.0f} GiB, {available_mb() / 1024:.0f} GiB available"
                )
        for rep in range(args.reps):
            order = methods if rep % 2 == 0 else methods[::-1]
            for method in order:
                if method == "naive" and skip_naive:
                    continue
                result = run_child(method, model, size, scale, args)
                runs[method].append(result)
                print(
                    f"  {case} {method:11s} run {rep + 1}/{args.reps}: "
                    f"{result['latency_s']:.2f} s, "
                    f"peak RSS {result['rss_peak_mb']:.0f} MB",
                    flush=True,
                )
        if runs.get("naive") and args.device == "cpu":
            work = max(r["rss_peak_mb"] - r["rss_before_mb"] for r in runs["naive"])
            per_px = work / largest_pass_input(size, scale)
            naive_mb_per_px = max(naive_mb_per_px or 0.0, per_px)
        for method, results in runs.items():
            latencies = [r["latency_s"] for r in results]
            row = {
                "case": case,
                "input": f"{size[0]}x{size[1]}",
                "scale": scale,
                "method": method,
                "output_mp": out_mp,
                "runs": len(results),
            }
            if not results:
                row["skipped"] = skip_naive
            else:
                p50 = statistics.median(latencies)
                row.update(
                    p50_s=p50,
                    p95_s=percentile(latencies, 95),
                    mp_per_s=out_mp / p50,
                    peak_rss_mb=max(r["rss_peak_mb"] for r in results),
                    work_mb=max(r["rss_peak_mb"] - r["rss_before_mb"] for r in results),
                    device_peak_mb=max((r["device_peak_mb"] or 0) for r in results) or None,
                    latencies=latencies,
                    backend=results[0]["backend"],
                    tile=results[0].get("tile"),
                    model_px_per_output_px=results[0].get("model_px_per_output_px"),
                )
            rows.append(row)
    return rows


# -- end to end ----------------------------------------------------------------------------------


def bench_e2e(model: Path, args) -> dict:
    """1 MP 2x PNG through TorchServe, alternating with the same work by the engine in-process."""
    import requests

    from scripts.ops import archive
    from scripts.ops import torchserve as serve
    from scripts.ops.properties import write_private_config

    size = SIZES["1"]
    data = png_bytes(photo(*size, args.photo))
    folder = Path(tempfile.mkdtemp(prefix="enhancer-bench-"))
    try:
        mar = archive.build_archive(
            model, export_path=folder / "model_store", store=True, force=True
        )
        config = folder / "config.properties"
        write_private_config(config)
        instance = serve.Instance.from_config(folder / "run", config)
        serve.launch(instance, config, mar.parent, f"{MODEL_NAME}={mar.name}")
        try:
            serve.wait_ready(instance, 300)
            settings = service_settings()
            enhancer = Enhancer.load(model, device=args.device, settings=settings)
            configure_cpu_threads(settings)
            url = f"{instance.inference_url}/predictions/{MODEL_NAME}"
            headers = {
                "Authorization": f"Bearer {instance.key()}",
                "Content-Type": "application/octet-stream",
                option_header("scale"): "2",
                option_header("format"): "png",
            }
            session = requests.Session()

            def e2e() -> float:
                started = time.perf_counter()
                response = session.post(url, data=data, headers=headers, timeout=600)
                took = time.perf_counter() - started
                if response.status_code != 200:
                    raise RuntimeError(
                        f"TorchServe answered {response.status_code}: {response.text[:300]}"
                    )
                return took

            def engine() -> float:
                started = time.perf_counter()
                enhancer.enhance(data, {"scale": "2", "format": "png"})
                return time.perf_counter() - started

            e2e(), engine()  # warm-up both
            times: dict[str, list[float]] = {"engine": [], "torchserve": []}
            for rep in range(args.e2e_reps):
                for name in ("engine", "torchserve") if rep % 2 == 0 else ("torchserve", "engine"):
                    times[name].append(engine() if name == "engine" else e2e())
                print(
                    f"  e2e run {rep + 1}/{args.e2e_reps}: engine {times['engine'][-1]:.2f} s, "
                    f"TorchServe {times['torchserve'][-1]:.2f} s",
                    flush=True,
                )
        finally:
            serve.stop(instance)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    engine_p50, ts_p50 = statistics.median(times["engine"]), statistics.median(times["torchserve"])
    pairs = [t / e - 1 for e, t in zip(times["engine"], times["torchserve"], strict=True)]
    return {
        "input": f"{size[0]}x{size[1]}",
        "scale": 2,
        "png_bytes": len(data),
        "runs": args.e2e_reps,
        "engine_p50_s": engine_p50,
        "engine_p95_s": percentile(times["engine"], 95),
        "torchserve_p50_s": ts_p50,
        "torchserve_p95_s": percentile(times["torchserve"], 95),
        "overhead": ts_p50 / engine_p50 - 1,
        "overhead_pairs_median": statistics.median(pairs),
        "times": times,
    }


# -- report --------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    text = f"{cpu}, {len(os.sched_getaffinity(0))} cores available, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def report(rows: list[dict], e2e: dict | None, model_text: str, args) -> str:
    lines = [
        f"Machine: {machine()}",
        f"Model: {model_text}",
        f"Device: {args.device}; runs per case: {args.reps}",
        "",
    ]
    gpu = args.device != "cpu"
    head = (
        "| case | method | tile | model px per output px | runs | p50 s | p95 s | output MP/s "
        "| peak RSS MB | working MB |"
    )
    if gpu:
        head += " peak device MB |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        name = f"{row['input']} x{row['scale']:g} ({row['output_mp']:.0f} MP out)"
        if "skipped" in row:
            lines.append(
                f"| {name} | {row['method']} | | | 0 | skipped: {row['skipped']} | | | | |"
                + (" |" if gpu else "")
            )
            continue
        shown = row["method"] in ("engine", "engine+x4")
        method = row["method"] + (f" ({row['backend']})" if shown else "")
        ratio = row.get("model_px_per_output_px")
        line = (
            f"| {name} | {method} | {row.get('tile') or 'whole'} | "
            f"{'' if ratio is None else f'{ratio:.3f}'} | {row['runs']} | {row['p50_s']:.2f} | "
            f"{row['p95_s']:.2f} | "
            f"{row['mp_per_s']:.2f} | {row['peak_rss_mb']:.0f} | {row['work_mb']:.0f} |"
        )
        if gpu:
            line += f" {row['device_peak_mb'] or 0:.0f} |"
        lines.append(line)
    lines.append("")
    by = {(r["case"], r["method"]): r for r in rows if "skipped" not in r}
    memory = "peak device" if gpu else "peak RSS"
    key = "device_peak_mb" if gpu else "peak_rss_mb"
    for case in args.cases:
        naive = by.get((case, "naive"))
        for method in engine_methods(args):
            engine = by.get((case, method))
            if engine and naive:
                lines.append(
                    f"- {case} {method}: throughput "
                    f"{engine['mp_per_s'] / naive['mp_per_s']:.2f}x naive, "
                    f"{memory} {(engine[key] or 0) / (naive[key] or 1):.2f}x naive, "
                    f"working memory {engine['work_mb'] / max(naive['work_mb'], 1):.2f}x naive"
                )
        served = by.get((case, "engine"))
        native = by.get((case, "engine+x4"))
        if served and native:
            lines.append(
                f"- {case} engine+x4 (native 4x model) vs engine (2x passes): throughput "
                f"{native['mp_per_s'] / served['mp_per_s']:.2f}x"
            )
        for backend in args.engine_backends:
            other = by.get((case, f"engine/{backend}"))
            if served and other:
                lines.append(
                    f"- {case} engine ({served.get('backend', '?')}) vs engine/{backend}: "
                    f"throughput {served['mp_per_s'] / other['mp_per_s']:.2f}x"
                )
    if e2e:
        lines += [
            "",
            "| end to end, 1152x864 x2 PNG | runs | p50 s | p95 s |",
            "|---|---|---|---|",
            f"| engine in-process (bytes to bytes) | {e2e['runs']} | {e2e['engine_p50_s']:.2f} | "
            f"{e2e['engine_p95_s']:.2f} |",
            f"| through TorchServe (HTTP, token, queue, worker) | {e2e['runs']} | "
            f"{e2e['torchserve_p50_s']:.2f} | "
            f"{e2e['torchserve_p95_s']:.2f} |",
            "",
            f"- TorchServe overhead: {100 * e2e['overhead']:+.1f}% (p50 / p50 - 1); "
            f"median of paired runs {100 * e2e['overhead_pairs_median']:+.1f}%",
        ]
    return "\n".join(lines)


def overhead_report(card: ModelCard, cases: list[str], tiles: dict[str, int]) -> str:
    """The planner's model pixels per output pixel for each case and tile (no model run):
    ``tiles`` maps a label (the backend that serves with it) to the tile."""
    head = "| case | " + " | ".join(f"{label} (tile {tile})" for label, tile in tiles.items())
    lines = [
        f"Tiling overhead, model pixels per output pixel (overlap {card.overlap}, blend "
        f"{card.overlap if card.blend is None else card.blend}, grid {card.multiple}):",
        "",
        head + " |",
        "|" + "---|" * (len(tiles) + 1),
    ]
    for case in cases:
        mp, scale = case.split("x")
        width, height = SIZES[mp]
        ratios = [
            f"{model_overhead(width, height, float(scale), card, tile):.3f}"
            for tile in tiles.values()
        ]
        lines.append(f"| {width}x{height} x{scale} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def tile_sweep(model: Path, backends: list[str], tiles: list[int], reps: int) -> str:
    """Model throughput per window size and backend, and what it makes of a 1 MP x2 pass once the
    planner's overhead at that tile is paid: the tile each backend should serve with.

    Each backend loads the model once (float32 on this CPU, the service's threads); the window
    sizes run interleaved, ``reps`` rounds, two windows per call (the service's tile batch), and
    the median seconds per model pixel is kept."""
    from enhancer.runner import ModelRunner

    settings = service_settings()
    configure_cpu_threads(settings)
    card = ModelCard.load(model.with_suffix(".json"))
    width, height = SIZES["1"]
    lines = [
        "| backend | tile | model MP/s (median) | model px per output px, 1 MP x2 | "
        "output MP/s, 1 MP x2 (model only) |",
        "|---|---|---|---|---|",
    ]
    for backend in backends:
        runner = ModelRunner(model, card, torch.device("cpu"), "float32", backend)
        batch = settings.tile_batch_cpu
        times: dict[int, list[float]] = {tile: [] for tile in tiles}
        generator = torch.Generator().manual_seed(0)
        inputs = {t: torch.rand(batch, 3, t, t, generator=generator) for t in tiles}
        for tile in tiles:  # warm-up: compile each shape once
            runner(inputs[tile])
        for rep in range(reps):
            for tile in tiles if rep % 2 == 0 else tiles[::-1]:
                started = time.perf_counter()
                runner(inputs[tile])
                times[tile].append((time.perf_counter() - started) / (batch * tile * tile))
        for tile in tiles:
            per_px = statistics.median(times[tile])
            ratio = model_overhead(width, height, 2.0, card, tile)
            lines.append(
                f"| {runner.backend} | {tile} | {1e-6 / per_px:.3f} | {ratio:.3f} | "
                f"{4 * 1e-6 / (per_px * ratio):.3f} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def served_tiles(card: ModelCard, extra: list[int]) -> dict[str, int]:
    """The tiles the engine serves this card with per backend (engine.Enhancer), and ``extra``."""
    settings = service_settings()
    tiles = {"torchscript": card.tile}
    if card.dynamic and settings.openvino_tile:
        tiles["openvino"] = max(card.tile, settings.openvino_tile // card.multiple * card.multiple)
    for tile in extra:
        tiles[f"tile {tile}"] = tile
    return tiles


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed arguments ask for; print (and write) the report."""
    if args.child:
        child(args)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 1
    for case in args.cases:
        if case not in DEFAULT_CASES:
            print(f"bench: unknown case {case}: use {' '.join(DEFAULT_CASES)}", file=sys.stderr)
            return 2
    scratch = Path(tempfile.mkdtemp(prefix="enhancer-bench-model-"))
    try:
        model = args.model or DEFAULT_MODEL
        if args.model is None and not model.exists():
            model = standin_model(scratch)
            card = json.loads(model.with_suffix(".json").read_text())
            model_text = (
                f"STAND-IN (no model_store/enhancer.pt yet): CompactUNet nf={STANDIN['nf']} "
                f"blocks={STANDIN['blocks']}, {card['parameters']:,} parameters, random weights, "
                f"tile {STANDIN['tile']}, overlap {STANDIN['overlap']}"
            )
        else:
            # a private copy, checked against its card: a new export landing in model_store/
            # during the run must not mix two models into one table
            snapshot = scratch / "enhancer.pt"
            shutil.copy(model, snapshot)
            shutil.copy(model.with_suffix(".json"), snapshot.with_suffix(".json"))
            card = ModelCard.load(snapshot.with_suffix(".json"))
            card.verify(snapshot)
            model_text = (
                f"{model} ({card.name} {card.version}, sha256 {card.sha256[:12]}, "
                f"scale {card.scale}, tile {card.tile}, overlap {card.overlap})"
            )
            model = snapshot
        print(f"bench: {model_text}", flush=True)
        overheads = overhead_report(
            ModelCard.load(model.with_suffix(".json")),
            args.cases,
            served_tiles(ModelCard.load(model.with_suffix(".json")), args.engine_tiles),
        )
        print(overheads + "\n", flush=True)
        if args.ratios_only:
            return 0
        if args.tile_sweep:
            print(tile_sweep(model, args.sweep_backends, args.tile_sweep, args.reps), flush=True)
            return 0
        if args.parity:
            print(backend_parity(model, args), flush=True)
        args.model = model
        rows = bench_cases(model, args)
        e2e = None if args.no_e2e else bench_e2e(model, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = report(rows, e2e, model_text, args) + "\n\n" + overheads
    print("\n" + text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"rows": rows, "e2e": e2e, "model": model_text, "machine": machine()},
                indent=2,
                default=str,
            )
        )
    return 0
