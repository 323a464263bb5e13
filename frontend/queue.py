"""The page's queue: what it has sent to TorchServe and not yet got back, priced, and shared by
all of the page's processes, so that it can say each upload's place and expected wait, and answer
busy at once what would wait longer than it is willing to wait.

What a wait is made of:
- each upload the page sends is priced by the worker's own estimator (``enhancer.admission.
  Estimator``, the one the worker admits with; the page gets it from TorchServe's
  ``GET /models/enhancer?customized=true``, see ``WorkerCosts``), from the image's size and the
  upload's options;
- TorchServe runs its queue first in, first out on ``workers`` workers, so the page lays its
  tickets out in the order it sent them on one server ``workers`` times as fast (``schedule``): a
  ticket starts when the work sent before it is done (its estimates divided by ``workers``), and
  its answer comes its own estimate later;
- a new upload's expected wait is the estimated work still ahead of it, divided by ``workers``,
  plus its own estimate. Above the page's read timeout to TorchServe (``READ_TIMEOUT``) it would
  end in a 504 after all that waiting; the page answers 503 ServiceBusy at once instead, with
  ``Retry-After`` (the seconds until enough of the work ahead should be done) and a message that
  gives the expected wait and the limit.

How it is shared: gunicorn runs the page in several processes (``scripts.ops.page``: 2 gevent
workers), and any of them may receive an upload, or a browser's question about it. The tickets
live in one small JSON file (``QUEUE_FILE``; by default ``page_queue.json`` beside TorchServe's
key file, so every page in front of one TorchServe shares one queue, and pages in front of
different ones never mix), read and rewritten under an exclusive ``flock``: checking that an upload
fits and taking its place is one step, so two processes cannot both take the last place. A
ticket whose process is gone (killed) or older than the read timeout is dropped when the file is
next read.

What it does not see: requests sent to TorchServe by anyone but the page (``curl``, the batch
command), and work running longer than its estimate (such a ticket counts as about to finish).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from enhancer.admission import Estimator
from enhancer.client import TorchServeClient, TorchServeError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Ticket:
    """An upload the page has sent to TorchServe and not yet got an answer for.

    Attributes:
        id: the browser's ticket id (or one the page made).
        sent: when it was sent (``time.time()``: the same clock in every process).
        estimate: its estimated seconds of work on one worker; None when unknown.
        pid: the page process waiting for it.
    """

    id: str
    sent: float
    estimate: float | None
    pid: int


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where a ticket stands: ``place`` (1 = first), whether its turn has come (``running``),
    and the expected seconds until its answer (``wait``; None when its estimate is unknown)."""

    ticket: Ticket
    place: int
    running: bool
    wait: float | None


