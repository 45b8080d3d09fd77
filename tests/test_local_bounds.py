"""The local engine bounded: limits on a file's pixels, pages, time and memory, and OCR
processes that end with the daemon, whether it is stopped or killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from ocrwatchd.engines.local import LocalEngine, ocr_document
from ocrwatchd.errors import FileRejected
from tests.helpers import (
    FIXTURES,
    ROOT,
    DaemonProcess,
    cli,
    drop,
    inbox_settings,
    wait_for,
    write_config,
)
from tests.test_local_engine import LINES, text_image

FILE_TYPES = FIXTURES / "file_types"
NO_KEY = {"MINDEE_V2_API_KEY": ""}
HUGE_REASON = "huge.png is 12000\u00d712000 = 144 Mpx per page, over local.max_pixels_per_page"


def ocr(path: Path, **limits: Any) -> dict[str, Any]:
    body = ocr_document(path, alias=str(path), languages=["eng"], tessdata_dir=None, **limits)
    inference: dict[str, Any] = json.loads(body)["inference"]
    return inference


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12000 x 12000 pixels, mostly white: a few hundred kB that decode to 144 MB and more."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    image = Image.new("L", (12_000, 12_000), 255)
    image.paste(0, (1000, 1000, 3000, 1200))
    image.save(path, optimize=False)
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("page") / "invoice.png"
    text_image().save(path, dpi=(300, 300))
    return path


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


# -- limits -------------------------------------------------------------------------------


def test_a_huge_image_fails_before_it_is_decoded(huge_png: Path) -> None:
    started = time.monotonic()
    with pytest.raises(FileRejected) as caught:
        ocr(huge_png)
    assert str(caught.value) == f"{HUGE_REASON} (100000000)"
    assert time.monotonic() - started < 2


def test_ocr_command_on_a_huge_image_stays_small(tmp_path: Path, huge_png: Path) -> None:
    config = write_config(
        tmp_path, {"state_dir": str(tmp_path / "state"), "inboxes": [inbox_settings(tmp_path)]}
    )
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "ocrwatchd", "ocr", str(huge_png), "-c", str(config)],
            env={**os.environ, **NO_KEY},
            stdout=stdout,
            stderr=stderr,
            cwd=ROOT,
        )
    # wait4 gives this child's own peak memory, which Popen.wait would not.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 1
    assert out.read_bytes() == b""
    assert HUGE_REASON in err.read_text()
    assert usage.ru_maxrss / 1024 < 500, f"peak RSS {usage.ru_maxrss / 1024:.0f} MB"


def test_a_document_over_max_pages_fails_before_its_first_page(tmp_path: Path) -> None:
    with pytest.raises(FileRejected) as caught:
        ocr(FILE_TYPES / "blank.pdf", max_pages=5)
    assert str(caught.value) == "blank.pdf has 10 pages, over local.max_pages (5)"
    tiff = tmp_path / "fax.tif"
    first, second = text_image(LINES[:2], dpi=100), text_image(LINES[2:], dpi=100)
    first.save(tiff, save_all=True, append_images=[second])
    with pytest.raises(FileRejected, match=r"^fax\.tif has 2 pages, over local\.max_pages \(1\)$"):
        ocr(tiff, max_pages=1)
    assert ocr(FILE_TYPES / "blank.pdf", max_pages=10)["file"]["page_count"] == 10


def test_a_file_over_its_time_fails_with_the_time_reason(page: Path) -> None:
    with pytest.raises(FileRejected) as caught:
        ocr(page, max_seconds_per_file=0.01)
    assert str(caught.value) == (
        "invoice.png took more than 0.01 s to read, over local.max_seconds_per_file (0.01)"
    )


# -- the same limits in the worker processes ------------------------------------------------


@pytest.fixture
def small_engine() -> Iterator[LocalEngine]:
    engine = LocalEngine(
        workers=1,
        languages=["eng"],
        tessdata_dir=None,
        max_pages=5,
        max_seconds_per_file=60,
        max_worker_memory_mb=320,
    )
    yield engine
    assert engine.close() == 0


def test_workers_refuse_over_limit_files_and_go_on(
    small_engine: LocalEngine, huge_png: Path, page: Path, tmp_path: Path
) -> None:
    with pytest.raises(FileRejected, match=re.escape(HUGE_REASON)):
        small_engine.submit(huge_png, "/in/huge.png").result(timeout=60)
    with pytest.raises(FileRejected, match=r"over local\.max_pages"):
        small_engine.submit(FILE_TYPES / "blank.pdf", "/in/blank.pdf").result(timeout=60)
    # Under the pixel limit but over the memory limit once decoded: 108 MB of RGB.
    big = tmp_path / "big.png"
    Image.new("RGB", (6000, 6000), (255, 255, 255)).save(big)
    with pytest.raises(FileRejected) as caught:
        small_engine.submit(big, "/in/big.png").result(timeout=60)
    assert str(caught.value) == (
        "big.png needs more memory to read than local.max_worker_memory_mb (320) allows"
    )
    [pid] = small_engine.worker_pids()
    assert peak_rss_mb(pid) < 300
    body = small_engine.submit(page, "/in/invoice.png").result(timeout=60)
    assert json.loads(body)["inference"]["result"]["pages"][0]["content"].split("\n") == LINES
    assert small_engine.worker_pids() == [pid]  # the same worker all along


# -- processes that end with the daemon -----------------------------------------------------


def children() -> dict[int, int]:
    """Return {pid: parent pid} of every live, unreaped-or-running process."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(root: int) -> set[int]:
    parents = children()
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    return pids & set(children())


