"""Client-side pacing: rate limits and retry backoff.

Both take the clock as an argument so tests of schedules run instantly.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """A token bucket allowing `per_minute` events a minute, shared between threads.

    The bucket starts full with `burst` tokens (default: one second's worth, at least one),
    so a restart does not fire a minute's allowance at once.
    """

    def __init__(
        self,
        per_minute: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else max(1.0, self.rate)
        self._tokens = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self) -> float:
        """Take one token if there is one.

        Returns 0.0 when a token was taken, else the seconds until one will be available
        (nothing is taken then).
        """
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate

    def take(self, sleep: Callable[[float], object] = time.sleep) -> None:
        """Block until a token is taken."""
        while (wait := self.try_take()) > 0:
            sleep(wait)


def backoff_delay(
    attempt: int,
    retry_after: float | None = None,
    *,
    base: float = 2.0,
    cap: float = 600.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (1 for the first retry).

    Exponential with full jitter (`base * 2**(attempt-1)`, capped at `cap`, scaled by a
    random factor in [0.5, 1.0)). A server's `Retry-After` is a floor: we never come back
    sooner than it asked.
    """
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    delay = ceiling * (0.5 + rng() / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class Wakeup:
    """Wakes the loops waiting for one kind of news: each loop waits on its own Event
    (clearing it is then its own business), and `notify` sets them all."""

    def __init__(self) -> None:
        self._events: list[threading.Event] = []
        self._next = 0

    def subscribe(self, event: threading.Event | None = None) -> threading.Event:
        event = event or threading.Event()
        self._events.append(event)
        return event

    def notify(self) -> None:
        for event in self._events:
            event.set()

    def notify_one(self) -> None:
        """Wake one loop (in turn): for one unit of new work, so that several loops do
        not all race for it."""
        if self._events:
            self._next = (self._next + 1) % len(self._events)
            self._events[self._next].set()
