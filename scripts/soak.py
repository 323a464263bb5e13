"""Soak and performance check of the whole stack (RELIABILITY.md R5 and R6).

    .venv/bin/python -m scripts.soak                      # 30 min soak + perf, own stack
    .venv/bin/python -m scripts.soak --minutes 5          # a shorter soak
    .venv/bin/python -m scripts.soak --minutes 0 --write-baseline   # perf only; new baseline
    .venv/bin/python -m scripts.soak --url http://127.0.0.1:5000    # the stack of `make run`

By default it starts its own stack on free ports, the way ``make run`` does: TorchServe serving
model_store/enhancer.pt (with restore.pt beside it, the clean/restore pair) behind the repository's
config.properties, and the page under gunicorn in front of it. With ``--url`` it drives the page of
``make run`` instead (its TorchServe is found in .run/); start that page with
``FLASK_RATE_LIMIT_PER_MINUTE=0``, or its per-address rate limit answers part of the load with 429.

R6, performance: a fixed-seed request mix (small, medium and large generated photos at 2x) through
the page at concurrency 1, 2 and 4, ``--perf-requests`` each. p50/p90/p99 latency and throughput
per level are compared with the committed baseline (bench/reliability_baseline.json): every figure
must lie within +-30% of it (TorchServe's ``validate_report.py`` rule). ``--write-baseline``
stores this run's figures as the new baseline instead.

R5, soak: ``--minutes`` of the same mix at concurrency 2. Every 10 s the resident memory (RSS) of
the TorchServe JVM, of each Python worker and of the page's gunicorn processes is sampled.
Passes when no request failed, every process grew less than 50 MB (the JVM less than 100 MB) over
the second half (highest sample of the second half minus the sample at the half-way mark), and
p99 in the last sixth (5 of 30 minutes) is at most 1.3x the first sixth's.

Prints a table and writes everything to ``--json`` (default .run/soak.json). Exit status 0 when
every check passed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import requests

from scripts.ops.paths import DEFAULT_MODEL, REPO, RUN_DIR, restore_beside

BASELINE = REPO / "bench" / "reliability_baseline.json"
# (width, height) of the request mix at 2x, and how often each is drawn
MIX = ((96, 64), (192, 128), (320, 240))
MIX_WEIGHTS = (0.5, 0.35, 0.15)
PERF_LEVELS = (1, 2, 4)
TOLERANCE = 0.30
GROWTH_LIMIT_MB = {"jvm": 100.0, "default": 50.0}
SAMPLE_EVERY_S = 10.0


# -- inputs --------------------------------------------------------------------------------------


def mix_images(seed: int = 0) -> list[bytes]:
    """The PNGs of the request mix: photo-like content made in code (scripts.ops.bench.photo)."""
    from PIL import Image

    from scripts.ops.bench import photo

    images = []
    for index, (width, height) in enumerate(MIX):
        out = io.BytesIO()
        Image.fromarray(photo(width, height, seed=seed + index)).save(out, "PNG")
        images.append(out.getvalue())
    return images


def schedule(count: int, seed: int) -> list[int]:
    """``count`` indices into MIX, drawn with MIX_WEIGHTS from a seeded generator."""
    rng = random.Random(seed)
    return rng.choices(range(len(MIX)), weights=MIX_WEIGHTS, k=count)


# -- the stack -----------------------------------------------------------------------------------


@dataclass
class Stack:
    """The page URL, and how to find the processes whose memory is sampled."""

    url: str
    instance: object  # scripts.ops.torchserve.Instance
    page_pid: int
    stop: Callable[[], None] | None = None

    def processes(self) -> dict[str, int]:
        """{"jvm": pid, "worker <pid>": pid, "page master": pid, "page worker <pid>": pid}."""
        found: dict[str, int] = {}
        jvm = self.instance.pid()
        if jvm is not None:
            found["jvm"] = jvm
            try:
                status = self.instance.model_status()
                for worker in status.get("workers", []):
                    if worker.get("pid"):
                        found[f"worker {worker['pid']}"] = int(worker["pid"])
            except Exception:  # noqa: BLE001 - a sample without workers is still a sample
                pass
        found["page master"] = self.page_pid
        try:
            for child in psutil.Process(self.page_pid).children():
                found[f"page worker {child.pid}"] = child.pid
        except psutil.Error:
            pass
        return found


def start_stack(folder: Path, model: Path, log=print) -> Stack:
    """TorchServe (free ports, the repository's config) and the page in front of it."""
    from scripts.ops import archive
    from scripts.ops import page as page_ops
    from scripts.ops import torchserve as serve
    from scripts.ops.properties import free_ports, write_private_config

    mar = archive.build_archive(
        model,
        export_path=folder / "model_store",
        store=True,
        force=True,
        restore=restore_beside(model),
    )
    config = folder / "config.properties"
    write_private_config(config)
    instance = serve.Instance.from_config(folder / "run", config)
    serve.launch(instance, config, mar.parent, f"enhancer={mar.name}")
    try:
        waited = serve.wait_ready(instance, 300)
        log(f"TorchServe READY after {waited:.1f} s ({instance.inference_url})")
        (port,) = free_ports(1)
        logs = folder / "logs"
        command = page_ops.gunicorn_command(
            "127.0.0.1",
            port,
            error_log=logs / "page.log",
            access_log=logs / "page_access.log",
        )
        # one client address sends everything: the per-address rate limit would answer 429s
        env = page_ops.page_env(
            instance.inference_url,
            instance.management_url,
            instance.key_file,
            {"FLASK_RATE_LIMIT_PER_MINUTE": "0"},
        )
        process = page_ops.launch(command, env, logs / "page.log")
        url = f"http://127.0.0.1:{port}"
        page_ops.wait_ready(url, process, None, 60, logs / "page.log")
    except BaseException:
        serve.stop(instance)
        raise
    log(f"page at {url} (gunicorn pid {process.pid})")

    def stop() -> None:
        page_ops.stop_pid(process.pid)
        process.wait(30)
        serve.stop(instance)

    return Stack(url, instance, process.pid, stop)


def attach_stack(url: str) -> Stack:
    """The stack of ``make run``: its TorchServe in .run/ and the page recorded there."""
    from scripts.ops import page as page_ops
    from scripts.ops.torchserve import run_instance

    state = page_ops.read_state()
    if state is None:
        raise SystemExit("no page recorded in .run/page.json: start it with `make run`")
    return Stack(url.rstrip("/"), run_instance(), int(state["pid"]))


# -- load ----------------------------------------------------------------------------------------


@dataclass
class Result:
    started: float  # monotonic
    seconds: float
    status: str  # "200", another status, or the exception's name
    size: int


def post(
    session: requests.Session, url: str, image: bytes, timeout: float = 300
) -> tuple[str, float]:
    started = time.monotonic()
    try:
        response = session.post(
            f"{url}/enhance",
            files={"image": ("photo.png", image, "image/png")},
            data={"scale": "2"},
            timeout=timeout,
        )
        status = str(response.status_code)
        if response.status_code == 200 and not response.content:
            status = "empty"
    except requests.RequestException as error:
        status = type(error).__name__
    return status, time.monotonic() - started


def drive(
    url: str,
    images: list[bytes],
    order: list[int] | None,
    concurrency: int,
    until: float | None = None,
    seed: int = 0,
) -> list[Result]:
    """``concurrency`` clients send images back to back: the ``order`` given (each taken once), or
    a seeded stream until monotonic time ``until``."""
    results: list[Result] = []
    lock = threading.Lock()
    queue = list(order or [])
    rng = random.Random(seed)

    def next_index() -> int | None:
        with lock:
            if order is not None:
                return queue.pop(0) if queue else None
            if time.monotonic() >= until:
                return None
            return rng.choices(range(len(MIX)), weights=MIX_WEIGHTS)[0]

    def client() -> None:
        session = requests.Session()
        while (index := next_index()) is not None:
            started = time.monotonic()
            status, seconds = post(session, url, images[index])
            with lock:
                results.append(Result(started, seconds, status, index))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), p, method="nearest"))


