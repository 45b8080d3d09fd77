"""YAML config -> frozen dataclasses, every problem reported as `FILE:LINE:COL: key: message`.

`load_config` works in borgmatic's steps: read and parse the file into a YAML node tree
(so each value keeps its line and column); check and convert it against the schema in
`ocrwatchd.config_schema` (types, choices, unknown and duplicate keys); resolve what comes
from outside the file (state directory, API key, base URL, engine) and check the rules that
span several keys (a model for every inbox, disjoint directories); build the dataclasses.
Problems are collected, not raised one by one: one `ConfigError` carries all of them.

Paths: `~` is expanded, and a relative path is relative to the directory holding the config
file (not the working directory, so a config means the same wherever the daemon starts).
Paths are stored absolute and normalised, with symlinks kept as written; the disjointness
check compares both the written and the symlink-resolved paths.

Where values come from when the file does not give them:

- `state_dir`: `$STATE_DIRECTORY` (its first entry; systemd separates several with ':'),
  else `$XDG_STATE_HOME/ocrwatchd`, else `~/.local/state/ocrwatchd`.
- the API key: `mindee.api_key_file`, else `$CREDENTIALS_DIRECTORY/mindee-api-key`
  (systemd `LoadCredential=`), else `$MINDEE_V2_API_KEY`. An empty key counts as none.
  Key files must not be readable by other users (their group may read them: mode 640 for
  root:ocrwatchd). The key itself never appears in a message.
- the webhook signing secret (with a `webhook:` section): `webhook.secret_file`, else
  `$CREDENTIALS_DIRECTORY/webhook-secret`.
- `mindee.base_url`: `$MINDEE_V2_BASE_URL`, else `https://api-v2.mindee.net`; a trailing
  `/` or `/v2` is dropped, since requests go to `BASE/v2/...`.
- `engine`: `mindee` when an API key is found, else `local`.
- `local.workers`: the number of CPUs the process may run on.

`check_environment` looks at the filesystem (directories exist, or for the state directory
can be created, can be read and written, OCR languages are installed); it is separate so
that loading has no side effects and `check-config` can run both.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from ocrwatchd.config_schema import (
    Context,
    Invalid,
    check_document,
    normalise_base_url,
    parse,
)
from ocrwatchd.errors import ConfigError
from ocrwatchd.secret import Secret

DEFAULT_INCLUDE = (
    "*.pdf",
    "*.jpg",
    "*.jpeg",
    "*.png",
    "*.tif",
    "*.tiff",
    "*.webp",
    "*.heic",
    "*.heif",
)
DEFAULT_BASE_URL = "https://api-v2.mindee.net"
CREDENTIAL_NAME = "mindee-api-key"
WEBHOOK_CREDENTIAL = "webhook-secret"

_KEY_PLACES = {
    "api_key_file": "mindee.api_key_file",
    "credentials": f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}",
    "env": "$MINDEE_V2_API_KEY",
}
# A key with whitespace or control characters inside would break (or inject into) headers.
_NOT_A_KEY = re.compile(r"[\s\x00-\x1f\x7f]")
_OVERLAP = "inbox, outbox, archive, failed and state directories must not overlap"


@dataclass(frozen=True)
class MindeeConfig:
    api_key: Secret | None
    api_key_source: str | None  # where the key came from: "api_key_file", "credentials", "env"
    base_url: str
    model_id: str | None
    webhook_ids: tuple[str, ...] = ()
    max_in_flight: int = 20
    enqueue_per_minute: float = 200
    poll_per_minute: float = 1200
    request_timeout: float = 120
    job_timeout: float = 600
    # The job polling schedule; the defaults are the official SDKs'.
    poll_initial_delay: float = 2
    poll_interval: float = 1.5


@dataclass(frozen=True)
class LocalConfig:
    languages: tuple[str, ...] = ("eng",)
    workers: int = 2
    tessdata_dir: Path | None = None
    max_pixels_per_page: int = 100_000_000
    max_pages: int = 500
    max_seconds_per_file: float = 600
    max_worker_memory_mb: int = 2048


@dataclass(frozen=True)
class WebhookConfig:
    host: str
    port: int
    secret: Secret | None


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int] | None = None  # (host, port) serving /metrics
    textfile: Path | None = None  # a .prom file for node_exporter's textfile collector


@dataclass(frozen=True)
class InboxConfig:
    name: str
    path: Path
    outbox: Path
    model_id: str | None = None
    recursive: bool = True
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()
    watch: str = "auto"  # auto | events | poll
    poll_interval: float = 5
    settle_seconds: float = 2
    on_success: str = "keep"  # keep | delete | archive
    archive_dir: Path | None = None
    failed_dir: Path | None = None
    write_text: bool = False
    dedupe: bool = True
    ready_marker: bool = False  # take NAME only once NAME.ready exists


@dataclass(frozen=True)
class Config:
    source: Path
    state_dir: Path
    engine: str  # mindee | local
    engine_chosen_automatically: bool
    log_level: str
    mindee: MindeeConfig
    local: LocalConfig
    webhook: WebhookConfig | None
    inboxes: tuple[InboxConfig, ...]
    reconcile_interval: float = 60
    metrics: MetricsConfig = MetricsConfig()
    # key path ("inboxes[0].path") -> (line, column), 1-based, for messages about values
    marks: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    def model_id_for(self, inbox: InboxConfig) -> str | None:
        return inbox.model_id or self.mindee.model_id


def format_problem(source: Path, mark: tuple[int, int] | None, key: str, message: str) -> str:
    """Given the config file, a 1-based (line, column) or None, a key path (may be empty)
    and a message, return `FILE:LINE:COL: key: message` (parts that are missing left out)."""
    where = f"{source}:{mark[0]}:{mark[1]}" if mark else str(source)
    return ": ".join(part for part in (where, key, message) if part)


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Given the config file's path and the environment (default `os.environ`), return the Config.

    Raises ConfigError with every problem found (a missing or unreadable file, YAML syntax,
    the schema, the cross-field rules), each formatted by `format_problem`. Reads the key
    files it names but touches nothing else on disk; see `check_environment` for that.
    """
    env = os.environ if env is None else env
    source = Path(os.path.normpath(Path(path).absolute()))
    ctx = Context(base_dir=source.parent, home=env.get("HOME") or os.path.expanduser("~"))
    config = None
    text = _read_text(source, ctx)
    if text is not None:
        root = parse(text, ctx)
        if root is not None or not ctx.problems:
            config = _resolve(source, check_document(root, ctx), env, ctx)
    if ctx.problems or config is None:
        # Whole-file problems first, then the rest in file order.
        ordered = sorted(ctx.problems, key=lambda p: (p[0] is not None, p[0] or (0, 0)))
        raise ConfigError([format_problem(source, *problem) for problem in ordered])
    return config


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