def slow_pdf(path: Path, pages: int = 40) -> Path:
    """A scanned-looking PDF (pictures, no text layer): seconds of OCR per page."""
    scans = [text_image(LINES * 6, dpi=200) for _ in range(pages)]
    scans[0].save(path, "PDF", save_all=True, append_images=scans[1:], resolution=200)
    return path


def local_daemon(tmp_path: Path, workers: int) -> tuple[DaemonProcess, Path]:
    settings = {
        "state_dir": str(tmp_path / "state"),
        "engine": "local",
        "local": {"workers": workers},
        "inboxes": [inbox_settings(tmp_path)],
    }
    return DaemonProcess(write_config(tmp_path, settings), NO_KEY), tmp_path / "scans-in"


def reading(pids: set[int], target: Path) -> int | None:
    """Return the process among `pids` that holds `target` open."""
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if Path(os.readlink(fd)) == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def test_kill_9_of_the_daemon_takes_its_ocr_processes_with_it(tmp_path: Path) -> None:
    daemon, inbox = local_daemon(tmp_path, workers=2)
    with daemon:
        assert daemon.process is not None
        pid = daemon.process.pid
        target = slow_pdf(tmp_path / "slow.pdf").rename(inbox / "slow.pdf")
        drop(inbox / "idle.png", (FILE_TYPES / "receipt.png").read_bytes())
        wait_for(lambda: reading(descendants(pid), target), timeout=60, what="a worker on slow.pdf")
        family = wait_for(
            lambda: len(found := descendants(pid)) >= 4 and found,  # forkserver, tracker, 2 workers
            timeout=30,
            what="two workers",
        )
        daemon.kill()
    wait_for(lambda: not alive(family), timeout=5, what="the OCR processes to end")


def test_sigterm_with_ocr_in_flight_exits_promptly_and_says_what_is_left(tmp_path: Path) -> None:
    daemon, inbox = local_daemon(tmp_path, workers=1)
    with daemon:
        assert daemon.process is not None
        pid = daemon.process.pid
        target = slow_pdf(tmp_path / "slow.pdf").rename(inbox / "slow.pdf")
        wait_for(lambda: reading(descendants(pid), target), timeout=60, what="a worker on slow.pdf")
        family = descendants(pid)
        started = time.monotonic()
        assert daemon.stop(timeout=30) == 0
        took = time.monotonic() - started
    assert took < 20, f"took {took:.1f} s to stop"
    assert "1 file(s) cut short and 0 not started; they are read again at the next start" in (
        daemon.log()
    )
    assert not alive(family)
    [row] = json.loads(cli(daemon.config, "jobs", "--json", env=NO_KEY).stdout)
    assert row["state"] in ("pending", "processing") and row["result"] is None


def test_pools_without_an_initializer_also_end_with_their_process(tmp_path: Path) -> None:
    """What the result checker's pool gets from `lifeline.install`, with no code of its own."""
    script = textwrap.dedent(
        """
        import concurrent.futures, multiprocessing, os, sys, time
        from ocrwatchd.engines import lifeline

        if __name__ == "__main__":
            lifeline.install()
            pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("forkserver")
            )
            print(pool.submit(os.getpid).result(), flush=True)
            time.sleep(120)
        """
    )
    (tmp_path / "holder.py").write_text(script)
    holder = subprocess.Popen(
        [sys.executable, str(tmp_path / "holder.py")], stdout=subprocess.PIPE, cwd=ROOT
    )
    assert holder.stdout is not None
    worker = int(holder.stdout.readline())
    family = descendants(holder.pid)
    assert worker in family and len(family) == 3  # with the forkserver and the tracker
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    holder.stdout.close()
    wait_for(lambda: not alive(family), timeout=5, what="the pool's processes to end")
