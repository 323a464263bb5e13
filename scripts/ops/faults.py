"""Fault drills against a running TorchServe: ``kill -9`` of the worker under load (RELIABILITY.md
R1), counting the requests each kill loses.

``kill_under_load`` keeps ``concurrency`` clients enhancing one image back to back, kills the
model's worker process ``kills`` times (each once the previous one has recovered and settled), and
reports, per kill, the requests that failed while it was in flight and how long until the next
success. With ``retry=True`` the clients are ``enhancer.client.TorchServeClient.enhance`` (a worker
death is sent once more, as the page does); with ``retry=False`` they post once, as a plain client
would, which shows what the kill itself costs.

    from scripts.ops.faults import kill_under_load
    report = kill_under_load(instance.client, png, kills=3, retry=True)
    print(report.summary())
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from enhancer.client import TorchServeClient, TorchServeError


@dataclass
class Outcome:
    """One request: when it was sent and answered, and how it ended ("ok" or the error kind)."""

    started: float
    ended: float
    result: str


@dataclass
class KillReport:
    """What ``kill_under_load`` saw.

    Attributes:
        retry: whether the clients retried a worker death once.
        kill_times: monotonic time of each kill.
        recovery_s: per kill, seconds from the kill to the next successful answer.
        ready_s: per kill, seconds from the kill until a new worker process is READY.
        lost: per kill, the requests in flight at the kill that failed.
        outcomes: every request.
    """

    retry: bool
    kill_times: list[float] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    ready_s: list[float] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.result != "ok"]

    def summary(self) -> str:
        kinds = sorted({outcome.result for outcome in self.failed})
        return (
            f"{'with' if self.retry else 'without'} retry: {len(self.kill_times)} kills under "
            f"load, {len(self.outcomes)} requests, {len(self.failed)} failed "
            f"({', '.join(kinds) or 'none'}); lost per kill {self.lost}; new worker READY after "
            f"{', '.join(f'{s:.1f}' for s in self.ready_s)} s; next success after "
            f"{', '.join(f'{s:.1f}' for s in self.recovery_s)} s"
        )


def worker_pid(client: TorchServeClient) -> int | None:
    """The pid of the model's READY worker, if it has one."""
    for worker in client.model_status().get("workers", []):
        if worker.get("status") == "READY" and worker.get("pid"):
            return int(worker["pid"])
    return None


def _one(client: TorchServeClient, image: bytes, options: Mapping[str, str], retry: bool) -> str:
    try:
        if retry:
            result = client.enhance(image, options)
            try:
                for _ in result.chunks:
                    pass
            finally:
                result.close()
            return "ok"
        headers = {"Content-Type": "application/octet-stream"}
        headers.update({f"X-Enhance-{name.capitalize()}": v for name, v in options.items()})
        response = client.call(
            "POST",
            f"{client.inference_url}/predictions/{client.model_name}",
            data=image,
            headers=headers,
        )
        response.close()
        return "ok" if response.status_code == 200 else f"{response.status_code}"
    except TorchServeError as error:
        return error.kind


def kill_under_load(
    client: TorchServeClient,
    image: bytes,
    *,
    kills: int = 3,
    concurrency: int = 4,
    retry: bool = True,
    options: Mapping[str, str] | None = None,
    warmup_s: float = 3.0,
    settle_s: float = 3.0,
    recovery_timeout_s: float = 120.0,
    log: Callable[[str], None] = print,
) -> KillReport:
    """Kill the worker ``kills`` times while ``concurrency`` clients keep enhancing ``image``.

    Raises:
        RuntimeError: the model has no READY worker to kill, or did not recover in time.
    """
    options = dict(options or {})
    report = KillReport(retry=retry)
    lock = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            started = time.monotonic()
            result = _one(client, image, options, retry)
            with lock:
                report.outcomes.append(Outcome(started, time.monotonic(), result))

    threads = [threading.Thread(target=work, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(warmup_s)
        for number in range(kills):
            pid = worker_pid(client)
            if pid is None:
                raise RuntimeError("the model has no READY worker to kill")
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            report.kill_times.append(killed)
            log(f"kill {number + 1}: worker pid {pid} killed")
            ready = False
            while True:
                if not ready:
                    now = worker_pid(client)
                    if now is not None and now != pid:
                        ready = True
                        report.ready_s.append(time.monotonic() - killed)
                with lock:
                    after = [o for o in report.outcomes if o.result == "ok" and o.started > killed]
                if after and ready:
                    report.recovery_s.append(min(o.ended for o in after) - killed)
                    break
                if time.monotonic() - killed > recovery_timeout_s:
                    raise RuntimeError(f"no success within {recovery_timeout_s:.0f} s of a kill")
                time.sleep(0.1)
            time.sleep(settle_s)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=recovery_timeout_s)
    for killed in report.kill_times:
        report.lost.append(sum(1 for o in report.failed if o.started <= killed <= o.ended))
    log(report.summary())
    return report
