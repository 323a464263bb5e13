"""Benchmark: the engine against a naive baseline, and end to end through TorchServe.

    .venv/bin/python -m scripts.bench                      # model_store/enhancer.pt, or a stand-in
    .venv/bin/python -m scripts.bench --reps 5 --e2e-reps 15 --json runs/bench.json
    .venv/bin/python -m scripts.bench --device cuda            # on a GPU machine
    .venv/bin/python -m scripts.bench --cases 1x2 4x2 --no-e2e # some cases only
    .venv/bin/python -m scripts.bench --engine-tiles 1024 --engine-precisions bfloat16
                                                     # also the engine with other tiles or dtypes
    .venv/bin/python -m scripts.bench --peers --help  # the CPU peers (scripts/bench_peers.py)
    .venv/bin/python -m scripts.bench --native model_store/enhancer4.pt --cases 1x4 --no-e2e
                                                     # x4: native 4x model vs two 2x passes

Cases: photo-like images of 1 MP (1152x864) and 4 MP (2304x1728), made in code (or ``--photo``
resized), enlarged 2x and 4x. Two methods on the same TorchScript model:

- ``engine``: ``enhancer.engine.Enhancer.upscale`` as the service runs it (tiles in batches, the
  settings of handlers/model-config.yaml, half precision on GPU when the card allows);
- ``naive``: the whole image in one model call per 2x pass, float32, a tensor round trip to the host
  after each pass, no tiling.

Every run is a fresh child process (load, warm up on a small image, one timed run), so the peak
memory of each case is that child's own (``ru_maxrss``; on GPU also ``max_memory_allocated``), and
methods alternate run by run, so the shared, noisy CPU slows both alike. Naive runs that would need
more memory than the machine has free (extrapolated from the measured ones) are skipped and said so.

End to end: a TorchServe on free loopback ports serves the same model with the repository's config
and handler; 1 MP 2x PNG requests alternate with the engine doing the same bytes-to-bytes work in
this process (decode, passes, encode), and the overhead is e2e latency / engine latency - 1.

Output: a markdown table (medians, p95 over the runs, output MP/s from the median, and the model
pixels per output pixel of each case: windows, context and cross-fades over the pixels the passes
deliver), the targets, and the planner's ratio per case for the tile each backend serves with
(``--ratios-only`` prints just that).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.ops.bench import DEFAULT_CASES, run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--peers" in argv:  # the engine against the CPU peers: its own arguments
        from scripts.bench_peers import main as peers_main

        return peers_main([a for a in argv if a != "--peers"])
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="TorchScript model with its card (default: model_store/enhancer.pt, else a stand-in)",
    )
    parser.add_argument(
        "--native",
        type=Path,
        default=None,
        help="the model's native 4x model (model_store/enhancer4.pt): adds the method engine+x4, "
        "the engine with it (x4: one 4x pass), interleaved with engine (2x passes)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=list(DEFAULT_CASES),
        metavar="MPxSCALE",
        help=f"cases among {' '.join(DEFAULT_CASES)} (default: all)",
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="runs per method and case (default: %(default)s)"
    )
    parser.add_argument(
        "--e2e-reps", type=int, default=9, help="end-to-end pairs (default: %(default)s)"
    )
    parser.add_argument(
        "--engine-tiles",
        type=int,
        nargs="*",
        default=[],
        metavar="TILE",
        help="also time the engine at these tile sizes (the `tile` option; dynamic models)",
    )
    parser.add_argument(
        "--engine-precisions",
        nargs="*",
        default=[],
        metavar="DTYPE",
        help="also time the engine with these precisions (e.g. bfloat16; the card must list them)",
    )
    parser.add_argument(
        "--engine-backends",
        nargs="*",
        default=[],
        metavar="BACKEND",
        help="also time the engine on these CPU backends (torchscript, openvino)",
    )
    parser.add_argument(
        "--parity",
        action="store_true",
        help="first print how far each CPU backend's output is from TorchScript's (x2 and x4)",
    )
    parser.add_argument("--no-e2e", action="store_true", help="skip the TorchServe part")
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the naive baseline (engine methods only)"
    )
    parser.add_argument(
        "--tile-sweep",
        type=int,
        nargs="*",
        default=None,
        metavar="TILE",
        help="only time the model on windows of these sizes per CPU backend (--sweep-backends), "
        "interleaved, --reps rounds, and print the output MP/s each tile gives at 1 MP x2",
    )
    parser.add_argument(
        "--sweep-backends",
        nargs="+",
        default=["openvino", "torchscript"],
        help="backends for --tile-sweep (default: %(default)s)",
    )
    parser.add_argument(
        "--ratios-only",
        action="store_true",
        help="print the planner's model pixels per output pixel per case and tile, run nothing",
    )
    parser.add_argument(
        "--photo", type=Path, default=None, help="resize this photo instead of a generated one"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    parser.add_argument("--child", choices=("engine", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
