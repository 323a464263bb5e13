"""The shipped model's own speed on a GPU: output MP/s of model calls on batches of tiles, for
each precision (float32, TF32, float16, bfloat16), memory format (contiguous, channels_last) and
batch size, with a CUDA graph replay where it pays, and the fraction of the GPU's arithmetic peak
reached (convolution FLOP from ``torch.utils.flop_counter``). Run by scripts/gpu_bench.sh, which
also runs the engine against the naive baseline (``python -m scripts.bench --device cuda``) and
the tests marked ``gpu``.

    python -m scripts.gpu_bench --json "$OUT/gpu_tiles.json"
    python -m scripts.gpu_bench --dry-run          # on CPU: every code path on a tiny case

``torch.compile`` cannot take the shipped TorchScript file (it compiles Python code, not a
ScriptModule), so the compiled variant is a CUDA graph of the TorchScript call: the same kernels,
the launch overhead gone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from scripts.bench_peers import model_macs_per_output_pixel
from scripts.ops.paths import DEFAULT_MODEL

# Dense tensor-core peaks, TFLOP/s, of the H200 SXM (NVIDIA's data sheet; the H100 SXM's are the
# same). float32 without TF32 runs on the CUDA cores.
PEAK_TFLOPS = {"float32": 67.0, "tf32": 494.7, "float16": 989.4, "bfloat16": 989.4}


def time_calls(fn, reps: int, sync) -> float:
    """Median seconds of ``reps`` calls (after two warm-up calls)."""
    fn()
    fn()
    sync()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def variant(model, precision: str, channels_last: bool, device):
    """The model in ``precision`` ("tf32" is float32 with TF32 matmul/conv) and memory format."""
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(precision, torch.float32)
    net = torch.jit.load(str(model), map_location=device).eval().to(dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, dtype


def measure(args) -> list[dict]:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    macs = model_macs_per_output_pixel(args.model)
    rows = []
    for precision in args.precisions:
        if cuda:
            torch.backends.cudnn.allow_tf32 = precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        for channels_last in (False, True):
            net, dtype = variant(args.model, precision, channels_last, device)
            for batch in args.batches:
                x = torch.rand(batch, 3, args.tile, args.tile, device=device, dtype=dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    y = net(x)
                    if not torch.isfinite(y).all():
                        rows.append({"precision": precision, "batch": batch, "error": "non-finite"})
                        continue
                    out_px = y.shape[0] * y.shape[-1] * y.shape[-2]
                    eager = time_calls(lambda net=net, x=x: net(x), args.reps, sync)
                graphed = None
                if cuda and not args.no_graphs:
                    graphed = graph_seconds(net, x, args.reps, sync)
                best = min(s for s in (eager, graphed) if s is not None)
                flops = out_px * macs * 2 / best
                peak = PEAK_TFLOPS.get(precision) if cuda else None
                rows.append(
                    {
                        "precision": precision,
                        "channels_last": channels_last,
                        "batch": batch,
                        "tile": args.tile,
                        "eager_s": eager,
                        "graph_s": graphed,
                        "output_mp_per_s": out_px / 1e6 / best,
                        "graph_gain": eager / graphed if graphed else None,
                        "tflops": flops / 1e12,
                        "peak_fraction": flops / 1e12 / peak if peak else None,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            del net
            if cuda:
                torch.cuda.empty_cache()
    return rows


def graph_seconds(net, x, reps: int, sync) -> float | None:
    """Median seconds of a CUDA graph replay of ``net(x)``; None when capture fails."""
    try:
        static = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                net(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            net(static)
        return time_calls(graph.replay, reps, sync)
    except RuntimeError as error:
        print(f"CUDA graph capture failed: {error}", file=sys.stderr)
        return None


def markdown(rows: list[dict]) -> str:
    head = "| precision | layout | batch | eager ms | graph ms | output MP/s | TFLOP/s | of peak |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['precision']} | | {r['batch']} | {r['error']} | | | | |")
            continue
        graph = f"{r['graph_s'] * 1e3:.2f}" if r["graph_s"] else "-"
        frac = f"{r['peak_fraction']:.1%}" if r["peak_fraction"] is not None else "-"
        layout = "channels_last" if r["channels_last"] else "contiguous"
        lines.append(
            f"| {r['precision']} | {layout} | {r['batch']} | {r['eager_s'] * 1e3:.2f} | {graph} "
            f"| {r['output_mp_per_s']:.1f} | {r['tflops']:.2f} | {frac} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m scripts.gpu_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precisions", nargs="+", default=["float32", "tf32", "float16", "bfloat16"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 16, 32])
    ap.add_argument("--tile", type=int, default=256, help="input tile side (default 256)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--no-graphs", action="store_true", help="skip the CUDA graph variant")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny: check the code paths")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.device, args.batches, args.tile, args.reps = "cpu", [1, 2], 32, 1
        args.precisions = ["float32", "bfloat16"]
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing measured (use --dry-run to check the code on CPU)")
        return 1
    if not args.model.is_file():
        print(f"model not found: {args.model}")
        return 1
    if torch.cuda.is_available() and not args.dry_run:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = measure(args)
    text = markdown(rows)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "table": text}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
