"""What an idle daemon costs, and how long it takes to stop.

Starts `ocrwatchd run` (local engine by default, empty inboxes watched by inotify, all in
a temporary directory) as a child process, waits for READY=1 on a real sd_notify socket,
lets it settle, then measures over a window (60 s by default):

  - CPU seconds per minute of the whole process tree: utime + stime from /proc/PID/stat
    (clock ticks, includes exited threads and reaped children) and the sum of the live
    threads' on-CPU time from /proc/PID/task/TID/schedstat (nanoseconds);
  - wakeups per second: voluntary context switches per thread (a thread that blocks in a
    wait and is woken counts one), named after the Python thread when py-spy is installed;
  - read and write system calls per second (/proc/PID/io), and the resident memory.

With `--syscalls S` it then counts the daemon's system calls for S more seconds with
`strace -c` (ledger transactions show as fcntl lock calls). Last, it sends SIGTERM and times
the exit. Target: at most 0.1 s of CPU a minute when idle; the exit status is 1 when the
target or a stop within 5 s is missed.

    .venv/bin/python bench/bench_idle.py [--seconds 60] [--settle 10] [--inboxes 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_CPU_PER_MINUTE = 0.1
TARGET_STOP_SECONDS = 5.0
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Task:
    """One thread of one process of the daemon's tree, as /proc shows it now."""

    pid: int
    tid: int
    comm: str
    cpu_ns: int  # on-CPU time, schedstat
    wakeups: int  # voluntary context switches
    preempted: int  # involuntary ones


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the local engine's forkserver and OCR workers)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                stack.extend(int(child) for child in (task / "children").read_text().split())
    return found


def _status(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def tasks(root: int) -> dict[tuple[int, int], Task]:
    """Every live thread of the tree below `root`, by (pid, tid)."""
    found = {}
    for pid in process_tree(root):
        for path in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                status = _status(path / "status")
                cpu_ns = int((path / "schedstat").read_text().split()[0])
                tid = int(path.name)
                found[(pid, tid)] = Task(
                    pid,
                    tid,
                    status["Name"],
                    cpu_ns,
                    int(status["voluntary_ctxt_switches"]),
                    int(status["nonvoluntary_ctxt_switches"]),
                )
    return found


def tree_ticks(root: int) -> float:
    """CPU seconds of the tree: each process's utime + stime (its exited threads included)
    and, for the root, what its reaped children used (cutime + cstime)."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            if pid == root:
                total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / TICK


def io_calls(root: int) -> tuple[int, int]:
    """Read and write system calls the tree has made so far (/proc/PID/io)."""
    reads = writes = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            values = _status(Path(f"/proc/{pid}/io"))
            reads += int(values["syscr"])
            writes += int(values["syscw"])
    return reads, writes


def memory(root: int) -> list[tuple[int, str, int, int]]:
    """(pid, name, VmRSS kB, VmHWM kB) of each process of the tree."""
    rows = []
    for pid in process_tree(root):
        with contextlib.suppress(OSError, KeyError):
            status = _status(Path(f"/proc/{pid}/status"))
            rss = int(status["VmRSS"].split()[0])
            rows.append((pid, status["Name"], rss, int(status["VmHWM"].split()[0])))
    return rows


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by native thread id, from `py-spy dump` (empty without it):
    Python 3.11 does not give its threads' names to the kernel."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(spy, os.X_OK):
        return {}
    try:
        dump = subprocess.run(
            [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {
        int(tid): name for tid, name in re.findall(r'^Thread (\d+) \(\w+\): "(.*)"', dump, re.M)
    }


def write_config(root: Path, inboxes: int, watch: str, engine: str) -> Path:
    lines = [f"state_dir: {root / 'state'}", f"engine: {engine}", "log_level: info", "inboxes:"]
    for number in range(inboxes):
        inbox, outbox = root / f"in{number}", root / f"out{number}"
        inbox.mkdir()
        outbox.mkdir()
        lines.append(f"  - {{name: box{number}, path: {inbox}, outbox: {outbox}, watch: {watch}}}")
    config = root / "ocrwatchd.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def wait_ready(sock: socket.socket, daemon: subprocess.Popen[bytes], timeout: float) -> float:
    """Seconds until READY=1 arrives on the notify socket."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode} before READY=1")
        with contextlib.suppress(TimeoutError):
            if b"READY=1" in sock.recv(4096):
                return time.monotonic() - started
    raise SystemExit(f"no READY=1 within {timeout} s")


