"""Prometheus metrics: an HTTP listener for /metrics and/or a textfile for node_exporter.

Two kinds of figures. Counts of files by state, inbox availability, the oldest waiting file
and the pause come from the ledger, read at scrape time by `LedgerCollector` (so they are
right even for work done before this process started, and cost nothing between scrapes).
Counters of finished files and API requests live in this process and are fed by the work
threads through `Metrics.file_finished` and `Metrics.api_request`.

Everything is in a private `CollectorRegistry`, never prometheus_client's global one: a
reload builds a new `Metrics`, and tests run several side by side.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

from ocrwatchd.errors import ExitCode, OcrwatchdError
from ocrwatchd.ledger import PUBLIC_STATES, Ledger

if TYPE_CHECKING:
    from ocrwatchd.config import Config

log = logging.getLogger(__name__)

TEXTFILE_EVERY = 15.0
OUTCOMES = ("done", "failed")
ENDPOINTS = ("enqueue", "job", "result")
# From a poll on the same network (tens of ms) to a large upload or a request that runs
# into request_timeout (120 s by default).
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class MetricsError(OcrwatchdError):
    """The metrics listener cannot be started (address in use, not an address here)."""

    exit_code = ExitCode.UNAVAILABLE


class LedgerCollector(Collector):
    """The ledger-derived gauges, read when scraped.

    Each scrape opens its own `Ledger` connection: scrapes run on the listener's request
    threads or the textfile thread, and SQLite connections are not shared between threads.
    WAL readers never block the daemon's writers.
    """

    def __init__(
        self, ledger_path: Path, inboxes: Sequence[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.ledger_path = ledger_path
        self.inboxes = tuple(inboxes)
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        files = GaugeMetricFamily(
            "ocrwatchd_files", "Files in the ledger by public state", labels=["inbox", "state"]
        )
        available = GaugeMetricFamily(
            "ocrwatchd_inbox_available",
            "1 when the inbox folder is there and watched, 0 when it is away (unmounted)",
            labels=["inbox"],
        )
        oldest = GaugeMetricFamily(
            "ocrwatchd_oldest_pending_seconds",
            "Age of the inbox's oldest file not yet done or failed (0 when none waits)",
            labels=["inbox"],
        )
        paused = GaugeMetricFamily(
            "ocrwatchd_paused",
            "1 while remote work is paused (the API refused the account; see status)",
        )
        counts: dict[str, dict[str, int]] = {}
        waiting: dict[str, float] = {}
        info: dict[str, dict[str, object]] = {}
        # Before the daemon's first start there is no ledger; opening one would create it.
        if self.ledger_path.exists():
            ledger = Ledger(self.ledger_path)
            try:
                counts = ledger.counts_by_inbox()
                waiting = ledger.oldest_waiting()
                info = ledger.inbox_info()
            finally:
                ledger.close()
        now = self.clock()
        for inbox in self.inboxes:
            inbox_counts = counts.get(inbox, {})
            for state in PUBLIC_STATES:
                files.add_metric([inbox, state], inbox_counts.get(state, 0))
            known = info.get(inbox, {})
            available.add_metric([inbox], 1 if known.get("available", 1) else 0)
            since = waiting.get(inbox)
            oldest.add_metric([inbox], max(0.0, now - since) if since is not None else 0.0)
        paused.add_metric([], 1 if any(row.get("paused_reason") for row in info.values()) else 0)
        yield from (files, available, oldest, paused)


class _Server(ThreadingHTTPServer):
    # Scrapes are short; a client that hangs up mid-answer must not keep shutdown waiting.
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class Metrics:
    """The daemon's metrics: a registry, the counters the work threads feed, and the
    places it is published (`listen`, `textfile`). `start()` begins publishing,
    `stop()` ends it (and writes the textfile one last time)."""

    def __init__(
        self,
        ledger_path: Path,
        inboxes: Sequence[str],
        *,
        listen: tuple[str, int] | None = None,
        textfile: Path | None = None,
        textfile_every: float = TEXTFILE_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.listen = listen
        self.textfile = textfile
        self.textfile_every = textfile_every
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(LedgerCollector(ledger_path, inboxes, clock=clock))
        self._finished = Counter(
            "ocrwatchd_files_finished",
            "Files that reached done or failed since the daemon started",
            ["inbox", "outcome"],
            registry=self.registry,
        )
        self._requests = Counter(
            "ocrwatchd_api_requests",
            "Mindee API requests by endpoint (enqueue, job, result) and HTTP status or error",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self._durations = Histogram(
            "ocrwatchd_api_request_duration_seconds",
            "Mindee API request durations, by endpoint",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        # Series that exist from the start let rate() and increase() see the first event.
        for inbox in inboxes:
            for outcome in OUTCOMES:
                self._finished.labels(inbox, outcome)
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- fed by the work threads (thread-safe) -------------------------------------------

    def file_finished(self, inbox: str, outcome: str) -> None:
        """A file of `inbox` reached `outcome` ("done" or "failed")."""
        self._finished.labels(inbox, outcome).inc()

    def api_request(self, endpoint: str, status: int | str, seconds: float) -> None:
        """One API request to `endpoint` ("enqueue", "job" or "result") ended with the HTTP
        `status`, or "error" when no answer came; it took `seconds`."""
        self._requests.labels(endpoint, str(status)).inc()
        self._durations.labels(endpoint).observe(seconds)

    # -- publishing ----------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int] | None:
        """The listener's (host, port), with the port chosen by the kernel for port 0."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Start the listener and the textfile thread, as configured.

        Raises MetricsError when the listen address cannot be bound."""
        if self.listen is not None:
            host, port = self.listen
            server_class = _Server6 if ":" in host else _Server
            try:
                self._server = server_class((host, port), MetricsHandler.factory(self.registry))
            except OSError as exc:
                raise MetricsError(
                    f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
                ) from exc
            self._spawn("metrics-http", self._server.serve_forever)
            shown = f"[{host}]" if ":" in host else host
            log.info("metrics on http://%s:%d/metrics", shown, self._server.server_address[1])
        if self.textfile is not None:
            self.write_textfile()
            self._spawn("metrics-textfile", self._textfile_loop)

    def stop(self) -> None:
        """Stop publishing; the textfile gets the final figures. Safe to call twice."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._server is not None:
            self._server.server_close()
            self._server = None
        if self.textfile is not None:
            self.write_textfile()

    def write_textfile(self) -> None:
        """Rewrite the textfile atomically (a temporary file beside it, then a rename).

        A failure is logged, not raised: metrics must never stop the OCR work."""
        assert self.textfile is not None
        try:
            write_to_textfile(str(self.textfile), self.registry)
        except Exception as exc:
            log.warning("cannot write the metrics textfile %s: %s", self.textfile, exc)

    def _textfile_loop(self) -> None:
        while not self._stop.wait(self.textfile_every):
            self.write_textfile()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"ocrwatchd-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def __enter__(self) -> Metrics:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def from_config(config: Config, ledger_path: Path) -> Metrics | None:
    """The Metrics the config asks for (`metrics.listen` and/or `metrics.textfile`), not
    started yet; None when it asks for none."""
    settings = config.metrics
    if settings.listen is None and settings.textfile is None:
        return None
    return Metrics(
        ledger_path,
        [inbox.name for inbox in config.inboxes],
        listen=settings.listen,
        textfile=settings.textfile,
    )
