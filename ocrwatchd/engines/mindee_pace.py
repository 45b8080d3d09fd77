"""When to look at a Mindee job, and results that arrived by webhook.

`ProcessingTimes` learns how long the API takes for each kind of file, from the job's own
`created_at`/`completed_at` (the API's clock, so neither our polling schedule nor clock
skew colours it), so the first poll can come when the result is likely there rather than
on the SDKs' fixed 2 s / 1.5 s schedule. `Deliveries` holds results pushed by the webhook
receiver until the poller stores them the way a poll would.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

Kind = tuple[str, int]

WEIGHT = 0.3  # of the newest sample in the moving estimate: a few jobs adapt it
TAKEN_WINDOW = 10.0  # seconds a delivered result's job is not asked for again
KINDS_KEPT = 10_000  # jobs remembered between submit and end (those of a crash are dropped)


def kind_of(path: Path, size: int) -> Kind:
    """A file's kind for timing: its type (suffix) and its size's order of magnitude
    (pages are not known before the API has read the file; size follows them)."""
    return path.suffix.lower(), max(0, int(math.log2(max(size, 1))) // 2)


class ProcessingTimes:
    """Moving estimates of the API's processing seconds, per kind of file and overall
    (for a kind not seen yet), and the kind of each job in flight. Thread-safe."""

    def __init__(self) -> None:
        self._by_kind: dict[Kind, float] = {}
        self._overall: float | None = None
        self._jobs: OrderedDict[str, Kind] = OrderedDict()
        self._lock = threading.Lock()

    def started(self, job_id: str, kind: Kind) -> None:
        with self._lock:
            self._jobs[job_id.lower()] = kind
            while len(self._jobs) > KINDS_KEPT:
                self._jobs.popitem(last=False)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._jobs)

    def expect(self, job_id: str) -> float | None:
        """The expected processing seconds of this job, or None when nothing is known."""
        with self._lock:
            kind = self._jobs.get(job_id.lower())
            known = self._by_kind.get(kind) if kind is not None else None
            return known if known is not None else self._overall

    def ended(self, job_id: str, seconds: float | None) -> None:
        """The job ended (after `seconds` of processing, when the API said)."""
        with self._lock:
            kind = self._jobs.pop(job_id.lower(), None)
            if seconds is None:
                return
            if kind is not None:
                self._by_kind[kind] = _blend(self._by_kind.get(kind), seconds)
            self._overall = _blend(self._overall, seconds)


def _blend(old: float | None, sample: float) -> float:
    return sample if old is None else old + WEIGHT * (sample - old)


class Deliveries:
    """Result bodies pushed by the webhook receiver, by job id, until a poll takes them.

    Bounded (count and bytes, oldest dropped first): a delivery for a job no file here
    follows (another daemon sharing the webhook) must not grow memory. A dropped known
    result is not lost while the API keeps it: the fallback poll fetches it.
    """

    def __init__(
        self,
        *,
        max_count: int = 256,
        max_bytes: int = 256 * 2**20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_count, self.max_bytes = max_count, max_bytes
        self.clock = clock
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._taken: OrderedDict[str, float] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def put(self, job_id: str, body: bytes) -> None:
        with self._lock:
            old = self._bodies.pop(job_id.lower(), None)
            self._size -= len(old) if old is not None else 0
            self._bodies[job_id.lower()] = body
            self._size += len(body)
            while self._bodies and (
                len(self._bodies) > self.max_count or self._size > self.max_bytes
            ):
                _, dropped = self._bodies.popitem(last=False)
                self._size -= len(dropped)

    def take(self, job_id: str) -> bytes | None:
        with self._lock:
            body = self._bodies.pop(job_id.lower(), None)
            if body is not None:
                self._size -= len(body)
                self._taken[job_id.lower()] = self.clock()
                while len(self._taken) > self.max_count:
                    self._taken.popitem(last=False)
            return body

    def just_taken(self, job_id: str, within: float = TAKEN_WINDOW) -> bool:
        """Whether a poll took this job's delivered result in the last `within` seconds:
        a second poll then (a replayed delivery's news, racing the store) is a duplicate."""
        with self._lock:
            when = self._taken.get(job_id.lower())
            return when is not None and self.clock() - when < within