def schedule(
    tickets: Sequence[Ticket], now: float, workers: int, since: float = -math.inf
) -> tuple[list[Slot], float]:
    """Lay ``tickets`` out first in, first out on ``workers`` workers, free from ``since`` (when
    the last answer came back: the work still in flight started no earlier).

    Returns:
        Each ticket's slot, in the order they were sent, and the seconds from ``now`` until the
        work they hold is done (what a new ticket waits for before its own turn). A ticket of
        unknown estimate adds no time.
    """
    workers = max(1, workers)
    free = since  # when the (workers-times-as-fast) server is free again
    slots = []
    for place, ticket in enumerate(sorted(tickets, key=lambda t: (t.sent, t.id)), start=1):
        start = max(free, ticket.sent)
        own = ticket.estimate or 0.0
        free = start + own / workers
        wait = None if ticket.estimate is None else max(0.0, start + own - now)
        slots.append(Slot(ticket, place, start <= now, wait))
    return slots, max(0.0, free - now)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why an upload is answered busy: ``wait`` (its expected seconds to an answer: ``ahead``, the
    work before it on ``workers`` workers, plus its own ``estimate``) is over ``limit``, with
    ``in_flight`` uploads before it; ``retry_after``: seconds until enough of them should be
    done."""

    wait: float
    ahead: float
    estimate: float
    limit: float
    in_flight: int
    retry_after: int

    @property
    def message(self) -> str:
        return (
            f"The service is busy: this photo would wait about {self.wait:.0f} s for its result "
            f"({self.in_flight} photo{'s' if self.in_flight != 1 else ''} ahead of it, about "
            f"{self.ahead:.0f} s of work, then about {self.estimate:.0f} s its own), and the "
            f"page waits at most {self.limit:.0f} s. Try again in {self.retry_after} s."
        )


class Ledger:
    """The tickets in flight, in a JSON file shared by the page's processes (see the module
    docstring), with the time the last answer came back. Every method reads the file under an
    exclusive lock, drops stale tickets, and writes it back when it changed."""

    def __init__(
        self, path: str | os.PathLike, max_age: float, clock: Callable[[], float] = time.time
    ):
        self.path = Path(path)
        self.max_age = max_age
        self._clock = clock

    def admit(
        self, ticket_id: str, estimate: float | None, workers: int, limit: float
    ) -> Refusal | None:
        """Take a place for ``ticket_id`` unless its expected wait is over ``limit`` seconds;
        then nothing is taken and the Refusal says why. An upload of unknown estimate is never
        refused (the worker's own admission still applies), nor one whose own estimate alone is
        over ``limit``: no wait makes that fit, so "busy, try again" would be false; it goes on
        to the worker, whose admission by cost (a budget below the page's limit) or pixel caps
        answer 413 with the largest scale that fits. It holds its place as unknown work (it is
        refused in milliseconds), so uploads behind it are not turned away for it."""
        with self._locked() as queue:
            now = self._clock()
            _, ahead = schedule(queue.tickets, now, workers, queue.done)
            if estimate is not None and estimate > limit:
                estimate = None
            if estimate is not None and ahead + estimate > limit:
                wait = ahead + estimate
                return Refusal(
                    wait=wait,
                    ahead=ahead,
                    estimate=estimate,
                    limit=limit,
                    in_flight=len(queue.tickets),
                    retry_after=max(1, math.ceil(wait - limit)),
                )
            queue.tickets = [t for t in queue.tickets if t.id != ticket_id]
            queue.tickets.append(Ticket(ticket_id, now, estimate, os.getpid()))
            return None

    def release(self, ticket_id: str) -> None:
        """The answer for ``ticket_id`` came back (or the upload ended otherwise)."""
        with self._locked() as queue:
            queue.tickets = [t for t in queue.tickets if t.id != ticket_id]
            queue.done = self._clock()

    def state(self, workers: int) -> tuple[list[Slot], float]:
        """``schedule`` of the tickets in flight now."""
        with self._locked() as queue:
            return schedule(queue.tickets, self._clock(), workers, queue.done)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_Queue]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
            handle.seek(0)
            read = _Queue.parse(handle.read())
            now = self._clock()
            queue = _Queue(
                [t for t in read.tickets if now - t.sent <= self.max_age and _alive(t.pid)],
                read.done,
            )
            yield queue
            if queue != read:
                handle.seek(0)
                handle.truncate()
                handle.write(queue.dumps())
                handle.flush()


@dataclasses.dataclass
class _Queue:
    """What the queue file holds: the tickets, and when the last answer came back."""

    tickets: list[Ticket]
    done: float = -math.inf

    @classmethod
    def parse(cls, text: str) -> _Queue:
        try:
            data = json.loads(text or "{}")
            done = data.get("done")
            return cls(
                [Ticket(**entry) for entry in data.get("tickets", [])],
                -math.inf if done is None else float(done),
            )
        except (ValueError, TypeError, AttributeError):
            logger.warning("the page's queue file was unreadable; starting it afresh")
            return cls([])

    def dumps(self) -> str:
        done = None if self.done == -math.inf else self.done
        return json.dumps({"tickets": [dataclasses.asdict(t) for t in self.tickets], "done": done})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerCosts:
    """The worker's estimator and worker count, as TorchServe describes them
    (``TorchServeClient.describe_costs``), kept for ``ttl`` seconds.

    The description is a job in TorchServe's queue (it waits its turn behind the enhancements),
    so a stale one is refreshed in the background while the old one is still used; only the
    first one is fetched while a request waits (the page is idle then, or just started). After
    a failure the next try is ``retry`` seconds later.
    """

    def __init__(
        self,
        client: TorchServeClient,
        ttl: float = 300.0,
        retry: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.ttl = ttl
        self.retry = retry
        self._clock = clock
        self._lock = threading.Lock()
        self._value: tuple[Estimator | None, int] | None = None
        self._fetched = -math.inf
        self._failed = -math.inf
        self._refreshing = False

    def get(self) -> tuple[Estimator | None, int]:
        """(the worker's estimator or None, how many workers serve the model, at least 1)."""
        now = self._clock()
        if self._value is not None:
            if now - self._fetched > self.ttl and now - self._failed > self.retry:
                self._refresh_in_background()
            return self._value
        if now - self._failed <= self.retry:
            return None, 1
        with self._lock:  # one fetch at a time; the others wait for it
            if self._value is None and self._clock() - self._failed > self.retry:
                self._fetch()
        return self._value or (None, 1)

    def _fetch(self) -> None:
        try:
            described, workers = self.client.describe_costs()
            estimator = Estimator.from_json(described) if described else None
        except (TorchServeError, ValueError) as error:
            logger.warning("cannot get the worker's cost estimator: %s", error)
            self._failed = self._clock()
            return
        self._value = (estimator, workers)
        self._fetched = self._clock()

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def refresh():
            try:
                self._fetch()
            finally:
                self._refreshing = False

        threading.Thread(target=refresh, name="worker-costs", daemon=True).start()