def count_syscalls(pid: int, seconds: float) -> str:
    """strace's summary (`-c`) of every thread's system calls over `seconds`."""
    strace = shutil.which("strace")
    if strace is None:
        return "strace is not installed; no system call counts"
    tracer = subprocess.Popen(
        [strace, "-f", "-c", "-qq", "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    with contextlib.suppress(subprocess.TimeoutExpired):
        tracer.wait(timeout=seconds)  # strace runs until interrupted
    tracer.send_signal(signal.SIGINT)
    _, summary = tracer.communicate(timeout=30)
    return summary


def report(
    root: int,
    before: dict[tuple[int, int], Task],
    after: dict[tuple[int, int], Task],
    names: dict[int, str],
    elapsed: float,
) -> float:
    """Print the per-thread table; returns all wakeups per second."""
    print(f"{'thread':<28} {'tid':>7} {'wakeups/s':>10} {'preempt/s':>10} {'CPU ms/min':>11}")
    total = 0.0
    for key, task in sorted(after.items()):
        start = before.get(key, Task(task.pid, task.tid, task.comm, 0, 0, 0))
        wakeups = (task.wakeups - start.wakeups) / elapsed
        total += wakeups
        cpu = (task.cpu_ns - start.cpu_ns) / 1e6 * 60 / elapsed
        name = names.get(task.tid, task.comm if task.pid == task.tid else f"{task.comm} (thread)")
        if task.pid != root:
            name = f"[{task.pid}] {name}"
        preempted = (task.preempted - start.preempted) / elapsed
        print(f"{name[:28]:<28} {task.tid:>7} {wakeups:>10.2f} {preempted:>10.2f} {cpu:>11.2f}")
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="measured window (60 s)")
    parser.add_argument("--settle", type=float, default=10, help="rest after READY (10 s)")
    parser.add_argument("--inboxes", type=int, default=2, help="empty inboxes (2)")
    parser.add_argument("--watch", choices=("events", "poll"), default="events")
    parser.add_argument("--engine", choices=("local",), default="local")
    parser.add_argument(
        "--syscalls", type=float, default=0, metavar="S", help="then strace -c for S seconds"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-idle-") as temporary:
        root = Path(temporary)
        config = write_config(root, args.inboxes, args.watch, args.engine)
        notify_path = str(root / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify_path)
        sock.settimeout(0.1)
        log_path = root / "daemon.log"
        env = {**os.environ, "NOTIFY_SOCKET": notify_path, "MINDEE_V2_API_KEY": ""}
        with open(log_path, "wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "ocrwatchd", "run", "-c", str(config)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            ready = wait_ready(sock, daemon, timeout=60)
            time.sleep(args.settle)  # the measurement is of rest, after start-up work
            load_before = os.getloadavg()
            ticks, ios, before = tree_ticks(daemon.pid), io_calls(daemon.pid), tasks(daemon.pid)
            started = time.monotonic()
            time.sleep(args.seconds)
            after, elapsed = tasks(daemon.pid), time.monotonic() - started
            ticks = tree_ticks(daemon.pid) - ticks
            ios = tuple(end - start for end, start in zip(io_calls(daemon.pid), ios, strict=True))
            load_after = os.getloadavg()
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon exited with {daemon.returncode} while measured")
            names = thread_names(daemon.pid)
            rss = memory(daemon.pid)
            syscalls = count_syscalls(daemon.pid, args.syscalls) if args.syscalls else ""
            stop_started = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=60)
            stopped = time.monotonic() - stop_started
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            sock.close()
        log_tail = log_path.read_text(errors="replace").splitlines()[-3:]

    per_minute = ticks * 60 / elapsed
    live_ns = sum(
        t.cpu_ns - before.get(k, Task(0, 0, "", 0, 0, 0)).cpu_ns for k, t in after.items()
    )
    print(
        f"ocrwatchd run idle: engine {args.engine}, {args.inboxes} empty inbox(es) watched by"
        f" {args.watch}; READY after {ready:.2f} s, settled {args.settle:.0f} s,"
        f" measured {elapsed:.1f} s"
    )
    print(
        "load average (1/5/15 min): before "
        + " ".join(f"{value:.2f}" for value in load_before)
        + ", after "
        + " ".join(f"{value:.2f}" for value in load_after)
    )
    wakeups = report(daemon.pid, before, after, names, elapsed)
    met = per_minute <= TARGET_CPU_PER_MINUTE
    print(
        f"CPU: {per_minute:.3f} s/min (ticks of the whole tree; live threads' schedstat:"
        f" {live_ns / 1e9 * 60 / elapsed:.4f} s/min); target <= {TARGET_CPU_PER_MINUTE}:"
        f" {'met' if met else 'MISSED'}"
    )
    print(f"wakeups: {wakeups:.2f}/s in all (voluntary context switches)")
    print(f"system calls: {ios[0] / elapsed:.2f} reads/s, {ios[1] / elapsed:.2f} writes/s")
    for pid, name, rss_kb, hwm_kb in rss:
        print(
            f"memory of {name} [{pid}]: RSS {rss_kb / 1024:.1f} MiB, peak {hwm_kb / 1024:.1f} MiB"
        )
    if syscalls:
        print(f"system calls over {args.syscalls:.0f} s (strace -c -f):\n{syscalls.rstrip()}")
    quick = stopped <= TARGET_STOP_SECONDS and code == 0
    print(
        f"stop: SIGTERM to exit {stopped:.2f} s, exit code {code};"
        f" target <= {TARGET_STOP_SECONDS:.0f} s and 0: {'met' if quick else 'MISSED'}"
    )
    print("daemon's last log lines:\n  " + "\n  ".join(log_tail))
    return 0 if met and quick else 1


if __name__ == "__main__":
    sys.exit(main())