# -- R6 ------------------------------------------------------------------------------------------


def perf(url: str, images: list[bytes], requests_each: int, seed: int, log=print) -> dict:
    """p50/p90/p99 (s), throughput (req/s) and errors per concurrency level."""
    figures = {}
    for level in PERF_LEVELS:
        order = schedule(requests_each, seed + level)
        started = time.monotonic()
        results = drive(url, images, order, level)
        wall = time.monotonic() - started
        ok = [r.seconds for r in results if r.status == "200"]
        figures[str(level)] = {
            "p50_s": percentile(ok, 50),
            "p90_s": percentile(ok, 90),
            "p99_s": percentile(ok, 99),
            "throughput_rps": len(ok) / wall,
            "requests": len(results),
            "errors": len(results) - len(ok),
        }
        f = figures[str(level)]
        log(
            f"  concurrency {level}: p50 {f['p50_s']:.3f} s, p90 {f['p90_s']:.3f} s, p99 "
            f"{f['p99_s']:.3f} s, {f['throughput_rps']:.2f} req/s, {f['errors']} errors"
        )
    return figures


METRICS = ("p50_s", "p90_s", "p99_s", "throughput_rps")


def compare(figures: dict, baseline: dict, tolerance: float = TOLERANCE) -> list[dict]:
    """One row per level and metric: value, baseline, ratio, and whether within +-tolerance."""
    rows = []
    for level, values in figures.items():
        base = baseline.get("levels", {}).get(level)
        for metric in METRICS:
            reference = base.get(metric) if base else None
            ratio = values[metric] / reference if reference else float("nan")
            rows.append(
                {
                    "level": level,
                    "metric": metric,
                    "value": values[metric],
                    "baseline": reference,
                    "ratio": ratio,
                    "pass": bool(reference) and abs(ratio - 1) <= tolerance,
                }
            )
    return rows


