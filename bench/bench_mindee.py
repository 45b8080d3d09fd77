"""Throughput of the whole daemon against the local Mindee emulator (not a timed test).

N small distinct JPEG files (copies of `tests/data/mindee/file_types/receipt.jpg`, each
with 4 different trailing bytes after the end-of-image marker, so dedupe stays on and
never kicks in) are in the inbox before the daemon starts. The emulator answers at once
(latency 0; jobs are done at the first poll, or after `--processing-polls` polls answered
Processing), and the client
limits are raised out of the way (enqueue/poll per minute, max_in_flight >= N,
settle_seconds 0). The real daemon runs as a child process (`ocrwatchd run`, or
`ocrwatchd once` with `--once`); the clock starts when the process is spawned and stops
when the N-th `.json` exists in the outbox (the outbox is counted every 20 ms).

Printed: files/s (the API itself allows 200 uploads a minute), time to READY=1, per-file
latency (result mtime minus process start: p50/p95/p99), the daemon's peak RSS and CPU seconds (from
wait4 after SIGTERM), the bench process's own CPU (the emulator, mostly), the requests
the emulator counted, and a correctness check (N results, one upload per file).

    .venv/bin/python -m bench.bench_mindee [--files N] [--processing-polls P] [--once]
        [--profile OUT.prof | --py-spy OUT.txt] [--log PATH] [--timeout S]

`--profile` runs the daemon under cProfile with one profiler per thread (cProfile alone
only sees the main thread, which just supervises) and writes the merged stats to
OUT.prof (and each thread's to OUT.prof.THREADNAME); it slows the daemon down, so its
files/s is not the figure to quote. `--py-spy` samples it instead (py-spy is not a
dependency: `pip install py-spy`), with far less overhead, keeping the samples of the
thread that holds the GIL.
Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.mindee_emulator import DEFAULT_API_KEY, MindeeEmulator  # noqa: E402

SAMPLE = ROOT / "tests" / "data" / "mindee" / "file_types" / "receipt.jpg"
MODEL_ID = "7c5b6d1e-2a3f-4b8c-9d0e-1f2a3b4c5d6e"
API_UPLOADS_PER_SECOND = 200 / 60  # an account's enqueue limit
COUNT_EVERY = 0.02

# Run in the child with --profile: a cProfile.Profile per thread, merged at exit.
PROFILE_BOOTSTRAP = """
import cProfile, pstats, runpy, sys, threading
out, argv = sys.argv[1], sys.argv[2:]
profiles = []
lock = threading.Lock()
original_run = threading.Thread.run
def run(self):
    profile = cProfile.Profile()
    with lock:
        profiles.append(profile)
    profile.enable()
    try:
        original_run(self)
    finally:
        profile.disable()
        try:
            profile.dump_stats(out + "." + self.name)
        except TypeError:
            pass  # a thread that never ran any Python code
