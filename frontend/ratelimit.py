"""A per-client rate limit on uploads: a token bucket per remote address.

Each client (``request.remote_addr``) may start ``burst`` uploads at once and then ``per_minute``
a minute; past that, POST /enhance answers 429 ``TooManyRequests`` with ``Retry-After``, the
seconds until the next upload is allowed. The defaults (frontend/__init__.py) are far above what
the page itself sends: it uploads two photos at a time, each taking at least the model's time.

What holds where:
- The state lives in one gunicorn worker process (a lock makes it safe for its greenlets or
  threads). With N workers a client may get up to N times the limit, depending on which worker
  the kernel hands each connection to; ``scripts.ops.page`` runs 2.
- Behind a reverse proxy every client has the proxy's address: all of them share one bucket.
  Put the limit in the proxy instead (or set it there per real client), and raise or turn off
  this one (``RATE_LIMIT_PER_MINUTE=0``).
"""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    """Token buckets keyed by client address, at most ``max_clients`` of them in memory."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000, clock=None):
        if per_minute < 0 or burst < 1:
            raise ValueError("rate limit: per_minute must be >= 0 (0: off) and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # client: (tokens, when)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, client: str) -> int:
        """Take one upload for ``client``: 0 if allowed, else the seconds to wait (at least 1)."""
        if not self.enabled:
            return 0
        with self._lock:
            now = self._clock()
            tokens, when = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                self._prune(now)
                return 0
            self._buckets[client] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _prune(self, now: float) -> None:
        # Forget full buckets (they equal a new one); if still too many, the oldest.
        if len(self._buckets) <= self.max_clients:
            return
        full_after = self.burst / self.rate
        self._buckets = {
            client: state for client, state in self._buckets.items() if now - state[1] < full_after
        }
        while len(self._buckets) > self.max_clients:
            self._buckets.pop(next(iter(self._buckets)))
