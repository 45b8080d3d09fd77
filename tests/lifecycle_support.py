"""Helpers for the in-process tests of the ledger, the lifecycle and the engine loops:
a manual clock, a config built from real temporary folders, rows put in a given state
through the ledger, and a scripted engine (the one boundary these tests fake)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ocrwatchd.config import Config, InboxConfig, LocalConfig, MindeeConfig
from ocrwatchd.engines.base import Engine, JobRef, Submission
from ocrwatchd.fsafe import identity_of
from ocrwatchd.ledger import Ledger, Row
from ocrwatchd.lifecycle import Lifecycle, Outcome, RetryPolicy, State, Submitted
from ocrwatchd.pipeline import Gate, Poller, Shared, Submitter

START = 1_700_000_000.0  # an epoch well after 0, so "due at 0" rows are due
SHA = "a" * 64


class ManualClock:
    """Wall time that moves only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def to(self, when: float) -> float:
        self.now = max(self.now, when)
        return self.now


def make_inbox(root: Path, name: str = "scans", **overrides: Any) -> InboxConfig:
    """An inbox with real inbox and outbox folders under `root`."""
    path, out = root / f"{name}-in", root / f"{name}-out"
    path.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return InboxConfig(name=name, path=path, outbox=out, settle_seconds=0, **overrides)


def make_config(root: Path, inboxes: Iterable[InboxConfig], engine: str = "fake") -> Config:
    return Config(
        source=root / "ocrwatchd.yaml",
        state_dir=root / "state",
        engine=engine,
        engine_chosen_automatically=False,
        log_level="info",
        mindee=MindeeConfig(
            api_key=None, api_key_source=None, base_url="http://127.0.0.1:9", model_id="model"
        ),
        local=LocalConfig(),
        webhook=None,
        inboxes=tuple(inboxes),
    )


def without_inbox(config: Config, name: str) -> Config:
    return replace(config, inboxes=tuple(i for i in config.inboxes if i.name != name))


def put(
    ledger: Ledger, state: State, relpath: str = "a.pdf", inbox: str = "scans", **fields: Any
) -> Row:
    """A row in `state`, made through the ledger (a fetched row gets a stored result)."""
    body = fields.pop("result", b'{"ok": true}') if state == State.FETCHED else None
    if state == State.FETCHED:
        row = ledger.insert(inbox, relpath, State.PROCESSING, **fields)
        assert row is not None
        moved = ledger.move(row, State.FETCHED, result=body)
        assert moved is not None
        return moved
    row = ledger.insert(inbox, relpath, state, **fields)
    assert row is not None, f"{inbox}/{relpath} exists already"
    return row


def drop_pending(
    ledger: Ledger, inbox: InboxConfig, relpath: str, data: bytes = b"%PDF-1.4\n"
) -> Row:
    """A real file in the inbox and its pending row carrying the file's identity (what
    intake leaves behind once the file settled)."""
    path = inbox.path / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    identity = identity_of(os.stat(path))
    return put(ledger, State.PENDING, relpath, inbox.name, sha256="0" * 64, **identity)


class World:
    def __init__(self, tmp_path: Path, **inbox: Any) -> None:
        self.clock = ManualClock()
        self.inbox = make_inbox(tmp_path, **inbox)
        self.ledger = Ledger(tmp_path / "state" / "ledger.db", clock=self.clock)
        self.ledger.set_inbox("scans", path=str(self.inbox.path), watch="events", available=True)
        self.finished: list[tuple[str, str]] = []
        self.results: list[tuple[int, bytes]] = []
        self.lifecycle = Lifecycle(
            self.ledger,
            {"scans": self.inbox},
            on_result=lambda row, body: self.results.append((row.id, body)),
            on_finished=lambda inbox, outcome: self.finished.append((inbox, outcome)),
            clock=self.clock,
        )

    def row(self, state: State, relpath: str = "a.pdf", **fields: Any) -> Row:
        defaults = {"sha256": SHA, "attempts": 1, "engine": "fake", "size": 3, "mtime_ns": 4}
        if state in (State.PROCESSING, State.FETCHED):
            defaults["job_id"] = "job-0"
        return put(self.ledger, state, relpath, **{**defaults, **fields})

    def current(self, row: Row) -> Row:
        now = self.ledger.get(row.id)
        assert now is not None
        return now