threading.Thread.run = run
main = cProfile.Profile()
profiles.append(main)
sys.argv = ["ocrwatchd", *argv]
code = 0
main.enable()
try:
    runpy.run_module("ocrwatchd", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
finally:
    main.disable()
    with lock:
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            try:
                stats.add(profile)
            except TypeError:
                pass  # a thread that never ran any Python code
    stats.dump_stats(out)
sys.exit(code)
"""


@dataclass
class Outcome:
    """What one run measured."""

    files: int
    results: int
    wall: float  # process start → N-th result
    ready: float | None  # process start → READY=1
    exit_after: float | None  # process start → process gone (once mode: exits by itself)
    latencies: list[float]
    daemon_cpu: float
    daemon_user: float
    daemon_sys: float
    daemon_maxrss_kb: int
    vm_hwm_kb: int | None
    emulator_cpu: float
    counting_cpu: float
    exit_code: int
    counts: dict[str, int]
    uploads: dict[str | None, int]
    log_path: Path
    timed_out: bool


def make_files(inbox: Path, count: int) -> None:
    """Write `count` distinct small JPEGs: the sample plus a 4-byte counter after EOI."""
    data = SAMPLE.read_bytes()
    for index in range(count):
        (inbox / f"scan-{index:05d}.jpg").write_bytes(data + index.to_bytes(4, "big"))


def write_config(root: Path, inbox: Path, out: Path, files: int, log_level: str) -> Path:
    settings = {
        "state_dir": str(root / "state"),
        "engine": "mindee",
        "log_level": log_level,
        "mindee": {
            "model_id": MODEL_ID,
            "max_in_flight": max(files, 20),
            "enqueue_per_minute": 1_000_000,
            "poll_per_minute": 1_000_000,
            "poll_initial_delay": 0.0,
            "poll_interval": 0.05,
            "request_timeout": 30,
        },
        "inboxes": [
            {
                "name": "bench",
                "path": str(inbox),
                "outbox": str(out),
                "settle_seconds": 0,
                "dedupe": True,
            }
        ],
    }
    path = root / "ocrwatchd.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def count_results(out: Path) -> int:
    with os.scandir(out) as entries:
        return sum(1 for e in entries if e.name.endswith(".json") and not e.name.startswith("."))


def vm_hwm_kb(pid: int) -> int | None:
    """The peak resident set (VmHWM, kB) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def run_once(args: argparse.Namespace) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="ocrwatchd-bench-") as temp:
        root = Path(temp)
        inbox, out = root / "in", root / "out"
        inbox.mkdir()
        out.mkdir()
        make_files(inbox, args.files)
        config = write_config(root, inbox, out, args.files, args.log_level)
        log_path = Path(args.log) if args.log else root / "daemon.log"
        notify_path = str(root / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify_path)
        sock.setblocking(False)
        command = "once" if args.once else "run"
        if args.profile:
            argv = [sys.executable, "-c", PROFILE_BOOTSTRAP, str(Path(args.profile).resolve())]
        else:
            argv = [sys.executable, "-m", "ocrwatchd"]
        argv += [command, "-c", str(config)]
        with MindeeEmulator(
            DEFAULT_API_KEY, processing_polls=args.processing_polls, latency=0
        ) as emulator:
            env = {
                key: value
                for key, value in os.environ.items()
                if key not in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "OCRWATCHD_CONFIG")
            }
            env.update(
                MINDEE_V2_API_KEY=DEFAULT_API_KEY,
                MINDEE_V2_BASE_URL=emulator.url,
                NOTIFY_SOCKET=notify_path,
                PYTHONUNBUFFERED="1",
                NO_PROXY="127.0.0.1",
                no_proxy="127.0.0.1",
            )
            bench_cpu0, main_cpu0 = time.process_time(), time.thread_time()
            with open(log_path, "wb") as log:
                started_wall = time.time()
                started = time.monotonic()
                process = subprocess.Popen(
                    argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
                )
            try:
                spy = start_py_spy(args.py_spy, process.pid) if args.py_spy else None
                watched = _watch(process, sock, out, args, started)
            except BaseException:
                if _try_reap(process) is None:
                    process.kill()
                    process.wait()
                raise
            results, wall, ready, reaped, timed_out = watched
            exit_after = wall if reaped is not None else None
            hwm = vm_hwm_kb(process.pid)
            if args.once and not timed_out and reaped is None:
                # once exits by itself; give it the time to notice it is finished.
                reaped = _reap(process, grace=30)
                exit_after = time.monotonic() - started
            if reaped is None:
                reaped = _reap(process, grace=0)
            code, usage = reaped
            if spy is not None:
                try:
                    spy.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.terminate()
                    spy.wait(timeout=10)
            counting_cpu = time.thread_time() - main_cpu0
            emulator_cpu = time.process_time() - bench_cpu0 - counting_cpu
            counts = {route: emulator.count(route) for route in ("enqueue", "job", "result")}
            uploads = dict(emulator.uploads_per_alias())
        sock.close()
        latencies = []
        with os.scandir(out) as entries:
            for entry in entries:
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    latencies.append(entry.stat().st_mtime - started_wall)
        if timed_out or code != 0 or results != args.files:
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            print("--- last lines of the daemon's log ---", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr)
        return Outcome(
            files=args.files,
            results=results,
            wall=wall,
            ready=ready,
            exit_after=exit_after,
            latencies=latencies,
            daemon_cpu=usage.ru_utime + usage.ru_stime,
            daemon_user=usage.ru_utime,
            daemon_sys=usage.ru_stime,
            daemon_maxrss_kb=usage.ru_maxrss,
            vm_hwm_kb=hwm,
            emulator_cpu=emulator_cpu,
            counting_cpu=counting_cpu,
            exit_code=code,
            counts=counts,
            uploads=uploads,
            log_path=log_path,
            timed_out=timed_out,
        )


