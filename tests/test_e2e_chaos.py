"""Chaos without paying twice: the real daemon against an emulator that answers 15 % of
requests with 500, 10 % with 429, 5 % with a malformed body, resets 3 % and hangs 3 %
past the request timeout. Every file must end done, and the jobs created must be at most
one per file plus one per enqueue whose answer was lost after the job was made."""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path

from tests.helpers import (
    FIXTURES,
    DaemonProcess,
    drop,
    env_for,
    jobs,
    mindee_config,
    wait_for,
    write_config,
)
from tests.mindee_emulator import Fault, MindeeEmulator

SAMPLE = (FIXTURES / "default_sample.jpg").read_bytes()
FILES = 40
REQUEST_TIMEOUT = 1.0
# A request's faults in a row: bounded, so that the retry policy (5 attempts with backoff)
# is not what this test measures, nor its minutes of backoff.
MOST_IN_A_ROW = 1


class Chaos:
    """Draws one fault (or none) per request, seeded; counts the enqueues whose job was
    made but whose answer the daemon never read."""

    def __init__(self, seed: int = 8) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.in_a_row: Counter[str] = Counter()
        self.lost_enqueues = 0
        self.injected: Counter[str] = Counter()

    def __call__(self, route: str, key: str) -> Fault | None:
        with self.lock:
            draw = self.rng.random()
            if self.in_a_row[key] >= MOST_IN_A_ROW:
                draw = 1.0
            kind, fault = self._fault(draw, route)
            if fault is None:
                self.in_a_row[key] = 0
                return None
            self.in_a_row[key] += 1
            self.injected[kind] += 1
            # An enqueue that is processed but not answered made a job the daemon cannot
            # know of. Elsewhere the request is not processed (a result fetched and lost
            # would be gone from an API that deletes it on fetch: no client can help that).
            fault.process = route == "enqueue" and kind in ("malformed", "hang", "reset-after")
            if fault.process:
                self.lost_enqueues += 1
            return fault

    def _fault(self, draw: float, route: str) -> tuple[str, Fault | None]:
        if draw < 0.15:
            return "500", Fault(status=500)
        if draw < 0.25:
            return "429", Fault(status=429)
        if draw < 0.30:
            broken = '{"job": {"id": ' if route != "result" else '{"inference": {"id'
            return "malformed", Fault(status=200, body=broken)
        if draw < 0.33:
            kind = "reset-after" if self.rng.random() < 0.5 else "reset"
            return kind, Fault(drop=True)
        if draw < 0.36:
            return "hang", Fault(delay=REQUEST_TIMEOUT + 0.5)
        return "none", None


def test_every_file_ends_done_and_no_job_is_paid_twice(tmp_path: Path, emulator: MindeeEmulator):
    chaos = Chaos()
    emulator.chaos = chaos
    settings = mindee_config(tmp_path, emulator.url, request_timeout=REQUEST_TIMEOUT)
    config, env = write_config(tmp_path, settings), env_for(emulator)
    inbox = Path(settings["inboxes"][0]["path"])
    out = Path(settings["inboxes"][0]["outbox"])
    with DaemonProcess(config, env) as daemon:
        for n in range(FILES):
            drop(inbox / f"scan-{n:02}.jpg", SAMPLE + str(n).encode())
        wait_for(
            lambda: len(list(out.glob("*.json"))) == FILES,
            timeout=60,
            what=f"{FILES} results (injected: {dict(chaos.injected)})",
        )
        emulator.chaos = None  # the CLI's and the stop's requests are not under test
        rows = jobs(config, env)
        assert daemon.stop() == 0
    assert Counter(row["state"] for row in rows) == {"done": FILES}
    made = len(emulator.enqueued)
    assert made <= FILES + chaos.lost_enqueues, (made, chaos.lost_enqueues, chaos.injected)
    # The chaos really happened, of every kind.
    assert {"500", "429", "malformed", "hang"} <= set(chaos.injected)
    assert not list(out.glob("*.tmp"))