def _read_text(source: Path, ctx: Context) -> str | None:
    """Given the config path, return its text, or None after recording why it cannot be read."""
    try:
        data = source.read_bytes()
    except OSError as error:
        ctx.problem(None, "", f"cannot read the config: {error.strerror or error}")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - data.rfind(b"\n", 0, error.start)
        ctx.problem((line, column), "", "the config is not UTF-8 text")
        return None


def _resolve(
    source: Path, values: dict[str, Any], env: Mapping[str, str], ctx: Context
) -> Config | None:
    """Given the schema-checked values, fill in what comes from the environment, check the
    cross-field rules, and return the Config, or None when any problem was recorded."""
    mindee: dict[str, Any] = values.get("mindee", {})
    inboxes: tuple[dict[str, Any], ...] = values.get("inboxes", ())
    state_dir, state_label = _state_dir(values, env, ctx)
    api_key, key_source = _api_key(mindee, env, ctx)
    base_url = _base_url(mindee, env, ctx)
    if "engine" in values:
        engine, automatic = values["engine"], False
    else:
        engine, automatic = ("mindee" if key_source else "local"), True
    if engine == "mindee":
        _check_mindee_engine(mindee, inboxes, key_source, automatic, ctx)
    _check_inboxes(inboxes, ctx)
    _check_disjoint(state_dir, state_label, inboxes, ctx)
    _check_secret_places(values, inboxes, ctx)
    webhook = _webhook(values.get("webhook"), env, ctx)
    if ctx.problems:
        return None
    options = {k: v for k, v in mindee.items() if k not in ("api_key_file", "base_url")}
    return Config(
        source=source,
        state_dir=state_dir,
        engine=engine,
        engine_chosen_automatically=automatic,
        log_level=values.get("log_level", "info"),
        mindee=MindeeConfig(api_key, key_source, base_url, **{"model_id": None, **options}),
        local=LocalConfig(**{"workers": cpu_count(), **values.get("local", {})}),
        webhook=webhook,
        inboxes=tuple(InboxConfig(**inbox) for inbox in inboxes),
        reconcile_interval=values.get("reconcile_interval", 60),
        metrics=MetricsConfig(**values.get("metrics", {})),
        marks=dict(ctx.marks),
    )


def cpu_count() -> int:
    """Return the number of CPUs this process may run on: the default for local.workers.

    The affinity mask, not os.cpu_count(), so that systemd's CPUAffinity= and container
    cpusets are honoured.
    """
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _absolute(text: str) -> Path:
    return Path(os.path.normpath(Path(text).absolute()))


def _state_dir(values: dict[str, Any], env: Mapping[str, str], ctx: Context) -> tuple[Path, str]:
    """Return the state directory and how to name it in messages."""
    if "state_dir" in values:
        return values["state_dir"], "state_dir"
    first = env.get("STATE_DIRECTORY", "").split(":")[0]
    if first:
        return _absolute(first), "state_dir (from $STATE_DIRECTORY)"
    # The XDG spec says to ignore a relative $XDG_STATE_HOME.
    xdg = env.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):
        return _absolute(xdg) / "ocrwatchd", "state_dir (from $XDG_STATE_HOME)"
    return Path(ctx.home, ".local", "state", "ocrwatchd"), "state_dir (default)"


