"""The page's queue (frontend/queue.py): the wait arithmetic, the busy refusal, and one queue shared
by the page's processes through a locked file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from frontend.queue import Ledger, Ticket, WorkerCosts, schedule


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def ticket(name: str, sent: float, estimate: float | None) -> Ticket:
    return Ticket(name, sent, estimate, 1)  # pid 1: always alive


def test_one_worker_runs_them_in_the_order_sent():
    tickets = [ticket("b", 102, 20), ticket("a", 100, 10), ticket("c", 103, 5)]
    slots, ahead = schedule(tickets, now=105, workers=1)
    assert [slot.ticket.id for slot in slots] == ["a", "b", "c"]
    assert [slot.place for slot in slots] == [1, 2, 3]
    # a runs 100-110, b 110-130, c 130-135
    assert [slot.wait for slot in slots] == [5, 25, 30]
    assert [slot.running for slot in slots] == [True, False, False]
    assert ahead == 30  # a new upload starts at 135


def test_the_work_ahead_is_divided_among_the_workers_but_not_ones_own():
    tickets = [ticket("a", 100, 10), ticket("b", 100.5, 10), ticket("c", 101, 10)]
    slots, ahead = schedule(tickets, now=101, workers=2)
    # ahead of c: 20 s of work on two workers = 10 s, from 100; then its own 10 s on one worker
    assert slots[2].wait == pytest.approx(100 + 10 + 10 - 101)
    assert ahead == pytest.approx(100 + 15 - 101)


def test_work_past_its_estimate_counts_as_about_to_finish_and_unknowns_add_nothing():
    slots, ahead = schedule([ticket("late", 0, 10), ticket("x", 1, None)], now=50, workers=1)
    assert slots[0].wait == 0 and slots[0].running
    assert slots[1].wait is None and slots[1].place == 2
    assert ahead == 0
    assert schedule([], now=5, workers=1) == ([], 0.0)


def test_an_upload_is_refused_when_its_wait_is_over_the_limit_and_takes_no_place(tmp_path):
    clock = Clock()
    ledger = Ledger(tmp_path / "queue.json", max_age=600, clock=clock)
    assert ledger.admit("a", 40, workers=1, limit=100) is None
    assert ledger.admit("b", 40, workers=1, limit=100) is None  # waits 80 s
    refusal = ledger.admit("c", 30, workers=1, limit=100)  # would wait 110 s
    assert refusal is not None
    assert (refusal.wait, refusal.ahead, refusal.estimate) == (110, 80, 30)
    assert refusal.in_flight == 2 and refusal.retry_after == 10
    assert "would wait about 110 s" in refusal.message
    assert "2 photos ahead of it, about 80 s of work, then about 30 s its own" in refusal.message
    assert "the page waits at most 100 s. Try again in 10 s." in refusal.message
    assert ledger.admit("d", 20, workers=1, limit=100) is None  # exactly 100 s: fits
    assert ledger.admit("e", None, workers=1, limit=100) is None  # unknown: never refused
    slots, _ = ledger.state(workers=1)
    assert [slot.ticket.id for slot in slots] == ["a", "b", "d", "e"]
    clock.now += 45  # a took 5 s more than its estimate: b started no earlier than its answer
    ledger.release("a")
    slots, ahead = ledger.state(workers=1)
    assert [(slot.ticket.id, slot.place) for slot in slots] == [("b", 1), ("d", 2), ("e", 3)]
    assert ahead == pytest.approx(40 + 20)
    assert slots[0].wait == pytest.approx(40) and slots[0].running


def test_an_upload_too_costly_for_any_wait_is_not_called_busy_and_holds_no_time(tmp_path):
    """Its own estimate over the limit: retrying later cannot help, so it is not refused as busy
    (503 would say "try again"); it goes on to the worker's admission (413), adding no work."""
    clock = Clock()
    ledger = Ledger(tmp_path / "queue.json", max_age=600, clock=clock)
    assert ledger.admit("a", 40, workers=1, limit=100) is None
    clock.now += 1
    assert ledger.admit("huge", 1000, workers=1, limit=100) is None
    clock.now += 1
    assert ledger.admit("b", 49, workers=1, limit=100) is None  # 38 + 49 s: the huge one adds none
    slots, ahead = ledger.state(workers=1)
    assert [slot.ticket.id for slot in slots] == ["a", "huge", "b"]
    assert slots[1].wait is None and ahead == pytest.approx(38 + 49)
    assert ledger.admit("c", 20, workers=1, limit=100) is not None  # 107 s: busy again


def test_tickets_of_dead_processes_and_too_old_ones_are_dropped(tmp_path):
    clock = Clock()
    path = tmp_path / "queue.json"
    ledger = Ledger(path, max_age=600, clock=clock)
    ledger.admit("old", 10, workers=1, limit=100)
    # a page process that was killed while waiting left its ticket behind
    code = (
        "import sys; from frontend.queue import Ledger; "
        "Ledger(sys.argv[1], max_age=600, clock=lambda: 1000.0).admit('orphan', 50, 1, 100)"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)
    written = json.loads(path.read_text())["tickets"]
    assert {entry["id"] for entry in written} == {"old", "orphan"}
    assert [slot.ticket.id for slot in ledger.state(1)[0]] == ["old"]
    clock.now += 601
    assert ledger.state(1) == ([], 0.0)
    assert json.loads(path.read_text())["tickets"] == []


def test_processes_racing_for_the_last_places_cannot_both_take_one(tmp_path):
    """Six processes admit a 40 s upload each at the same moment against a 100 s limit, holding
    their places until all have tried: exactly two fit (40, 80; a third would wait 120 s)."""
    path = tmp_path / "queue.json"
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from frontend.queue import Ledger\n"
        "ledger = Ledger(sys.argv[1], max_age=600)\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.005)\n"
        "refused = ledger.admit(f'p{os.getpid()}', 40.0, 1, 100.0)\n"
        "print('refused' if refused else 'admitted', flush=True)\n"
        "sys.stdin.read()\n"  # keep the place (and the process) until the test is done
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(go)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        # every process imports (seconds on a loaded machine) and then waits for the signal
        go.touch()
        said = [process.stdout.readline().strip() for process in processes]
    finally:
        for process in processes:
            process.communicate("", timeout=60)
    assert sorted(said) == ["admitted"] * 2 + ["refused"] * 4


class FakeClient:
    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def describe_costs(self):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_estimator_is_kept_and_a_failed_fetch_is_not_retried_at_once():
    from enhancer.client import TorchServeError

    clock = Clock(0.0)
    client = FakeClient([TorchServeError(503, "ServiceUnavailable", "down"), (None, 2)])
    costs = WorkerCosts(client, ttl=300, retry=10, clock=clock)
    assert costs.get() == (None, 1) and client.calls == 1
    clock.now = 5
    assert costs.get() == (None, 1) and client.calls == 1  # not asked again within 10 s
    clock.now = 11
    assert costs.get() == (None, 2) and client.calls == 2
    clock.now = 200
    assert costs.get() == (None, 2) and client.calls == 2  # kept for its ttl
