"""The engine loops' threads, for the daemon: a few submitters and pollers over the
configured engine, and a poller for each engine the config no longer names while its
jobs are in flight (see `ocrwatchd.handover`). A mixin of `Daemon`, kept apart so each
module stays one responsibility."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ocrwatchd import handover
from ocrwatchd.config import Config
from ocrwatchd.ledger import Ledger
from ocrwatchd.lifecycle import Lifecycle
from ocrwatchd.pipeline import Poller, Shared, Submitter, run_loop

if TYPE_CHECKING:
    from ocrwatchd.engines.base import Engine
    from ocrwatchd.finisher import Finisher
    from ocrwatchd.metrics import Metrics

log = logging.getLogger(__name__)

Thread = tuple[str, Callable[[threading.Event], None]]


class EngineThreads:
    """What the daemon gives the engine loops (set by `Daemon`)."""

    config: Config
    engine: Engine | None
    shared: Shared | None
    old_engines: list[Shared]
    finisher: Finisher | None
    metrics: Metrics | None
    loop_events: list[threading.Event]
    ledger_path: Path
    stop: threading.Event

    def _on_finished(self, inbox: str, outcome: str) -> None:
        raise NotImplementedError

    def _lifecycle(
        self, ledger: Ledger, finisher: Finisher | None = None, engine: Engine | None = None
    ) -> Lifecycle:
        engine = engine or self.engine
        assert engine is not None
        return Lifecycle(
            ledger,
            {inbox.name: inbox for inbox in self.config.inboxes},
            policy=engine.policy,
            on_result=finisher.notify if finisher else None,
            on_finished=self._on_finished,
        )

    def _loop_thread(
        self,
        make: Callable[[Lifecycle], Submitter | Poller],
        *wakeups: object,
        engine: Engine | None = None,
    ) -> Callable[[threading.Event], None]:
        event = threading.Event()
        self.loop_events.append(event)
        for wakeup in wakeups:
            wakeup.subscribe(event)  # type: ignore[attr-defined]

        def target(stop: threading.Event) -> None:
            ledger = Ledger(self.ledger_path)
            try:
                loop = make(self._lifecycle(ledger, self.finisher, engine))
                run_loop(type(loop).__name__.lower(), loop.step, loop.rest, event, stop)
            finally:
                ledger.close()

        return target

    def _engine_threads(self) -> list[Thread]:
        """A submitter and a poller loop per engine thread: submissions and polls of
        the API wait on the network, so the Mindee engine gets several of each."""
        shared = self.shared
        assert shared is not None and self.engine is not None
        remote = self.engine.name == "mindee"
        submitters = max(1, min(4 if remote else 1, self.engine.capacity))
        pollers = 2 if remote else 1
        threads = [
            (
                f"submitter-{n}",
                self._loop_thread(lambda lc: Submitter(shared, lc), shared.submit_wake),
            )
            for n in range(submitters)
        ]
        for index in range(pollers):
            threads.append(
                (
                    f"poller-{index}",
                    self._loop_thread(
                        lambda lc, i=index: Poller(shared, lc, (i, pollers)),  # type: ignore[misc]
                        shared.poll_wake,
                        self.engine.news,
                    ),
                )
            )
        return threads

    def _old_engine_threads(self, ledger: Ledger) -> list[Thread]:
        """A poller for each engine the config no longer names that still has jobs in
        flight: they finish where they started (a paid job is not done again locally)."""
        assert self.engine is not None
        threads = []
        for name, count in handover.in_flight(ledger, self.engine.name).items():
            engine = handover.build(self.config, name)
            if engine is None:
                log.warning(
                    "%d job(s) started on the %s engine wait: %s",
                    count,
                    name,
                    handover.missing(self.config, name),
                )
                continue
            log.info("%d job(s) started on the %s engine finish there", count, name)
            if self.metrics is not None:
                engine.on_request = self.metrics.api_request
            shared = Shared(engine, self.config, self.stop)
            self.old_engines.append(shared)
            threads.append(
                (
                    f"poller-{name}",
                    self._loop_thread(
                        lambda lc, s=shared: Poller(s, lc, (0, 1)),  # type: ignore[misc]
                        shared.poll_wake,
                        engine.news,
                        engine=engine,
                    ),
                )
            )
        return threads

    # -- running -------------------------------------------------------------------
