"""The config's cross-field rules (a model for every inbox, unique inbox names, disjoint
directories, no secret pasted in) and `check_environment`, which looks at the filesystem.
Problems are recorded in the `Context` (or returned, formatted), never raised one by one."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocrwatchd.config_yaml import Context, format_problem

if TYPE_CHECKING:
    from ocrwatchd.config import Config

CREDENTIAL_NAME = "mindee-api-key"
KEY_PLACES = {
    "api_key_file": "mindee.api_key_file",
    "credentials": f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}",
    "env": "$MINDEE_V2_API_KEY",
}
_OVERLAP = "inbox, outbox, archive, failed and state directories must not overlap"


def check_environment(config: Config) -> list[str]:
    """Given a loaded Config, return the filesystem problems, formatted like `load_config`'s.

    Inboxes must be readable directories (writable too unless on_success is keep); outboxes,
    archive and failed directories (and the metrics textfile's directory) must exist and be
    writable: a missing one is more often a typo than a wish, so it is never created
    silently. The state directory may be missing if it can be created. (The engine's own problems
    come from `ocrwatchd.engines.problems`.) An empty list means all is well.
    """
    problems: list[str] = []

    def report(key: str, message: str | None) -> None:
        if message:
            problems.append(format_problem(config.source, config.marks.get(key), key, message))

    for index, inbox in enumerate(config.inboxes):
        key = f"inboxes[{index}]"
        report(f"{key}.path", _inbox_problem(inbox.path, inbox.on_success))
        for name in ("outbox", "archive_dir", "failed_dir"):
            directory = getattr(inbox, name)
            if directory is not None:
                report(f"{key}.{name}", _existing_dir_problem(directory))
    report("state_dir", _writable_problem(config.state_dir))
    if config.metrics.textfile is not None:
        report("metrics.textfile", _existing_dir_problem(config.metrics.textfile.parent))
    return problems


def _reported(ctx: Context, key: str) -> bool:
    return any(problem[1] == key for problem in ctx.problems)


def check_mindee_engine(
    mindee: dict[str, Any],
    inboxes: Sequence[dict[str, Any]],
    key_source: str | None,
    automatic: bool,
    ctx: Context,
) -> None:
    """The mindee engine needs an API key and, for every inbox, a model."""
    if key_source is None:
        places = ", ".join(KEY_PLACES.values())
        ctx.problem(
            ctx.marks.get("engine"), "engine", f"is mindee but no API key was found in {places}"
        )
    if "model_id" in mindee or _reported(ctx, "mindee.model_id"):
        return
    why = (
        f" (chosen because an API key is in {KEY_PLACES[key_source]})"
        if automatic and key_source
        else ""
    )
    for index, inbox in enumerate(inboxes):
        key = f"inboxes[{index}]"
        if inbox and "model_id" not in inbox and not _reported(ctx, f"{key}.model_id"):
            message = (
                f"no model: the mindee engine{why} needs mindee.model_id or this inbox's model_id"
            )
            if automatic:
                message += ", or set engine: local"
            ctx.problem(ctx.marks.get(key), f"{key}.model_id", message)


def check_inboxes(inboxes: Sequence[dict[str, Any]], ctx: Context) -> None:
    """Inbox names are unique; on_success: archive needs an archive_dir."""
    owners: dict[str, str] = {}
    for index, inbox in enumerate(inboxes):
        key = f"inboxes[{index}]"
        name = inbox.get("name")
        if name in owners:
            ctx.problem(
                ctx.marks.get(f"{key}.name"), f"{key}.name", f"{owners[name]} has this name too"
            )
        elif name:
            owners[name] = f"{key}.name"
        archive_key = f"{key}.archive_dir"
        archive_missing = "archive_dir" not in inbox and not _reported(ctx, archive_key)
        if inbox.get("on_success") == "archive" and archive_missing:
            message = "is archive, but archive_dir is not set"
            ctx.problem(ctx.marks.get(f"{key}.on_success"), f"{key}.on_success", message)


@dataclass(frozen=True)
class _Place:
    """A directory of the config, as written and with symlinks resolved."""

    key: str
    label: str
    path: Path
    resolved: Path = field(init=False)

    def __post_init__(self) -> None:
        try:
            resolved = self.path.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            resolved = self.path
        object.__setattr__(self, "resolved", resolved)


def check_disjoint(
    state_dir: Path, state_label: str, inboxes: Sequence[dict[str, Any]], ctx: Context
) -> None:
    """No two of the inbox, outbox, archive, failed and state directories are equal or nested
    (Guarantee 5), across all inboxes: otherwise results would be watched as new files, or
    two inboxes' results would collide."""
    places = [_Place("state_dir", state_label, state_dir)]
    for index, inbox in enumerate(inboxes):
        for name in ("path", "outbox", "archive_dir", "failed_dir"):
            if name in inbox:
                key = f"inboxes[{index}].{name}"
                places.append(_Place(key, key, inbox[name]))
    for first, second in combinations(places, 2):
        for a, b in ((first.path, second.path), (first.resolved, second.resolved)):
            if a == b:
                _report_overlap(second, first, "is the same directory as", ctx)
            elif b.is_relative_to(a):
                _report_overlap(second, first, "is inside", ctx)
            elif a.is_relative_to(b):
                _report_overlap(first, second, "is inside", ctx)
            else:
                continue
            break


def _report_overlap(inner: _Place, outer: _Place, relation: str, ctx: Context) -> None:
    """Report at the inner place, unless only the outer one is written in the file."""
    if inner.key in ctx.marks or outer.key not in ctx.marks:
        message = f"{inner.path} {relation} {outer.label} ({outer.path})"
        ctx.problem(ctx.marks.get(inner.key), inner.key, f"{message}; {_OVERLAP}")
    else:
        relation = "contains" if relation == "is inside" else relation
        message = f"{outer.path} {relation} {inner.label} ({inner.path})"
        ctx.problem(ctx.marks.get(outer.key), outer.key, f"{message}; {_OVERLAP}")


def check_secret_places(
    values: dict[str, Any], inboxes: Sequence[dict[str, Any]], ctx: Context
) -> None:
    """A secret file inside a watched folder could be picked up (and uploaded) as a document."""
    secrets = {
        "mindee.api_key_file": values.get("mindee", {}).get("api_key_file"),
        "webhook.secret_file": (values.get("webhook") or {}).get("secret_file"),
    }
    for key, path in secrets.items():
        for index, inbox in enumerate(inboxes):
            inbox_path = inbox.get("path")
            if (
                path
                and inbox_path
                and _Place(key, key, path).resolved.is_relative_to(
                    _Place(key, key, inbox_path).resolved
                )
            ):
                ctx.problem(
                    ctx.marks.get(key),
                    key,
                    f"{path} is inside inboxes[{index}].path; keep secrets out of watched folders",
                )


def _inbox_problem(path: Path, on_success: str) -> str | None:
    """Given an inbox directory, return why it cannot be watched, or None."""
    try:
        if not path.exists():
            return f"{path} does not exist"
        if not path.is_dir():
            return f"{path} is not a directory"
    except OSError as error:
        return f"{path} cannot be checked: {error.strerror}"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"{path} is not readable"
    if on_success != "keep" and not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable, but on_success: {on_success} removes files from it"
    return None


def _existing_dir_problem(path: Path) -> str | None:
    """Given a directory the daemon writes to but never creates, return why it cannot be
    used, or None. A missing one gets the command that creates it, unless it cannot be."""
    try:
        missing = not path.exists() and not path.is_symlink()
    except OSError as error:
        return f"{path} cannot be checked: {error.strerror}"
    problem = _writable_problem(path)
    if missing and problem is None:
        return f"{path} does not exist; create it (mkdir -p {shlex.quote(str(path))})"
    return problem


def _writable_problem(path: Path) -> str | None:
    """Given a directory the daemon writes to, return why it cannot, or None.

    A missing directory is fine when it can be created: its nearest existing ancestor is a
    writable directory (the daemon creates missing parents too).
    """
    try:
        if path.is_symlink() and not path.exists():
            return f"{path} is a broken symlink"
        if path.exists():
            if not path.is_dir():
                return f"{path} is not a directory"
            if not os.access(path, os.W_OK | os.X_OK):
                return f"{path} is not writable"
            return None
        ancestor = path.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            return f"{path} cannot be created: {ancestor} is not a directory"
    except OSError as error:
        return f"{path} cannot be checked: {error.strerror}"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {ancestor} is not writable"
    return None