# -- R5 ------------------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """RSS (MB) of the stack's processes every ``every`` seconds: {name: [(t, mb), ...]}."""

    def __init__(self, stack: Stack, every: float = SAMPLE_EVERY_S):
        super().__init__(daemon=True)
        self.stack, self.every = stack, every
        self.samples: dict[str, list[tuple[float, float]]] = {}
        self.halt = threading.Event()
        self.t0 = time.monotonic()

    def sample(self) -> None:
        now = time.monotonic() - self.t0
        for name, pid in self.stack.processes().items():
            try:
                rss = psutil.Process(pid).memory_info().rss / 2**20
            except psutil.Error:
                continue
            self.samples.setdefault(name, []).append((now, rss))

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.every)


def growth(samples: dict[str, list[tuple[float, float]]], duration: float) -> list[dict]:
    """Per process: RSS at the start, at the half-way mark, the highest in the second half, and the
    second half's growth (highest minus half-way) against its limit."""
    rows = []
    half = duration / 2
    for name, series in samples.items():
        first_half = [mb for t, mb in series if t <= half]
        second = [mb for t, mb in series if t >= half]
        kind = "jvm" if name == "jvm" else "default"
        limit = GROWTH_LIMIT_MB[kind]
        if not first_half or not second:
            rows.append({"process": name, "samples": len(series), "start_mb": series[0][1],
                         "half_mb": None, "max_second_half_mb": None, "growth_mb": None,
                         "limit_mb": limit, "pass": False,
                         "note": "not alive for the whole run"})  # fmt: skip
            continue
        at_half = first_half[-1]
        rows.append(
            {
                "process": name,
                "samples": len(series),
                "start_mb": series[0][1],
                "half_mb": at_half,
                "max_second_half_mb": max(second),
                "end_mb": series[-1][1],
                "growth_mb": max(second) - at_half,
                "limit_mb": limit,
                "pass": max(second) - at_half < limit,
            }
        )
    return rows


def soak(stack: Stack, images: list[bytes], minutes: float, seed: int, log=print) -> dict:
    duration = minutes * 60
    sampler = Sampler(stack)
    sampler.start()
    started = time.monotonic()
    done: list[Result] = []
    stopper = threading.Event()

    def progress() -> None:
        while not stopper.wait(60):
            elapsed = (time.monotonic() - started) / 60
            latest = {name: series[-1][1] for name, series in sampler.samples.items() if series}
            memory = ", ".join(f"{name} {mb:.0f}" for name, mb in latest.items())
            log(f"  soak {elapsed:.0f}/{minutes:g} min; RSS MB: {memory}")

    reporter = threading.Thread(target=progress, daemon=True)
    reporter.start()
    done = drive(stack.url, images, None, 2, until=started + duration, seed=seed)
    stopper.set()
    sampler.sample()
    sampler.halt.set()
    sampler.join()
    elapsed = time.monotonic() - started
    window = elapsed / 6  # 5 of 30 minutes
    first = [r.seconds for r in done if r.started - started < window and r.status == "200"]
    last = [
        r.seconds for r in done if r.started - started >= elapsed - window and r.status == "200"
    ]
    errors = [r.status for r in done if r.status != "200"]
    memory = growth(sampler.samples, elapsed)
    p99_first, p99_last = percentile(first, 99), percentile(last, 99)
    return {
        "minutes": elapsed / 60,
        "requests": len(done),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "p99_first_s": p99_first,
        "p99_last_s": p99_last,
        "p99_ratio": p99_last / p99_first if first and last else float("nan"),
        "p99_pass": bool(first and last) and p99_last <= 1.3 * p99_first,
        "memory": memory,
        "samples": sampler.samples,
    }


