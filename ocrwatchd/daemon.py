"""The daemon: threads, signals, supervision, reload and shutdown.

Threads (each owns its ledger connection and HTTP session):
    watchdog observers → intake (settle, rules, dedupe) → ledger
    submitters + pollers (`pipeline`, over the configured engine) → ledger → finisher → outbox
The main thread only supervises: signal handlers set flags and wake it; it pings the
systemd watchdog while every work thread is alive and publishes STATUS= lines. A work
thread that dies is fatal (exit 70): systemd restarts the unit and the ledger resumes.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from ocrwatchd import engines, metrics, service
from ocrwatchd.config import Config, load_config
from ocrwatchd.engine_threads import EngineThreads
from ocrwatchd.errors import ConfigError, ExitCode, StateError
from ocrwatchd.finisher import Finisher
from ocrwatchd.handover import recover
from ocrwatchd.intake import Intake
from ocrwatchd.ledger import Ledger, storage_trouble
from ocrwatchd.lifecycle import WAITING, State
from ocrwatchd.pipeline import Shared
from ocrwatchd.watcher import SCAN_DIR, Event, start_observer, watch_mode, watching
from ocrwatchd.webhook import WebhookReceiver, start_receiver

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

    from ocrwatchd.engines.base import Engine
    from ocrwatchd.metrics import Metrics

log = logging.getLogger(__name__)

STATUS_EVERY = 5.0  # seconds between STATUS= lines, when something changed
STOP_WITHIN = 4.0  # seconds the threads get to finish their step on a stop


@dataclass
class Flags:
    """Set by signal handlers, read by the main loop."""

    stop: bool = False
    reload: bool = False
    signals: list[int] = field(default_factory=list)


class Daemon(EngineThreads):
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
        self.wake = threading.Event()  # the main loop's
        self.stop = threading.Event()
        self.events: queue.Queue[Event] = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.loop_events: list[threading.Event] = []
        self.fatal: str | None = None
        self.scanned = threading.Event()
        self.intake_beat = time.monotonic()
        self.intake: Intake | None = None
        self.modes: dict[str, str] = {}
        self.engine: Engine | None = None
        self.shared: Shared | None = None
        # Engines the config no longer names, kept to follow their jobs in flight.
        self.old_engines: list[Shared] = []
        self.finisher: Finisher | None = None
        self.metrics: Metrics | None = None
        self.receiver: WebhookReceiver | None = None
        self.observers: dict[str, BaseObserver] = {}
        self.ledger_path = config.state_dir / "ledger.db"

    @property
    def reloading(self) -> bool:
        return self.flags.reload and not self.flags.stop and not self.fatal

    # -- signals -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def on_stop(signum: int, _frame: FrameType | None) -> None:
            if self.flags.stop:  # a second signal: the user does not want to wait
                os._exit(128 + signum)
            self.flags.stop = True
            self.flags.signals.append(signum)
            self.wake.set()

        def on_reload(_signum: int, _frame: FrameType | None) -> None:
            self.flags.reload = True
            self.wake.set()

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
                self.wake.set()

        thread = threading.Thread(target=guarded, name=f"ocrwatchd-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _on_finished(self, inbox: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.file_finished(inbox, outcome)

    def _intake_loop(self, stop: threading.Event) -> None:
        assert self.shared is not None
        ledger = Ledger(self.ledger_path)
        modes = {inbox.name: self.modes[inbox.name] for inbox in self.config.inboxes}
        intake = Intake(
            self.config,
            self._lifecycle(ledger),
            self.events,
            on_queued=self.shared.submit_wake.notify_one,
            modes=modes,
            stop=stop,
        )
        self.intake = intake
        for shared in (self.shared, *self.old_engines):
            shared.available = intake.available
        try:
            intake.scan_all()
            self.scanned.set()
            next_scan = time.monotonic() + self.config.reconcile_interval
            while not stop.is_set():
                self.intake_beat = time.monotonic()
                with storage_trouble(stop, "intake"):
                    until_scan = max(0.0, next_scan - time.monotonic())
                    intake.step(timeout=min(intake.rest(), until_scan))
                    if time.monotonic() >= next_scan and not self.once:
                        intake.scan_all()
                        next_scan = time.monotonic() + self.config.reconcile_interval
        finally:
            ledger.close()

    def run(self) -> int:
        """Run until stopped (or, with once, until every file is done or failed)."""
        config = self.config
        try:
            config.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state directory: {exc}") from exc
        for inbox in config.inboxes:
            # A missing outbox is more often a typo than a wish: never create it silently.
            if not inbox.outbox.is_dir():
                raise StateError(
                    f"inbox {inbox.name}: the outbox {inbox.outbox} does not exist;"
                    f" create it (mkdir -p {inbox.outbox})"
                )
        ledger = Ledger(self.ledger_path)
        try:
            self.engine = engines.build(config, daemon=True)
            self.metrics = metrics.from_config(config, self.ledger_path)
            if self.metrics is not None:
                self.metrics.start()
                self.engine.on_request = self.metrics.api_request
            self.receiver = start_receiver(config, self.engine, self.ledger_path)
            self.shared = Shared(self.engine, config, self.stop)
            lifecycle = self._lifecycle(ledger)
            moved = recover(lifecycle, self.engine)
            if moved:
                log.info("resuming: %d interrupted file(s) queued again", moved)
            ledger.set_paused(None)
            self.modes = {inbox.name: watch_mode(inbox) for inbox in config.inboxes}
            if not self.once:
                self._ensure_watches(starting=True)
            finisher = self.finisher = Finisher(
                config, self.ledger_path, on_finished=self._on_finished
            )
            old = self._old_engine_threads(ledger)  # before intake: it tells them its inboxes
            self._spawn("intake", self._intake_loop)
            for name, target in [*finisher.threads(), *self._engine_threads(), *old]:
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
            self._shut_down()
            ledger.close()

    def _shut_down(self) -> None:
        """Tell systemd what comes (a reload, or a stop), then stop every thread within
        STOP_WITHIN seconds: a step cut short is as safe as a crash, which the ledger
        is made for."""
        if self.reloading:
            service.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        else:
            service.notify("STOPPING=1")
        self.stop.set()
        for event in self.loop_events:
            event.set()
        self.events.put(("", "", SCAN_DIR))  # wakes intake (no inbox has that name)
        if self.finisher is not None:
            self.finisher.wake()
        for observer in self.observers.values():
            observer.stop()
        deadline = time.monotonic() + STOP_WITHIN
        if self.engine is not None:
            self.engine.close()
        for old in self.old_engines:
            old.engine.close()
        for observer in self.observers.values():
            observer.join(timeout=max(0.0, deadline - time.monotonic()))
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        left = [thread.name for thread in self.threads if thread.is_alive()]
        if left:
            log.warning("stopped with %s still busy; the next start resumes", ", ".join(left))
        if self.metrics is not None:
            self.metrics.stop()
        if self.receiver is not None:
            self.receiver.stop()

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
            self.wake.clear()
            if self.fatal:
                log.critical("stopping: %s", self.fatal)
                return ExitCode.SOFTWARE
            if self.flags.stop:
                names = ", ".join(signal.Signals(n).name for n in self.flags.signals)
                log.info("stopping (%s)", names or "asked to")
                if signal.SIGINT in self.flags.signals:
                    return ExitCode.INTERRUPTED
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
                if ledger.changed():
                    service.notify("STATUS=" + self.status_line(ledger))
                next_status = now + STATUS_EVERY
                if not self.once:
                    self._ensure_watches()
            if self.once and self.scanned.is_set():
                result = self._once_progress(ledger, started)
                if result is not None:
                    return result
                self.wake.wait(0.1)
                continue
            until = [next_status - time.monotonic()]
            if watchdog:
                until.append(next_ping - time.monotonic())
            self.wake.wait(max(0.01, min(until)))

    def status_line(self, ledger: Ledger) -> str:
        counts = {state: 0 for state in ("pending", "processing", "done", "failed")}
        for per_inbox in ledger.counts_by_inbox().values():
            for state in counts:
                counts[state] += per_inbox.get(state, 0) + (
                    per_inbox.get("uploading", 0) if state == "processing" else 0
                )
        paused = " (remote work paused)" if self.paused_reason else ""
        return (
            f"{counts['pending']} pending, {counts['processing']} in flight,"
            f" {counts['done']} done, {counts['failed']} failed{paused}"
        )

    @property
    def paused_reason(self) -> str | None:
        return self.shared.gate.reason if self.shared is not None else None

    def _once_progress(self, ledger: Ledger, started: float) -> int | None:
        """In once mode: report progress; return the exit code when all is finished."""
        names = [inbox.name for inbox in self.config.inboxes]
        waiting = ledger.count(WAITING, inboxes=names)  # settling files have rows too
        if self.progress is not None:
            done, failed = ledger.finished_since(started)
            self.progress(done + failed, done + failed + waiting, failed)
        if self.paused_reason and ledger.count((State.FETCHED,)) == 0:
            log.error("%s", self.paused_reason)
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
            for row in ledger.rows(states=(State.FAILED,))
            if row.updated_at >= started or self._source_present(row.inbox, row.relpath)
        ]
        return ExitCode.FAILURES if failed_rows else ExitCode.OK

    def _source_present(self, inbox_name: str, relpath: str) -> bool:
        for inbox in self.config.inboxes:
            if inbox.name == inbox_name:
                return (inbox.path / relpath).exists()
        return False


def serve(
    config_path: Path, config: Config, on_config: Callable[[Config], None] | None = None
) -> int:
    """`ocrwatchd run`: run, reloading the config on SIGHUP, until SIGTERM/SIGINT.
    `on_config` is told of each config reloaded (the state lock records its engine)."""
    while True:
        daemon = Daemon(config)
        daemon.install_signal_handlers()
        code = daemon.run()
        if not daemon.reloading:
            return code
        try:
            config = load_config(config_path)
            log.info("config reloaded from %s", config_path)
            if on_config is not None:
                on_config(config)
        except ConfigError as exc:
            log.error("config reload failed; keeping the old config:\n%s", exc)
        service.setup_logging(config.log_level)
