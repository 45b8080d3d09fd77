"""Throughput of the local engine against a bare tesserocr loop on the same pages.

Generates N full text pages (300 dpi PNG), then measures, with the same number of
processes P:

  (a) bare tesserocr: a multiprocessing pool, one PyTessBaseAPI per process,
      SetImageFile + GetUTF8Text per page (no sniffing, no JSON, no corrections);
  (a') the same pool asking Tesseract what the engine asks: Sauvola thresholding,
      Recognize, every word's text, box and confidence (the engine's own price for
      quality, without its file handling, JSON or orientation checks);
  (b) LocalEngine: `LocalEngine.submit` for every page, waiting for all futures;
  (c) the daemon: `ocrwatchd run` with the local engine and P workers; the pages are
      linked into its inbox at once and timed until the last `.json` is in the outbox
      (intake, settling, hashing, ledger, JSON, atomic writes included).

Each measurement first warms its processes up (starting them and loading the language
data is not what is compared), then times the pages. Rounds alternate between the
measurements and the best round of each counts. It prints pages/s, the ratio to (a)
(target >= 0.9) and to (a'), the ratio to (a) by the workers' CPU time per page (steadier when other
work shares the machine) and the resident memory of each worker (VmRSS, peak VmHWM).
A measurement is a function `(paths, processes) -> Measurement`: add one to MEASUREMENTS
to compare another way of running the same pages (the whole daemon, for instance).

    .venv/bin/python bench/bench_local.py [--pages N] [--processes P] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.local_quality import text_page  # noqa: E402
from ocrwatchd.engines.local import LocalEngine, default_tessdata_dir  # noqa: E402


@dataclass
class Measurement:
    """Pages per second over the timed part, worker CPU time per page, memory per worker."""

    pages_per_second: float
    cpu_seconds_per_page: float
    rss_kb: dict[int, tuple[int, int]] = field(default_factory=dict)  # pid -> (VmRSS, VmHWM)


def cpu_seconds(pids: list[int]) -> float:
    """Return the CPU time (user + system) the processes `pids` have used so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(") ", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> tuple[int, int]:
    """Return (VmRSS, VmHWM) of process `pid` in kB, from /proc/PID/status."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


# -- (a) bare tesserocr ----------------------------------------------------------------

_api: Any = None


def _bare_start(tessdata: str) -> None:
    global _api
    os.environ["OMP_THREAD_LIMIT"] = "1"
    import tesserocr

    _api = tesserocr.PyTessBaseAPI(path=tessdata, lang="eng")


def _bare_read(path: str) -> tuple[int, int]:
    _api.SetImageFile(path)
    return os.getpid(), len(_api.GetUTF8Text())


def _same_start(tessdata: str) -> None:
    _bare_start(tessdata)
    # The engine's settings: Sauvola thresholding, LSTM only.
    _api.SetVariable("thresholding_method", "2")


def _same_read(path: str) -> tuple[int, int]:
    """What the engine asks of Tesseract: recognise, then every word with box and
    confidence (no JSON, no orientation or resolution checks)."""
    import tesserocr

    _api.SetImageFile(path)
    _api.Recognize()
    words = 0
    iterator = _api.GetIterator()
    level = tesserocr.RIL.WORD
    for word in tesserocr.iterate_level(iterator, level):
        word.GetUTF8Text(level)
        word.BoundingBox(level)
        word.Confidence(level)
        words += 1
    return os.getpid(), words


def measure_bare(paths: list[Path], processes: int) -> Measurement:
    """Time a bare tesserocr loop (defaults, text only) over `paths`."""
    return _measure_pool(paths, processes, _bare_start, _bare_read)


def measure_same(paths: list[Path], processes: int) -> Measurement:
    """Time a bare loop asking Tesseract for what the engine asks (settings and words)."""
    return _measure_pool(paths, processes, _same_start, _same_read)


def _measure_pool(
    paths: list[Path],
    processes: int,
    start: Callable[[str], None],
    read: Callable[[str], tuple[int, int]],
) -> Measurement:
    context = multiprocessing.get_context("forkserver")
    tessdata = f"{default_tessdata_dir()}/"
    with context.Pool(processes, initializer=start, initargs=(tessdata,)) as pool:
        warm = pool.map(read, [str(paths[0])] * 4 * processes, chunksize=1)
        pids = sorted({pid for pid, _ in warm})
        cpu, started = cpu_seconds(pids), time.perf_counter()
        for _ in pool.imap_unordered(read, map(str, paths)):
            pass
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pids) - cpu
        return Measurement(
            len(paths) / elapsed, cpu / len(paths), {pid: memory_kb(pid) for pid in pids}
        )


# -- (b) LocalEngine ---------------------------------------------------------------------


def measure_engine(paths: list[Path], processes: int) -> Measurement:
    """Time `LocalEngine` (sniff, decode, OCR with corrections, JSON) over `paths`."""
    engine = LocalEngine(workers=processes, languages=["eng"], tessdata_dir=None)
    try:
        for future in [engine.submit(paths[0], "warm-up") for _ in range(4 * processes)]:
            future.result()
        pids = engine.worker_pids()
        cpu, started = cpu_seconds(pids), time.perf_counter()
        futures = [engine.submit(path, str(path)) for path in paths]
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pids) - cpu
        return Measurement(
            len(paths) / elapsed, cpu / len(paths), {pid: memory_kb(pid) for pid in pids}
        )
    finally:
        engine.close()


# -- (c) the whole daemon -----------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc/PID/task/*/children."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                stack.extend(int(child) for child in (task / "children").read_text().split())
    return found


def _wait_outputs(outbox: Path, count: int, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 600
    while sum(1 for _ in outbox.glob("*.json")) < count:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("the daemon did not finish within 600 s")
        time.sleep(0.02)


def measure_daemon(paths: list[Path], processes: int) -> Measurement:
    """Time `ocrwatchd run` (local engine, `processes` workers) over `paths`."""
    with tempfile.TemporaryDirectory(dir=paths[0].parent) as temporary:
        root = Path(temporary)
        inbox, outbox = root / "inbox", root / "outbox"
        inbox.mkdir()
        outbox.mkdir()
        config = root / "ocrwatchd.yaml"
        config.write_text(
            f"state_dir: {root / 'state'}\nengine: local\nlog_level: warning\n"
            f"local: {{workers: {processes}}}\ninboxes:\n"
            f"  - {{name: bench, path: {inbox}, outbox: {outbox}, settle_seconds: 0,"
            " dedupe: false}\n"
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "ocrwatchd", "run", "-c", str(config)],
            cwd=ROOT,
            env={**os.environ, "MINDEE_V2_API_KEY": ""},
        )
        try:
            for number in range(4 * processes):  # start the workers, load the language data
                os.link(paths[0], inbox / f"warm{number}.png")
            _wait_outputs(outbox, 4 * processes, daemon)
            pids = process_tree(daemon.pid)
            cpu, started = cpu_seconds(pids), time.perf_counter()
            for path in paths:
                os.link(path, inbox / path.name)
            _wait_outputs(outbox, 4 * processes + len(paths), daemon)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(pids) - cpu
            memory = {pid: memory_kb(pid) for pid in pids}
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        return Measurement(len(paths) / elapsed, cpu / len(paths), memory)


MEASUREMENTS: dict[str, Callable[[list[Path], int], Measurement]] = {
    "bare tesserocr": measure_bare,
    "bare, same asks": measure_same,
    "LocalEngine": measure_engine,
    "daemon": measure_daemon,
}


def make_pages(folder: Path, count: int) -> list[Path]:
    """Write `count` different full text pages (24 lines, 300 dpi) as PNG into `folder`."""
    paths = []
    for seed in range(count):
        image, _ = text_page(seed, lines=24)
        path = folder / f"page{seed:03}.png"
        image.save(path, dpi=(300, 300))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=24, help="pages to read (default 24)")
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="default: the CPU count"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating rounds; the best counts (default 2)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        paths = make_pages(Path(temporary), args.pages)
        height = text_page(0, lines=24)[0].height
        print(f"{args.pages} pages (2481x{height} px), {args.processes} processes")
        # Rounds alternate between the measurements so that load from elsewhere on the
        # machine does not favour one of them; the best round of each is compared.
        best: dict[str, Measurement] = {}
        for number in range(1, args.rounds + 1):
            for name, measure in MEASUREMENTS.items():
                result = measure(paths, args.processes)
                print(
                    f"  round {number}: {name:<16} {result.pages_per_second:6.2f} pages/s"
                    f"  {result.cpu_seconds_per_page:.3f} CPU s/page"
                )
                if name not in best or result.pages_per_second > best[name].pages_per_second:
                    best[name] = result
        bare, same = best["bare tesserocr"], best["bare, same asks"]
        for name, result in best.items():
            ratio = result.pages_per_second / bare.pages_per_second
            # CPU time per page is less disturbed by other load on the machine.
            cpu_ratio = bare.cpu_seconds_per_page / result.cpu_seconds_per_page
            same_ratio = result.pages_per_second / same.pages_per_second
            print(
                f"{name:<16} {result.pages_per_second:6.2f} pages/s  ratio {ratio:.2f}"
                f"  (by CPU time per page: {cpu_ratio:.2f}; to the same asks: {same_ratio:.2f})"
            )
            for pid, (rss, peak) in sorted(result.rss_kb.items()):
                print(f"    process {pid}: RSS {rss / 1024:.0f} MB (peak {peak / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
