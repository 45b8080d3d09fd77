"""One daemon per state directory: an exclusive `flock` on `STATE_DIR/daemon.lock`.

`run` and `once` hold the lock for the life of the process; the kernel drops it when the
process dies however it dies (kill -9 included), so a stale lock file never blocks a
restart. The lock file also records who holds it (pid, engine, start time) as JSON, which
`status` reports: what the daemon itself chose, not what the caller's environment would.

Whether a daemon holds the lock is asked of the kernel (a non-blocking shared lock attempt
fails while an exclusive one is held), never guessed from the recorded pid: a pid may be
reused, or belong to another PID namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ocrwatchd.errors import ExitCode, OcrwatchdError, StateError

log = logging.getLogger(__name__)

LOCK_NAME = "daemon.lock"
# A `status` probing with a shared lock holds it for an instant; a starting daemon
# retries over that instant instead of reporting a false "already running".
ACQUIRE_SECONDS = 2.0
RETRY_SECONDS = 0.05


class DaemonRunning(OcrwatchdError):
    """Another `run` or `once` holds this state directory; `pid` is its process id (None
    when it has not recorded one yet)."""

    exit_code = ExitCode.TEMPFAIL

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"{state_dir} is in use by another ocrwatchd ({who}); one daemon per state"
            " directory: stop it first, or give this config another state_dir"
        )
        self.pid = pid


class DaemonLock:
    """The held lock. Released by `release()`, on leaving a `with` block, or at exit."""

    def __init__(self, path: Path, fd: int, record: dict[str, Any]) -> None:
        self.path = path
        self.record = record
        self._fd: int | None = fd

    def set_engine(self, engine: str) -> None:
        """Record the engine in use now (a reload may change it); `status` shows it."""
        if self._fd is None:
            return
        self.record = {**self.record, "engine": engine}
        data = json.dumps(self.record).encode("utf-8") + b"\n"
        try:
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
        except OSError as error:
            log.warning("cannot update %s: %s", self.path, error.strerror or error)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DaemonLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(
    state_dir: Path,
    *,
    engine: str,
    wait: float = ACQUIRE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> DaemonLock:
    """Given the state directory (created when missing) and the engine in use, take the
    lock, record {pid, engine, started_at} in it and return it.

    Raises DaemonRunning (exit 75) when another process still holds it after `wait`
    seconds, StateError (exit 73) when the directory or lock file cannot be created.
    """
    path = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a symlink planted in the state directory must not redirect the write.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        raise StateError(f"cannot create {path}: {error.strerror or error}") from error
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _recorded(path)
                os.close(fd)
                raise DaemonRunning(state_dir, holder.get("pid")) from None
            sleep(RETRY_SECONDS)
    record = {"pid": os.getpid(), "engine": engine, "started_at": time.time()}
    data = json.dumps(record).encode("utf-8") + b"\n"
    try:
        # Write, then cut: a reader never sees an empty file, at worst the old record's tail
        # for an instant, which `_recorded` rejects as not JSON.
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    except OSError as error:
        os.close(fd)
        raise StateError(f"cannot write {path}: {error.strerror or error}") from error
    return DaemonLock(path, fd, record)


def read_daemon(state_dir: Path) -> dict[str, Any]:
    """Given a state directory, return {"running", "pid", "engine", "started_at"}: running
    is true only while some process holds the lock; the rest is what that process recorded
    (all None when none runs).

    Raises StateError when the lock file exists but cannot be opened (permissions).
    """
    nobody: dict[str, Any] = {"running": False, "pid": None, "engine": None, "started_at": None}
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return nobody
    except OSError as error:
        raise StateError(f"cannot read {path}: {error.strerror or error}") from error
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return nobody
    finally:
        os.close(fd)
    record = _recorded(path)
    return {
        "running": True,
        "pid": record.get("pid"),
        "engine": record.get("engine"),
        "started_at": record.get("started_at"),
    }


def _recorded(path: Path, wait: float = 1.0) -> dict[str, Any]:
    """The holder's record; waits briefly for one that is being written, else {}."""
    deadline = time.monotonic() + wait
    while True:
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_bytes())
            if isinstance(record, dict) and isinstance(record.get("pid"), int):
                engine = record.get("engine")
                return {
                    "pid": record["pid"],
                    "engine": engine if isinstance(engine, str) else None,
                    "started_at": _number(record.get("started_at")),
                }
        if time.monotonic() >= deadline:
            return {}
        time.sleep(RETRY_SECONDS)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
