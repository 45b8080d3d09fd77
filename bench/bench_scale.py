"""Scale of the intake: many files present at start, and the cost of a reconcile scan.

Creates N small files in M folders (hard links of a few seed files, so 100,000 take
seconds to make), then:

  1. start: spawns `ocrwatchd run` (embedded engine) on that inbox and times how long until
     every file has a ledger row (settling or beyond), sampling the daemon's resident
     memory (VmRSS, and the kernel's peak VmHWM) and its CPU time from /proc. With the
     default `--settle-seconds 3600` no file finishes settling, so only the intake is
     measured (and every file is held as a settling candidate: the worst case for memory).
     `ocrwatchd status --json` is asked once at the end: its totals must count N files.
  2. reconcile: in this process, every row is first moved past settling (through the
     lifecycle, with a made-up digest: no file is read), then one `Intake.scan_all()` of
     the N unchanged files is timed: CPU (getrusage), wall time and the growth of this
     process's peak RSS during the scan.

The machine's load average is printed with the figures: other work on a shared machine
slows every figure down.

    .venv/bin/python bench/bench_scale.py [--files N] [--folders M] [--settle-seconds S]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ocrwatchd.config import load_config  # noqa: E402
from ocrwatchd.intake import Intake  # noqa: E402
from ocrwatchd.ledger import Ledger  # noqa: E402
from ocrwatchd.lifecycle import Lifecycle, Settled, State  # noqa: E402

LINKS_PER_SEED = 50_000  # ext4 allows 65,000 links to one inode
SAMPLE_SECONDS = 0.2


def make_tree(inbox: Path, files: int, folders: int) -> None:
    """`files` links named like scans, spread evenly over `folders` folders."""
    seeds = inbox.parent / "seeds"
    seeds.mkdir()
    inbox.mkdir()
    seed = seeds / "seed-0.jpg"
    for index in range(files):
        if index % LINKS_PER_SEED == 0:
            seed = seeds / f"seed-{index}.jpg"
            seed.write_bytes(b"\xff\xd8\xff\xe0 a small file standing in for a scan")
        folder = inbox / f"folder-{index % folders:05d}"
        if index < folders:
            folder.mkdir()
        os.link(seed, folder / f"scan-{index:07d}.jpg")


def write_config(work: Path, settle_seconds: float) -> Path:
    config = work / "ocrwatchd.yaml"
    settings = {
        "state_dir": str(work / "state"),
        "engine": "local",
        "log_level": "warning",
        "reconcile_interval": 86400,  # phase 1 measures the start scan alone
        "local": {"workers": 1},
        "inboxes": [
            {
                "name": "archive",
                "path": str(work / "inbox"),
                "outbox": str(work / "outbox"),
                "settle_seconds": settle_seconds,
            }
        ],
    }
    (work / "outbox").mkdir()
    config.write_text(json.dumps(settings), encoding="utf-8")  # JSON is YAML
    return config


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ledger_rows(ledger: Path) -> int:
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM files").fetchone()[0])
    except sqlite3.Error:
        return 0  # not created yet


def ocrwatchd(config: Path, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MINDEE_V2_API_KEY", None)
    command = [sys.executable, "-m", "ocrwatchd", *args, "-c", str(config)]
    return subprocess.Popen(command, env=env, **kwargs)  # type: ignore[call-overload]


def start_phase(work: Path, config: Path, files: int, timeout: float) -> None:
    ledger = work / "state" / "ledger.db"
    log = (work / "daemon.log").open("wb")
    started = time.monotonic()
    daemon = ocrwatchd(config, "run", stdout=log, stderr=subprocess.STDOUT)
    peak_rss = 0
    try:
        while True:
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon exited ({daemon.returncode}); see {log.name}")
            peak_rss = max(peak_rss, proc_status(daemon.pid)["VmRSS"])
            count = ledger_rows(ledger)
            elapsed = time.monotonic() - started
            if count >= files:
                break
            if elapsed > timeout:
                raise SystemExit(f"only {count} of {files} rows after {timeout:.0f} s")
            time.sleep(SAMPLE_SECONDS)  # a sampling period, not a wait for a condition
        memory = proc_status(daemon.pid)
        cpu = proc_cpu(daemon.pid)
        status = subprocess.run(
            [sys.executable, "-m", "ocrwatchd", "status", "--json", "-c", str(config)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            check=True,
        )
        totals = json.loads(status.stdout)["totals"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
        log.close()
    print(
        f"start: {files} files known in {elapsed:.1f} s (sampled every {SAMPLE_SECONDS} s);"
        f" daemon RSS peak {max(peak_rss, memory['VmHWM']) / 1024:.0f} MiB"
        f" (at the end {memory['VmRSS'] / 1024:.0f} MiB); daemon CPU {cpu:.1f} s;"
        f" status totals {sum(totals.values())} ({totals})"
    )


def reconcile_phase(config_path: Path, files: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    config = load_config(config_path)
    ledger = Ledger(config.state_dir / "ledger.db")
    inboxes = {inbox.name: inbox for inbox in config.inboxes}
    lifecycle = Lifecycle(ledger, inboxes)
    moved = time.monotonic()
    settled = Settled("0" * 64, "benchmark")
    inbox = config.inboxes[0].name
    for folder in ledger.folders(inbox):
        # One transaction per folder: this is set-up, not what is measured.
        with ledger._transaction():
            for row in ledger.folder_rows(inbox, folder).values():
                if row.state == State.SETTLING:
                    lifecycle.apply(row, settled)
    print(f"reconcile: {files} rows moved to pending in {time.monotonic() - moved:.1f} s")
    intake = Intake(
        config,
        lifecycle,
        queue.Queue(),
        on_queued=lambda: None,
        modes={name: "events" for name in inboxes},
    )
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before_rss = proc_status(os.getpid())["VmRSS"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic()
    intake.scan_all()
    wall = time.monotonic() - wall
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime
    grown = proc_status(os.getpid())["VmHWM"] - before_rss
    changed = sum(1 for key in intake.candidates)
    print(
        f"reconcile: one scan of {files} unchanged files: CPU {cpu:.2f} s, wall {wall:.2f} s,"
        f" peak RSS +{grown / 1024:.0f} MiB during the scan; {changed} files seen as changed"
    )
    ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--folders", type=int, default=1_000)
    parser.add_argument("--settle-seconds", type=float, default=3600)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for phase 1")
    parser.add_argument("--keep", action="store_true", help="leave the tree for a look")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ocrwatchd-scale-"))
    try:
        print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
        made = time.monotonic()
        make_tree(work / "inbox", options.files, options.folders)
        print(
            f"tree: {options.files} files in {options.folders} folders,"
            f" made in {time.monotonic() - made:.1f} s"
        )
        config = write_config(work, options.settle_seconds)
        start_phase(work, config, options.files, options.timeout)
        reconcile_phase(config, options.files)
        print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min)")
    finally:
        if options.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