def _api_key(
    mindee: dict[str, Any], env: Mapping[str, str], ctx: Context
) -> tuple[Secret | None, str | None]:
    """Return the API key and where it came from ("api_key_file", "credentials", "env").

    The source is "api_key_file" whenever that key is set, even if the file has a problem
    (recorded), so that a broken file is not silently replaced by another key.
    """
    if "api_key_file" in mindee:
        value = _read_secret(mindee["api_key_file"], "mindee.api_key_file", ctx, private=True)
        return (Secret(value) if value else None), "api_key_file"
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    if credentials and os.path.isfile(Path(credentials, CREDENTIAL_NAME)):
        # systemd creates credential files itself, private to the service.
        path = Path(credentials, CREDENTIAL_NAME)
        value = _read_secret(path, "mindee", ctx, private=False, required=False)
        if value:
            return Secret(value), "credentials"
    value = env.get("MINDEE_V2_API_KEY", "").strip()
    if not value:
        return None, None
    if _NOT_A_KEY.search(value):
        ctx.problem(
            None, "mindee", "$MINDEE_V2_API_KEY has whitespace or control characters inside"
        )
        return None, "env"
    return Secret(value), "env"


def _read_secret(
    path: Path, key: str, ctx: Context, *, private: bool, required: bool = True
) -> str | None:
    """Given a secret file, return its stripped content, or None (empty, or a problem recorded).

    `private` refuses a file other users may read or write, except the file's group reading
    it: a key owned by root:ocrwatchd with mode 640 is how the service user is given it.
    Messages never show the content.
    """
    mark = ctx.marks.get(key)
    try:
        # stat first: opening a FIFO would block.
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            ctx.problem(mark, key, f"{path} is not a regular file")
            return None
        data = path.read_bytes()
    except OSError as error:
        ctx.problem(mark, key, f"cannot read {path}: {error.strerror or type(error).__name__}")
        return None
    if private and mode & 0o027:
        kind = "readable" if mode & 0o004 else "writable"
        ctx.problem(mark, key, f"{path} is {kind} by other users; chmod 600 {path}")
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        ctx.problem(mark, key, f"{path} is not UTF-8 text")
        return None
    if not value:
        if required:
            ctx.problem(mark, key, f"{path} is empty")
        return None
    if _NOT_A_KEY.search(value):
        ctx.problem(mark, key, f"{path} must hold only the secret, on one line")
        return None
    return value


def _base_url(mindee: dict[str, Any], env: Mapping[str, str], ctx: Context) -> str:
    if "base_url" in mindee:
        return str(mindee["base_url"])
    from_env = env.get("MINDEE_V2_BASE_URL", "").strip()
    if from_env:
        try:
            return normalise_base_url(from_env)
        except Invalid as error:
            ctx.problem(None, "mindee.base_url", f"$MINDEE_V2_BASE_URL {error.message}")
    return DEFAULT_BASE_URL


def _reported(ctx: Context, key: str) -> bool:
    return any(problem[1] == key for problem in ctx.problems)


def _check_mindee_engine(
    mindee: dict[str, Any],
    inboxes: Sequence[dict[str, Any]],
    key_source: str | None,
    automatic: bool,
    ctx: Context,
) -> None:
    """The mindee engine needs an API key and, for every inbox, a model."""
    if key_source is None:
        places = ", ".join(_KEY_PLACES.values())
        ctx.problem(
            ctx.marks.get("engine"), "engine", f"is mindee but no API key was found in {places}"
        )
    if "model_id" in mindee or _reported(ctx, "mindee.model_id"):
        return
    why = (
        f" (chosen because an API key is in {_KEY_PLACES[key_source]})"
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


def _check_inboxes(inboxes: Sequence[dict[str, Any]], ctx: Context) -> None:
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


def _check_disjoint(
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


def _check_secret_places(
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


def _webhook(
    values: dict[str, Any] | None, env: Mapping[str, str], ctx: Context
) -> WebhookConfig | None:
    """The receiver's settings; its signing secret from `secret_file`, else the systemd
    credential `webhook-secret` (a problem when neither is there)."""
    if values is None:
        return None
    credential = Path(env.get("CREDENTIALS_DIRECTORY") or "/nonexistent", WEBHOOK_CREDENTIAL)
    if "secret_file" in values:
        secret = _read_secret(values["secret_file"], "webhook.secret_file", ctx, private=True)
    elif env.get("CREDENTIALS_DIRECTORY") and os.path.isfile(credential):
        # systemd creates credential files itself, private to the service.
        secret = _read_secret(credential, "webhook", ctx, private=False)
    else:
        ctx.problem(
            ctx.marks.get("webhook"),
            "webhook.secret_file",
            "missing; the webhook receiver needs the signing secret's file (or the"
            f" systemd credential {WEBHOOK_CREDENTIAL})",
        )
        return None
    host, port = values.get("listen", ("127.0.0.1", 8787))
    return WebhookConfig(host, port, Secret(secret) if secret else None)


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