Watched = tuple[int, float, float | None, tuple[int, resource.struct_rusage] | None, bool]


def _watch(
    process: subprocess.Popen[bytes],
    sock: socket.socket,
    out: Path,
    args: argparse.Namespace,
    started: float,
) -> Watched:
    """Count the outbox every 20 ms until it holds N results, the daemon exits or the
    timeout passes. Returns (results, seconds since start, seconds to READY=1 or None,
    (exit code, rusage) if the daemon exited, timed out?)."""
    ready: float | None = None
    deadline = started + args.timeout
    while True:
        now = time.monotonic()
        while ready is None:
            try:
                message = sock.recv(4096).decode()
            except OSError:  # BlockingIOError: nothing (more) yet
                break
            if "READY=1" in message:
                ready = now - started
        results = count_results(out)
        if results >= args.files:
            return results, time.monotonic() - started, ready, None, False
        reaped = _try_reap(process)
        if reaped is not None:
            return count_results(out), now - started, ready, reaped, False
        if now > deadline:
            return results, now - started, ready, None, True
        time.sleep(COUNT_EVERY)


def start_py_spy(out: str, pid: int) -> subprocess.Popen[bytes]:
    """Sample the thread holding the GIL in `pid` until it exits, into `out` (raw)."""
    beside = Path(sys.executable).parent / "py-spy"
    program = str(beside) if beside.exists() else shutil.which("py-spy")
    if program is None:
        sys.exit("--py-spy needs py-spy (pip install py-spy)")
    options = ["--nonblocking", "--threads", "--gil", "--rate", "200", "--format", "raw"]
    return subprocess.Popen(
        [program, "record", "--pid", str(pid), *options, "--output", str(Path(out).resolve())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _try_reap(process: subprocess.Popen[bytes]) -> tuple[int, resource.struct_rusage] | None:
    """If the child has exited, reap it (wait4, so its own rusage) and return (code, rusage)."""
    try:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere: it is our only child, so this is its rusage
        code = process.returncode if process.returncode is not None else -1
        return code, resource.getrusage(resource.RUSAGE_CHILDREN)
    if pid != process.pid:
        return None
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    return code, usage


def _reap(process: subprocess.Popen[bytes], *, grace: float) -> tuple[int, resource.struct_rusage]:
    """Let the child exit by itself for `grace` s, then SIGTERM it, then after 60 s
    SIGKILL it; return its exit code and rusage."""
    signalled = killed = False
    deadline = time.monotonic() + grace
    while (reaped := _try_reap(process)) is None:
        now = time.monotonic()
        if not signalled and now >= deadline:
            os.kill(process.pid, signal.SIGTERM)  # not send_signal: it may reap
            signalled, deadline = True, now + 60
        elif signalled and not killed and now >= deadline:
            print("the daemon did not stop within 60 s of SIGTERM; killing it", file=sys.stderr)
            process.kill()
            killed = True
        time.sleep(0.01)
    return reaped


def report(outcome: Outcome, args: argparse.Namespace) -> bool:
    """Print the figures; return True when the run was correct."""
    mode = "once" if args.once else "run"
    rate = outcome.results / outcome.wall if outcome.wall > 0 else 0.0
    print(
        f"ocrwatchd {mode}: {outcome.files} files, emulator processing_polls="
        f"{args.processing_polls}, latency 0{', cProfile' if args.profile else ''}"
    )
    print(
        f"  wall until the last result: {outcome.wall:.2f} s  → {rate:.0f} files/s"
        f" (the API allows {API_UPLOADS_PER_SECOND:.1f} a second)"
    )
    if outcome.ready is not None:
        after_ready = outcome.wall - outcome.ready
        steady = outcome.results / after_ready if after_ready > 0 else 0.0
        print(f"  READY=1 after {outcome.ready:.2f} s; {steady:.0f} files/s counted from READY")
    if outcome.exit_after is not None:
        print(f"  process exited after {outcome.exit_after:.2f} s")
    lat = outcome.latencies
    if lat:
        print(
            "  latency per file (result mtime - start):"
            f" p50 {percentile(lat, 0.50):.2f} s, p95 {percentile(lat, 0.95):.2f} s,"
            f" p99 {percentile(lat, 0.99):.2f} s, max {max(lat):.2f} s,"
            f" mean {statistics.fmean(lat):.2f} s"
        )
    hwm = f" (VmHWM before SIGTERM {outcome.vm_hwm_kb / 1024:.1f} MiB)" if outcome.vm_hwm_kb else ""
    print(f"  daemon peak RSS: {outcome.daemon_maxrss_kb / 1024:.1f} MiB{hwm}")
    print(
        f"  daemon CPU: {outcome.daemon_cpu:.2f} s (user {outcome.daemon_user:.2f},"
        f" sys {outcome.daemon_sys:.2f}) = {outcome.daemon_cpu / outcome.wall:.2f} cores,"
        f" {1000 * outcome.daemon_cpu / max(1, outcome.results):.2f} ms per file"
    )
    print(
        f"  emulator CPU (its threads in this process): {outcome.emulator_cpu:.2f} s"
        f" = {outcome.emulator_cpu / outcome.wall:.2f} cores;"
        f" outbox counting {outcome.counting_cpu:.2f} s"
    )
    counts = outcome.counts
    print(
        f"  emulator requests: enqueue {counts['enqueue']}, job {counts['job']},"
        f" result {counts['result']}"
    )
    kept = f"; log: {outcome.log_path}" if args.log else ""
    print(f"  daemon exit code: {outcome.exit_code}{kept}")
    ok = True
    if outcome.timed_out:
        print(f"ABORTED: only {outcome.results}/{outcome.files} results after {args.timeout:.0f} s")
        ok = False
    elif outcome.results != outcome.files:
        print(f"WRONG: {outcome.results} result files, expected {outcome.files}")
        ok = False
    repeated = {alias: n for alias, n in outcome.uploads.items() if n != 1}
    if len(outcome.uploads) != outcome.files or repeated:
        print(
            f"WRONG: {len(outcome.uploads)} files uploaded (expected {outcome.files});"
            f" {len(repeated)} uploaded more than once"
        )
        ok = False
    if ok:
        print(f"  correct: {outcome.files} results, each file uploaded exactly once")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="files in the inbox (1000)")
    parser.add_argument(
        "--processing-polls",
        type=int,
        default=0,
        help="job polls the emulator answers Processing before a job is done (0: instant)",
    )
    parser.add_argument("--once", action="store_true", help="time `ocrwatchd once`")
    parser.add_argument("--timeout", type=float, default=300, help="give up after (300 s)")
    parser.add_argument("--profile", metavar="OUT", help="cProfile every daemon thread to OUT")
    parser.add_argument(
        "--py-spy", metavar="OUT", help="sample the daemon with py-spy into OUT (collapsed stacks)"
    )
    parser.add_argument("--log", metavar="PATH", help="keep the daemon's log at PATH")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="the daemon's log_level (info: one line per file transition, as deployed)",
    )
    args = parser.parse_args(argv)
    if args.files < 1:
        parser.error("--files must be at least 1")
    outcome = run_once(args)
    return 0 if report(outcome, args) else 1


if __name__ == "__main__":
    sys.exit(main())
