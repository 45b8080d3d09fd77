"""Shared pytest fixtures.

Every test fails if it leaves a thread running (the watchdog project's habit): a leaked
observer or HTTP server thread is a real bug in shutdown code. The session fails if it
leaves a process running: a daemon's OCR worker, forkserver or resource tracker outliving
it is the same bug one level up.
"""

from __future__ import annotations

import contextlib
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrwatchd.engines import lifeline

pytest_plugins = ["tests.fixtures_emulator", "tests.fixtures_mindee_client", "tests.fuse"]

# Every process this session starts inherits it, however deep, even once orphaned.
SESSION_MARK = "OCRWATCHD_TEST_SESSION"


def marked_processes(mark: str) -> dict[int, str]:
    """Return {pid: command line} of the live processes whose environment holds `mark`."""
    needle = f"{SESSION_MARK}={mark}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(") ", 1)[1].startswith("Z"):
                continue  # a zombie: ended, its parent has yet to reap it
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # ended meanwhile, or not ours to read
    return found


@pytest.fixture(autouse=True, scope="session")
def no_leaked_processes() -> Iterator[None]:
    mark = uuid.uuid4().hex
    os.environ[SESSION_MARK] = mark
    lifeline.install()
    yield
    # Workers first: this process's own forkserver waits for them before it can stop.
    deadline = time.monotonic() + 10
    ours = {
        pid
        for pid in (
            multiprocessing.forkserver._forkserver._forkserver_pid,
            multiprocessing.resource_tracker._resource_tracker._pid,
        )
        if pid is not None
    }
    while (leaked := set(marked_processes(mark)) - ours) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {pid: command for pid, command in marked_processes(mark).items() if pid in leaked}
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the next run must not find them either
    multiprocessing.forkserver._forkserver._stop()
    multiprocessing.resource_tracker._resource_tracker._stop()
    while (after := marked_processes(mark)) and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    assert not left, f"processes outlived the test session: {left}"
    assert not after, f"processes outlived the test session: {after}"


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
