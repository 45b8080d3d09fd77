"""Shared pytest fixtures.

Every test fails if it leaves a thread running (the watchdog project's habit): a leaked
observer or HTTP server thread is a real bug in shutdown code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.fixtures_emulator", "tests.fixtures_mindee_client", "tests.fuse"]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
