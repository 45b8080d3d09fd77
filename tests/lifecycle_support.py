"""Helpers for the in-process tests of the ledger, the lifecycle and the engine loops:
a manual clock, a config built from real temporary folders, rows put in a given state
through the ledger, and a scripted engine (the one boundary these tests fake)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ocrwatchd.config import Config, InboxConfig, LocalConfig, MindeeConfig
from ocrwatchd.engines.base import Engine, JobRef, Submission
from ocrwatchd.ledger import Ledger, Row
from ocrwatchd.lifecycle import Outcome, RetryPolicy, State, Submitted
from ocrwatchd.pipeline import identity_of

START = 1_700_000_000.0  # an epoch well after 0, so "due at 0" rows are due


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


def statements(ledger: Ledger) -> list[str]:
    """Every SQL statement `ledger` runs from now on is appended to the returned list."""
    seen: list[str] = []
    ledger.db.conn.set_trace_callback(seen.append)
    return seen