Script = Callable[[Any], Outcome]


class FakeEngine(Engine):
    """An engine that answers from scripts: `on_submit(submission)` and `on_poll(job)`
    (each a callable, or an Outcome to answer every time); it records every call."""

    def __init__(
        self,
        *,
        name: str = "fake",
        durable: bool = True,
        capacity: int = 10,
        policy: RetryPolicy | None = None,
        on_submit: Script | Outcome | None = None,
        on_poll: Script | Outcome | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.durable_jobs = durable
        self._capacity = capacity
        self.policy = policy or RetryPolicy()
        self.on_submit = on_submit
        self.on_poll = on_poll
        self.submitted: list[Submission] = []
        self.polled: list[JobRef] = []

    @classmethod
    def from_config(cls, config: Config, *, daemon: bool = False) -> FakeEngine:
        return cls()

    @property
    def capacity(self) -> int:
        return self._capacity

    def submit(self, submission: Submission) -> Outcome:
        self.submitted.append(submission)
        return self._answer(self.on_submit, submission, Submitted(f"job-{len(self.submitted)}", 1))

    def poll(self, job: JobRef) -> Outcome:
        self.polled.append(job)
        return self._answer(self.on_poll, job, None)

    def close(self) -> None:
        pass

    @staticmethod
    def _answer(script: Script | Outcome | None, arg: Any, default: Outcome | None) -> Outcome:
        if isinstance(script, Outcome):
            return script
        if script is not None:
            return script(arg)
        assert default is not None, "the test did not script this call"
        return default


class Rig:
    """One engine's loops over one ledger, each loop with its own connection."""

    def __init__(
        self, tmp_path: Path, engine: FakeEngine, *, inboxes: tuple[str, ...] = ("scans",)
    ):
        self.clock = ManualClock()
        self.engine = engine
        self.inboxes = {name: make_inbox(tmp_path, name) for name in inboxes}
        self.inbox = next(iter(self.inboxes.values()))
        self.config = make_config(tmp_path, self.inboxes.values())
        self.path = tmp_path / "state" / "ledger.db"
        self.connections: list[Ledger] = []
        self.ledger = self.connect()
        for inbox in self.inboxes.values():
            self.ledger.set_inbox(inbox.name, path=str(inbox.path), watch="events", available=True)
        self.shared = Shared(engine, self.config, threading.Event(), gate=Gate(clock=self.clock))

    def connect(self) -> Ledger:
        ledger = Ledger(self.path, clock=self.clock)
        self.connections.append(ledger)
        return ledger

    def lifecycle(self) -> Lifecycle:
        return Lifecycle(self.connect(), self.inboxes, policy=self.engine.policy, clock=self.clock)

    def submitter(self) -> Submitter:
        return Submitter(self.shared, self.lifecycle())

    def poller(self) -> Poller:
        return Poller(self.shared, self.lifecycle(), (0, 1))

    def drop(self, relpath: str = "a.pdf") -> Row:
        return drop_pending(self.ledger, self.inbox, relpath)

    def row(self, relpath: str = "a.pdf", inbox: str = "scans") -> Row:
        row = self.ledger.find(inbox, relpath)
        assert row is not None
        return row

    def due(self, row: Row) -> None:
        self.clock.to(row.next_attempt_at)

    def close(self) -> None:
        for ledger in self.connections:
            ledger.close()


def rigs(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """The body of a `make_rig` fixture: makes rigs, closes them after the test."""
    made: list[Rig] = []

    def make(engine: FakeEngine, **options: Any) -> Rig:
        made.append(Rig(tmp_path, engine, **options))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def statements(ledger: Ledger) -> list[str]:
    """Every SQL statement `ledger` runs from now on is appended to the returned list."""
    seen: list[str] = []
    ledger.db.conn.set_trace_callback(seen.append)
    return seen
