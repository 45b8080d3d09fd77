"""Helper processes that end with the daemon, however it ends.

The daemon's helper processes (the OCR workers, the result checker) come from
multiprocessing's forkserver, which the daemon starts. When the daemon is killed (SIGKILL,
the OOM killer, a crash in native code) nothing tells them: an idle worker waits on its
queue for ever, a busy one finishes its document first, and the forkserver and the
resource tracker stay as long as any worker holds their pipes. Under systemd the cgroup
is killed anyway; under any other supervisor (a container, a shell, a test run) they
would be left behind, one per restart.

So every helper process follows the daemon twice over:

- `PR_SET_PDEATHSIG`: the kernel sends SIGKILL the moment its parent ends. A worker's
  parent is the forkserver, not the daemon, so this alone covers the forkserver dying;
- a lifeline thread that waits on a pidfd of the daemon (no polling) and kills the
  process the moment the daemon has ended. It also enforces a per-job hard deadline
  (`arm`), for native code that overruns the cooperative time checks.

The forkserver then exits by itself: it stops when the last holder of its "alive" pipe
(the daemon and every worker) is gone, and the resource tracker follows it.

`install()` makes the forkserver import `lifeline_forkserver`, which gives every process
it forks its lifeline before any other code runs, for pools that have no initializer
of their own; `bind()` does the same from a pool initializer.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing.forkserver
import os
import select
import signal
import threading
import time

DAEMON_PID_VARIABLE = "OCRWATCHD_LIFELINE_PID"
# linux/prctl.h
_PR_SET_PDEATHSIG = 1
# Exit status of a worker that overran its hard deadline, like timeout(1) uses.
OVERTIME_EXIT = 124
# How often the lifeline thread looks at the deadline; the daemon's end wakes it at once.
_TICK = 1.0

_bound = False
_deadline: float | None = None
_lock = threading.Lock()


def install() -> None:
    """Have every process the forkserver forks from now on carry a lifeline to this one.

    Call before the first pool starts the forkserver; once it runs, this changes nothing
    for it (pools with `bind` as their initializer are covered anyway).
    """
    # The forkserver learns who to follow from here, not from its own parent: a daemon
    # killed while the forkserver starts would leave it an orphan following init.
    os.environ[DAEMON_PID_VARIABLE] = str(os.getpid())
    multiprocessing.forkserver.set_forkserver_preload(
        ["__main__", "ocrwatchd.engines.lifeline_forkserver"]
    )


def bind(daemon_pid: int) -> None:
    """Make this process end when its parent or the process `daemon_pid` ends.

    Idempotent; safe in a pool initializer. When either is already gone, exits at once.
    """
    global _bound
    with _lock:
        if _bound:
            return
        _bound = True
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent ended before the kernel was told to watch it
        os._exit(1)
    try:
        daemon = os.pidfd_open(daemon_pid)
    except ProcessLookupError:
        os._exit(1)
    # A small stack: a worker may run under a tight address-space limit.
    previous = threading.stack_size(256 * 1024)
    try:
        threading.Thread(target=_follow, args=(daemon,), name="lifeline", daemon=True).start()
    finally:
        threading.stack_size(previous)


def arm(seconds: float) -> None:
    """Kill this process (exit status `OVERTIME_EXIT`) unless `disarm` comes within `seconds`."""
    global _deadline
    _deadline = time.monotonic() + seconds


def disarm() -> None:
    """Cancel the deadline set by `arm`."""
    global _deadline
    _deadline = None


def _follow(daemon: int) -> None:
    """Wait for the daemon to end (its pidfd turns readable) or the deadline to pass."""
    while True:
        readable, _, _ = select.select([daemon], [], [], _TICK)
        if readable:
            os.kill(os.getpid(), signal.SIGKILL)
        deadline = _deadline
        if deadline is not None and time.monotonic() > deadline:
            # The main thread is stuck in native code: no exception can reach it.
            os._exit(OVERTIME_EXIT)


def after_fork_in_child(daemon_pid: int) -> None:
    """The forkserver's at-fork hook: bind the new process to the daemon (afresh: the
    forkserver's own binding is not the child's, whose lifeline thread was not copied)."""
    global _bound
    _bound = False
    with contextlib.suppress(OSError):
        bind(daemon_pid)
