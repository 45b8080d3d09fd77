"""A stop is quick, even with a large backlog: the real daemon, the local engine, tens of
thousands of real files queued, and real signals.

What a user (and systemd's TimeoutStopSec) relies on: SIGTERM exits 0 within 5 s, Ctrl-C
(SIGINT) exits 130 within 5 s, and a second signal ends the process at once. The backlog is
hard links to one receipt photo (creating 20,000 takes a fraction of a second), with dedupe
off so every file is real OCR work for the workers.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import DATA, DaemonProcess, inbox_settings, wait_for, write_config

RECEIPT = DATA / "mindee" / "file_types" / "receipt.jpg"
STOP_WITHIN = 5.0  # seconds; systemd's default TimeoutStopSec is 90, users expect far less
AT_ONCE = 1.0  # seconds after a second signal
LINKS_PER_COPY = 50_000


def fill_inbox(inbox: Path, files: int) -> None:
    """`files` real files in folders of 100, as a scanner's dated folders would be: hard
    links to copies of one photo, at most LINKS_PER_COPY each (ext4 allows 65,000)."""
    for number in range(files):
        folder = inbox / f"batch{number // 100:04}"
        if number % 100 == 0:
            folder.mkdir()
        source = inbox.parent / f"receipt{number // LINKS_PER_COPY}.jpg"
        if number % LINKS_PER_COPY == 0:
            shutil.copyfile(RECEIPT, source)
        os.link(source, folder / f"scan{number % 100:03}.jpg")


@pytest.fixture
def busy_daemon(tmp_path: Path) -> Iterator[Callable[[int], DaemonProcess]]:
    """Starts `ocrwatchd run` with a number of files queued and returns it once every stage
    is at work: intake settling the backlog, OCR workers reading, the finisher writing (the
    first result exists). A daemon a failed test left running is killed."""
    started: list[DaemonProcess] = []

    def start(files: int) -> DaemonProcess:
        inbox = inbox_settings(tmp_path, settle_seconds=0, dedupe=False)
        fill_inbox(Path(inbox["path"]), files)
        settings = {"state_dir": str(tmp_path / "state"), "engine": "local", "inboxes": [inbox]}
        daemon = DaemonProcess(write_config(tmp_path, settings), env={"MINDEE_V2_API_KEY": ""})
        started.append(daemon)
        return at_work(daemon.start(), Path(inbox["outbox"]))

    yield start
    for daemon in started:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()
        daemon.close()


def at_work(daemon: DaemonProcess, outbox: Path) -> DaemonProcess:
    assert daemon.process is not None
    process = daemon.process
    wait_for(
        lambda: next(outbox.rglob("*.json"), None) or process.poll() is not None,
        timeout=90,
        what="the first result",
    )
    assert process.poll() is None, daemon.log()
    return daemon


def timed_stop(daemon: DaemonProcess, signum: int) -> tuple[int, float]:
    """Send `signum`; return the exit code and the seconds until the process was gone."""
    assert daemon.process is not None
    started = time.monotonic()
    daemon.process.send_signal(signum)
    code = daemon.process.wait(timeout=60)
    return code, time.monotonic() - started


def stop_report(daemon: DaemonProcess, elapsed: float) -> str:
    """How long the stop took, what the daemon said about it and how much work it still
    did after the signal (which is what makes a stop slow)."""
    lines = daemon.log().splitlines()
    begun = next((n for n, line in enumerate(lines) if "stopping (" in line), len(lines))
    after = lines[begun + 1 :]
    said = [line for line in after if "ocrwatchd.daemon" in line or "Traceback" in line]
    transitions = sum(1 for line in after if "ocrwatchd.lifecycle" in line)
    return "\n".join(
        [
            f"exited after {elapsed:.2f} s; {transitions} file transition(s) logged after"
            " the stop began",
            *lines[begun : begun + 1],
            *said,
        ]
    )


@pytest.mark.parametrize(
    ("signum", "expected", "files"), [(signal.SIGTERM, 0, 20_000), (signal.SIGINT, 130, 2_000)]
)
def test_a_busy_daemon_stops_within_5_seconds(busy_daemon, signum, expected, files):
    daemon = busy_daemon(files)
    code, elapsed = timed_stop(daemon, signum)
    name = signal.Signals(signum).name
    print(f"{name} with {files:,} files queued: {stop_report(daemon, elapsed)}")
    assert code == expected, stop_report(daemon, elapsed)
    assert elapsed <= STOP_WITHIN, stop_report(daemon, elapsed)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_daemon_with_100000_files_queued_stops_within_5_seconds(busy_daemon, request):
    markers = request.config.getoption("markexpr")
    if "slow" not in markers or "not slow" in markers:
        pytest.skip("a soak test (about a minute): run it with -m slow")
    daemon = busy_daemon(100_000)
    code, elapsed = timed_stop(daemon, signal.SIGTERM)
    print(f"SIGTERM with 100,000 files queued: {stop_report(daemon, elapsed)}")
    assert code == 0, stop_report(daemon, elapsed)
    assert elapsed <= STOP_WITHIN, stop_report(daemon, elapsed)


@pytest.mark.parametrize(
    ("first", "second"), [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)]
)
def test_a_second_signal_ends_the_stop_at_once(busy_daemon, first, second):
    daemon = busy_daemon(2_000)
    assert daemon.process is not None
    daemon.process.send_signal(first)
    wait_for(lambda: "stopping (" in daemon.log(), timeout=10, what="the stop to begin")
    code, elapsed = timed_stop(daemon, second)
    # The first stop may already have ended, with its own code: that is quick enough too.
    first_code = 130 if first == signal.SIGINT else 0
    assert code in (128 + second, first_code), stop_report(daemon, elapsed)
    assert elapsed <= AT_ONCE, stop_report(daemon, elapsed)
