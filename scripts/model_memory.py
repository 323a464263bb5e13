"""What serving several models costs one worker: time of a first request to a model the ``model``
option names (load, check, backend conversion, calibration) against the next, and the process's
resident memory as models are loaded and unloaded (README, "Several models at once").

    .venv/bin/python -m scripts.model_memory              # the shipped pair + 3 stand-in models

The stand-ins are copies of ``model_store/restore.pt`` under other names (cards renamed), served
beside the shipped pair in a temporary folder; the engine runs with handlers/model-config.yaml's
settings (``max_loaded_models`` among them) and admits by cost as the worker does.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from enhancer.catalog import find_models
from enhancer.engine import Enhancer, configure_cpu_threads
from enhancer.settings import EnhancerSettings
from scripts.ops.paths import MODEL_CONFIG, MODEL_STORE


def resident_mb() -> float:
    """This process's resident set size (VmRSS), in MB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def make_store(folder: Path, extras: int) -> None:
    """The shipped pair, and ``extras`` copies of the restore model named extra-a, extra-b, ..."""
    for name in ("enhancer", "restore"):
        for ext in (".pt", ".json"):
            shutil.copy(MODEL_STORE / f"{name}{ext}", folder / f"{name}{ext}")
    card = json.loads((MODEL_STORE / "restore.json").read_text())
    for i in range(extras):
        name = f"extra-{chr(ord('a') + i)}"
        (folder / name).mkdir()
        shutil.copy(MODEL_STORE / "restore.pt", folder / name / f"{name}.pt")
        (folder / name / f"{name}.json").write_text(json.dumps({**card, "name": name}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.model_memory", description=__doc__)
    parser.add_argument("--extras", type=int, default=3, help="stand-in models (default: 3)")
    parser.add_argument("--size", default="640x480", help="the test image (default: 640x480)")
    parser.add_argument(
        "--backend", default=None, help="auto, torchscript or openvino (default: the config's)"
    )
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    config = yaml.safe_load(MODEL_CONFIG.read_text())
    settings = EnhancerSettings.from_model_config(config)
    if args.backend:
        settings = dataclasses.replace(settings, backend=args.backend)
    configure_cpu_threads(settings)
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    data = buffer.getvalue()
    with tempfile.TemporaryDirectory(prefix="model-memory-") as scratch:
        store = Path(scratch)
        make_store(store, args.extras)
        model, restore = store / "enhancer.pt", store / "restore.pt"
        before = resident_mb()
        started = time.perf_counter()
        extras = find_models(store, skip=[model, restore])
        engine = Enhancer.load(model, settings=settings, restore_path=restore, extra_models=extras)
        engine.admit_by_cost(config)
        print(
            f"default pair loaded and calibrated in {time.perf_counter() - started:.1f} s; "
            f"RSS {before:.0f} -> {resident_mb():.0f} MB "
            f"(max_loaded_models {settings.max_loaded_models}, backend {engine.runner.backend})"
        )
        names = [name for name in engine.catalog if engine.catalog[name].role == "extra"]
        for name in [names[0], names[0], *names[1:], names[0]]:
            started = time.perf_counter()
            engine.enhance(data, {"model": name})
            print(
                f"model={name}: {time.perf_counter() - started:5.1f} s  loaded now: "
                f"{', '.join(engine.loaded):<20}  RSS {resident_mb():.0f} MB"
            )
        started = time.perf_counter()
        engine.enhance(data)
        print(f"default:       {time.perf_counter() - started:5.1f} s  RSS {resident_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