# -- report --------------------------------------------------------------------------------------


def report(result: dict) -> str:
    lines = []
    if "soak" in result:
        s = result["soak"]
        lines += [
            f"R5 soak: {s['minutes']:.1f} min at concurrency 2, {s['requests']} requests, "
            f"{s['errors']} errors {s['error_kinds'] or ''}",
            f"   p99 first sixth {s['p99_first_s']:.3f} s, last sixth {s['p99_last_s']:.3f} s "
            f"(x{s['p99_ratio']:.2f}, limit 1.3): {'pass' if s['p99_pass'] else 'FAIL'}",
            "",
            "| process | samples | start MB | half MB | max 2nd half MB | growth MB | limit "
            "| pass |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in s["memory"]:
            fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
            lines.append(
                f"| {row['process']} | {row['samples']} | {fmt(row['start_mb'])} | "
                f"{fmt(row['half_mb'])} | {fmt(row['max_second_half_mb'])} | "
                f"{fmt(row['growth_mb'])} | {row['limit_mb']:.0f} | "
                f"{'pass' if row['pass'] else 'FAIL'} |"
            )
        lines.append("")
    if "perf" in result:
        lines += [
            f"R6 performance ({result['perf_requests']} requests per level; baseline "
            f"{result.get('baseline_file', '-')}, +-{TOLERANCE:.0%}):",
            "",
            "| concurrency | metric | value | baseline | ratio | pass |",
            "|---|---|---|---|---|---|",
        ]
        for row in result.get("comparison", []):
            base = "-" if row["baseline"] is None else f"{row['baseline']:.3f}"
            lines.append(
                f"| {row['level']} | {row['metric']} | {row['value']:.3f} | {base} | "
                f"{row['ratio']:.2f} | {'pass' if row['pass'] else 'FAIL'} |"
            )
        lines.append("")
    lines.append(f"overall: {'PASS' if result['pass'] else 'FAIL'}")
    return "\n".join(lines)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length (0: perf only)")
    parser.add_argument("--url", help="the page of a running `make run` (default: own stack)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--perf-requests", type=int, default=100, help="per concurrency level")
    parser.add_argument("--no-perf", action="store_true", help="skip R6")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--write-baseline", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RUN_DIR / "soak.json")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows in a log file as it happens

    images = mix_images(args.seed)
    folder = None
    if args.url:
        stack = attach_stack(args.url)
    else:
        folder = Path(tempfile.mkdtemp(prefix="enhancer-soak-"))
        stack = start_stack(folder, args.model)
    result: dict = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": "python -m scripts.soak " + " ".join(sys.argv[1:] if argv is None else argv),
        "mix": [f"{w}x{h}" for w, h in MIX],
    }
    ok = True
    try:
        for index in range(len(MIX)):  # warm-up
            status, _ = post(requests.Session(), stack.url, images[index])
            if status != "200":
                raise SystemExit(f"warm-up request failed: {status}")
        if args.minutes > 0:
            print(f"R5: soak for {args.minutes:g} min at concurrency 2...", flush=True)
            result["soak"] = soak(stack, images, args.minutes, args.seed)
            s = result["soak"]
            ok &= s["errors"] == 0 and s["p99_pass"] and all(r["pass"] for r in s["memory"])
        if not args.no_perf:
            print("R6: performance...", flush=True)
            figures = perf(stack.url, images, args.perf_requests, args.seed)
            result["perf"], result["perf_requests"] = figures, args.perf_requests
            if args.write_baseline:
                args.baseline.parent.mkdir(parents=True, exist_ok=True)
                args.baseline.write_text(
                    json.dumps(
                        {
                            "date": result["date"],
                            "machine": machine(),
                            "mix": result["mix"],
                            "requests_per_level": args.perf_requests,
                            "levels": figures,
                        },
                        indent=2,
                    )  # fmt: skip
                    + "\n"
                )
                print(f"baseline written to {args.baseline}")
            baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else {}
            result["baseline_file"] = os.path.relpath(args.baseline, REPO)
            result["comparison"] = compare(figures, baseline)
            ok &= all(row["pass"] for row in result["comparison"])
            ok &= all(level["errors"] == 0 for level in figures.values())
    finally:
        if stack.stop is not None:
            stack.stop()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    result["pass"] = bool(ok)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"figures in {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
