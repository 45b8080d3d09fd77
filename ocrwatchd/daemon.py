"""The daemon: threads, signals, supervision, reload and shutdown.

Threads (each owns its ledger connection and HTTP session):
    watchdog observers → intake (settle, rules, dedupe) → ledger
    uploaders + pollers (mindee) or the local dispatcher → ledger → finisher → outbox
The main thread only supervises: signal handlers set flags; it pings the systemd
watchdog while every work thread is alive and publishes STATUS= lines. A work thread that
dies is fatal (exit 70): systemd restarts the unit and the ledger resumes the work.
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from ocrwatchd import service
from ocrwatchd.config import Config, load_config
from ocrwatchd.errors import ConfigError, ExitCode, StateError
from ocrwatchd.finisher import Finisher
from ocrwatchd.intake import Intake
from ocrwatchd.ledger import (
    FAILED,
    FETCHED,
    IN_FLIGHT,
    PENDING,
    SETTLING,
    Ledger,
    storage_trouble,
)
from ocrwatchd.watcher import SCAN_DIR, Event, start_observer, watch_mode, watching

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

    from ocrwatchd.engines.local import LocalEngine
    from ocrwatchd.remote import RemoteWork, ResultChecker

log = logging.getLogger(__name__)

STATUS_EVERY = 5.0
WAITING = (SETTLING, PENDING, *IN_FLIGHT)


@dataclass
class Flags:
    """Set by signal handlers, read by the main loop."""

    stop: bool = False
    reload: bool = False
    signals: list[int] = field(default_factory=list)


class Daemon:
    """One configuration's worth of threads. `run()` returns an exit code."""

    def __init__(
        self,
        config: Config,
        *,
        once: bool = False,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self.config = config
        self.once = once
        self.progress = progress
        self.flags = Flags()
        self.stop = threading.Event()
        self.work_available = threading.Event()
        self.events: queue.Queue[Event] = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.fatal: str | None = None
        self.scanned = threading.Event()
        self.intake_beat = time.monotonic()
        self.intake: Intake | None = None
        self.modes: dict[str, str] = {}
        self.remote: RemoteWork | None = None
        self.local_engine: LocalEngine | None = None
        self.observers: dict[str, BaseObserver] = {}
        self.checker: ResultChecker | None = None

    # -- signals -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def on_stop(signum: int, _frame: FrameType | None) -> None:
            self.flags.stop = True
            self.flags.signals.append(signum)

        def on_reload(_signum: int, _frame: FrameType | None) -> None:
            self.flags.reload = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        if not self.once:
            signal.signal(signal.SIGHUP, on_reload)

    # -- thread plumbing -----------------------------------------------------------

    def _spawn(self, name: str, target: Callable[[threading.Event], None]) -> None:
        def guarded() -> None:
            try:
                target(self.stop)
            except BaseException as exc:
                self.fatal = f"thread {name} died: {exc!r}"
                log.critical("thread %s died", name, exc_info=True)
                self.stop.set()

        thread = threading.Thread(target=guarded, name=f"ocrwatchd-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _intake_loop(self, stop: threading.Event) -> None:
        ledger = Ledger(self.config.state_dir / "ledger.db")
        modes = {inbox.name: self.modes[inbox.name] for inbox in self.config.inboxes}
        intake = Intake(
            self.config, ledger, self.events, work_available=self.work_available, modes=modes
        )
        self.intake = intake
        try:
            intake.scan_all()
            self.scanned.set()
            next_scan = time.monotonic() + self.config.reconcile_interval
            while not stop.is_set():
                self.intake_beat = time.monotonic()
                with storage_trouble(stop, "intake"):
                    intake.step()
                    if time.monotonic() >= next_scan and not self.once:
                        intake.scan_all()
                        next_scan = time.monotonic() + self.config.reconcile_interval
        finally:
            ledger.close()

    # -- running -------------------------------------------------------------------

    def _engine_threads(
        self, finisher: Finisher
    ) -> list[tuple[str, Callable[[threading.Event], None]]]:
        path = self.config.state_dir / "ledger.db"
        if self.config.engine == "mindee":
            from ocrwatchd.engines.mindee import MindeeClient
            from ocrwatchd.remote import RemoteWork, ResultChecker

            settings = self.config.mindee
            assert settings.api_key is not None
            api_key = settings.api_key
            checker = self.checker = ResultChecker()

            def client() -> MindeeClient:
                return MindeeClient(
                    settings.base_url,
                    api_key,
                    request_timeout=settings.request_timeout,
                    check_result=checker,
                )

            self.remote = RemoteWork(
                self.config, path, finisher, self.work_available, client_factory=client
            )
            return self.remote.threads()
        from ocrwatchd.engines.local import LocalEngine
        from ocrwatchd.localwork import LocalWork

        local = self.config.local
        self.local_engine = LocalEngine(
            workers=local.workers, languages=local.languages, tessdata_dir=local.tessdata_dir
        )
        return LocalWork(
            self.config, path, finisher, self.work_available, self.local_engine
        ).threads()

    def run(self) -> int:
        """Run until stopped (or, with once, until every file is done or failed)."""
        config = self.config
        try:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            for inbox in config.inboxes:
                inbox.outbox.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create a state or outbox directory: {exc}") from exc
        ledger = Ledger(config.state_dir / "ledger.db")
        try:
            moved = ledger.recover_after_restart(engine=config.engine)
            if moved:
                log.info("resuming: %d interrupted file(s) queued again", moved)
            ledger.set_paused(None)
            self.modes = {inbox.name: watch_mode(inbox) for inbox in config.inboxes}
            if not self.once:
                self._ensure_watches(starting=True)
            finisher = Finisher(config, config.state_dir / "ledger.db")
            engine_threads = self._engine_threads(finisher)
            self._spawn("intake", self._intake_loop)
            for name, target in finisher.threads():
                self._spawn(name, target)
            for name, target in engine_threads:
                self._spawn(name, target)
            service.notify("READY=1")
            log.info(
                "ocrwatchd ready: engine %s, %d inbox(es), state in %s",
                config.engine,
                len(config.inboxes),
                config.state_dir,
            )
            return self._supervise(ledger)
        finally:
            service.notify("STOPPING=1")
            self.stop.set()
            for observer in self.observers.values():
                observer.stop()
            for observer in self.observers.values():
                observer.join(timeout=10)
            for thread in self.threads:
                thread.join(timeout=30)
            if self.local_engine is not None:
                self.local_engine.close()
            if self.checker is not None:
                self.checker.close()
            ledger.close()

    def _ensure_watches(self, *, starting: bool = False) -> None:
        """Start a watch for every inbox that has none, or whose watch ended (its folder
        was deleted or unmounted, and is back). Until then, rescans find its files."""
        for inbox in self.config.inboxes:
            current = self.observers.get(inbox.name)
            if current is not None and watching(current):
                continue
            # After the start, only an inbox that intake sees as available is tried again.
            available = self.intake is not None and self.intake.available.get(inbox.name, False)
            if not starting and not available:
                continue
            if current is not None:
                current.stop()
                current.join(timeout=10)
            mode = self.modes[inbox.name]
            try:
                self.observers[inbox.name] = start_observer(inbox, mode, self.events)
            except OSError as exc:
                if starting:
                    log.error(
                        "inbox %s: cannot watch %s: %s; relying on rescans every %.0f s",
                        inbox.name,
                        inbox.path,
                        exc,
                        self.config.reconcile_interval,
                    )
                continue
            log.info("inbox %s: watching %s (%s)", inbox.name, inbox.path, mode)
            if not starting:  # files may have arrived while nothing watched
                self.events.put((inbox.name, str(inbox.path), SCAN_DIR))

    def _supervise(self, ledger: Ledger) -> int:
        watchdog = service.watchdog_interval()
        next_ping = next_status = 0.0
        started = time.time()
        while True:
            if self.fatal:
                log.critical("stopping: %s", self.fatal)
                return ExitCode.SOFTWARE
            if self.flags.stop:
                names = ", ".join(signal.Signals(n).name for n in self.flags.signals)
                log.info("stopping (%s)", names or "asked to")
                # A batch cut short did not finish its files: say so to the caller.
                return ExitCode.TEMPFAIL if self.once else ExitCode.OK
            if self.flags.reload:
                log.info("reloading the config (SIGHUP)")
                return ExitCode.OK
            now = time.monotonic()
            alive = all(thread.is_alive() for thread in self.threads)
            if watchdog and now >= next_ping and alive and now - self.intake_beat < 30:
                service.notify("WATCHDOG=1")
                next_ping = now + watchdog
            if now >= next_status:
                service.notify("STATUS=" + self.status_line(ledger))
                next_status = now + STATUS_EVERY
                if not self.once:
                    self._ensure_watches()
            if self.once and self.scanned.is_set():
                result = self._once_progress(ledger, started)
                if result is not None:
                    return result
            time.sleep(0.1)

    def status_line(self, ledger: Ledger) -> str:
        counts = {state: 0 for state in ("pending", "processing", "done", "failed")}
        for per_inbox in ledger.counts_by_inbox().values():
            for state in counts:
                counts[state] += per_inbox.get(state, 0) + (
                    per_inbox.get("uploading", 0) if state == "processing" else 0
                )
        paused = (
            " (remote work paused)" if self.remote is not None and self.remote.pause.reason else ""
        )
        return (
            f"{counts['pending']} pending, {counts['processing']} in flight,"
            f" {counts['done']} done, {counts['failed']} failed{paused}"
        )

    def _once_progress(self, ledger: Ledger, started: float) -> int | None:
        """In once mode: report progress; return the exit code when all is finished."""
        names = [inbox.name for inbox in self.config.inboxes]
        waiting = ledger.count(WAITING, inboxes=names)  # settling files have rows too
        if self.progress is not None:
            done, failed = ledger.finished_since(started)
            self.progress(done + failed, done + failed + waiting, failed)
        if self.remote is not None and self.remote.pause.reason and ledger.count((FETCHED,)) == 0:
            log.error("%s", self.remote.pause.reason)
            return ExitCode.UNAVAILABLE
        if waiting:
            return None
        unavailable = [
            name for name, up in (self.intake.available if self.intake else {}).items() if not up
        ]
        if unavailable:
            log.error("inbox(es) unavailable, not processed: %s", ", ".join(unavailable))
            return ExitCode.UNAVAILABLE
        failed_rows = [
            row
            for row in ledger.rows(states=(FAILED,))
            if row.updated_at >= started or self._source_present(row.inbox, row.relpath)
        ]
        return ExitCode.FAILURES if failed_rows else ExitCode.OK

    def _source_present(self, inbox_name: str, relpath: str) -> bool:
        for inbox in self.config.inboxes:
            if inbox.name == inbox_name:
                return (inbox.path / relpath).exists()
        return False


def serve(config_path: Path, config: Config) -> int:
    """`ocrwatchd run`: run, reloading the config on SIGHUP, until SIGTERM/SIGINT."""
    while True:
        daemon = Daemon(config)
        daemon.install_signal_handlers()
        code = daemon.run()
        if not daemon.flags.reload or daemon.flags.stop or daemon.fatal:
            return code
        service.notify("RELOADING=1")
        try:
            config = load_config(config_path)
            log.info("config reloaded from %s", config_path)
        except ConfigError as exc:
            log.error("config reload failed; keeping the old config:\n%s", exc)
        service.setup_logging(config.log_level)


class ProgressBar:
    """`once` on a terminal: one line redrawn in place when the figures change."""

    WIDTH = 30

    def __init__(self) -> None:
        self.shown = ""

    def __call__(self, finished: int, total: int, failed: int) -> None:
        filled = self.WIDTH * finished // total if total else self.WIDTH
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = f"[{bar}] {finished}/{total} finished, {failed} failed"
        if line != self.shown:
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
            self.shown = line
