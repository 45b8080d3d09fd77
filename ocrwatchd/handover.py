"""Jobs that outlive their engine's place in the config: a reload from mindee to local
must not drop the paid jobs in flight (nor poll the API for job ids a local worker made
up). In-flight jobs finish on the engine that started them; new files go to the new one.

`recover` decides at start which interrupted rows are submitted again; `in_flight` and
`build` give the daemon what it needs to keep a poller of an old engine until its jobs
drain; `waiting` tells `status` about jobs that wait for a config able to follow them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from ocrwatchd import engines
from ocrwatchd.lifecycle import Interrupted, Lifecycle, State

if TYPE_CHECKING:
    from ocrwatchd.config import Config
    from ocrwatchd.engines.base import Engine
    from ocrwatchd.ledger import Ledger


def durable(name: str | None) -> bool:
    """Whether the engine called `name` keeps its jobs when the daemon stops (a remote
    API does; a local worker process does not)."""
    if name not in ("mindee", "local"):
        return False
    return engines.engine_class_named(name).durable_jobs


def recover(lifecycle: Lifecycle, engine: Engine) -> int:
    """Put work cut short by a stop or a crash back in the queue; returns how many rows.

    A submission cut short is made again (the one upload that may repeat). A job keeps
    being followed when its engine's job ids survive a restart: by the configured engine,
    or, for another engine's job (the config changed engines), by a poller kept for that
    engine (see `in_flight`). Otherwise the file is submitted again.
    """
    moved = 0
    for row in lifecycle.ledger.rows(states=(State.UPLOADING, State.PROCESSING)):
        followed = engine.durable_jobs if row.engine == engine.name else durable(row.engine)
        resumable = row.state == State.PROCESSING and row.job_id is not None and followed
        if not resumable and lifecycle.apply(row, Interrupted()):
            moved += 1
    return moved


def in_flight(ledger: Ledger, current: str) -> dict[str, int]:
    """{engine name: jobs} of the jobs in flight on durable engines other than `current`."""
    counts: dict[str, int] = {}
    for row in ledger.rows(states=(State.PROCESSING,)):
        name = row.engine
        if name and name != current and row.job_id is not None and durable(name):
            counts[name] = counts.get(name, 0) + 1
    return counts


def missing(config: Config, name: str) -> str | None:
    """What the config lacks to follow engine `name`'s jobs, or None."""
    problems = engines.problems(replace(config, engine=name))
    return problems[0] if problems else None


def build(config: Config, name: str) -> Engine | None:
    """Engine `name`, as the config describes it, to follow its jobs in flight; None
    when the config lacks what it needs (see `missing`)."""
    if missing(config, name) is not None:
        return None
    return engines.build(replace(config, engine=name), daemon=True)


def waiting(config: Config, counts: Mapping[str, int]) -> list[str]:
    """One sentence per old engine whose jobs are in flight (for `status`)."""
    lines = []
    for name, count in sorted(counts.items()):
        lack = missing(config, name)
        if lack is None:
            lines.append(f"{count} job(s) started on the {name} engine finish there")
        else:
            lines.append(
                f"{count} job(s) started on the {name} engine wait: {lack}; reload with a"
                " config that has one"
            )
    return lines
