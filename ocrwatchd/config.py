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
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocrwatchd.config_checks import (
    CREDENTIAL_NAME,
    check_disjoint,
    check_environment,
    check_inboxes,
    check_mindee_engine,
    check_secret_places,
)
from ocrwatchd.config_schema import (
    INBOX,
    LOCAL,
    MINDEE,
    TOP,
    WEBHOOK,
    check_document,
    defaults,
)
from ocrwatchd.config_yaml import Context, Invalid, format_problem, normalise_base_url, parse

__all__ = ["CREDENTIAL_NAME", "Config", "check_environment", "format_problem", "load_config"]
from ocrwatchd.errors import ConfigError
from ocrwatchd.secret import Secret

DEFAULT_BASE_URL = "https://api-v2.mindee.net"
WEBHOOK_CREDENTIAL = "webhook-secret"
# A key with whitespace or control characters inside would break (or inject into) headers.
_NOT_A_KEY = re.compile(r"[\s\x00-\x1f\x7f]")


# The defaults come from the schema (`config_schema`), the one place they are written.
_MINDEE, _LOCAL, _INBOX, _TOP = (defaults(part) for part in (MINDEE, LOCAL, INBOX, TOP))


@dataclass(frozen=True)
class MindeeConfig:
    api_key: Secret | None
    api_key_source: str | None  # where the key came from: "api_key_file", "credentials", "env"
    base_url: str
    model_id: str | None
    webhook_ids: tuple[str, ...] = _MINDEE["webhook_ids"]
    max_in_flight: int = _MINDEE["max_in_flight"]
    enqueue_per_minute: float = _MINDEE["enqueue_per_minute"]
    poll_per_minute: float = _MINDEE["poll_per_minute"]
    request_timeout: float = _MINDEE["request_timeout"]
    job_timeout: float = _MINDEE["job_timeout"]
    poll_initial_delay: float = _MINDEE["poll_initial_delay"]
    poll_interval: float = _MINDEE["poll_interval"]


@dataclass(frozen=True)
class LocalConfig:
    languages: tuple[str, ...] = _LOCAL["languages"]
    workers: int = 2  # resolved: the CPUs this process may run on
    tessdata_dir: Path | None = _LOCAL["tessdata_dir"]
    max_pixels_per_page: int = _LOCAL["max_pixels_per_page"]
    max_pages: int = _LOCAL["max_pages"]
    max_seconds_per_file: float = _LOCAL["max_seconds_per_file"]
    max_worker_memory_mb: int = _LOCAL["max_worker_memory_mb"]


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
    model_id: str | None = _INBOX["model_id"]
    recursive: bool = _INBOX["recursive"]
    include: tuple[str, ...] = _INBOX["include"]
    exclude: tuple[str, ...] = _INBOX["exclude"]
    watch: str = _INBOX["watch"]
    poll_interval: float = _INBOX["poll_interval"]
    settle_seconds: float = _INBOX["settle_seconds"]
    on_success: str = _INBOX["on_success"]
    archive_dir: Path | None = _INBOX["archive_dir"]
    failed_dir: Path | None = _INBOX["failed_dir"]
    write_text: bool = _INBOX["write_text"]
    dedupe: bool = _INBOX["dedupe"]
    ready_marker: bool = _INBOX["ready_marker"]


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
    reconcile_interval: float = _TOP["reconcile_interval"]
    forget_after: float = _TOP["forget_after"]
    metrics: MetricsConfig = MetricsConfig()
    # key path ("inboxes[0].path") -> (line, column), 1-based, for messages about values
    marks: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    def model_id_for(self, inbox: InboxConfig) -> str | None:
        return inbox.model_id or self.mindee.model_id


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
        check_mindee_engine(mindee, inboxes, key_source, automatic, ctx)
    check_inboxes(inboxes, ctx)
    check_disjoint(state_dir, state_label, inboxes, ctx)
    check_secret_places(values, inboxes, ctx)
    webhook = _webhook(values.get("webhook"), env, ctx)
    if ctx.problems:
        return None
    options = {k: v for k, v in mindee.items() if k not in ("api_key_file", "base_url")}
    return Config(
        source=source,
        state_dir=state_dir,
        engine=engine,
        engine_chosen_automatically=automatic,
        log_level=values.get("log_level", _TOP["log_level"]),
        mindee=MindeeConfig(api_key, key_source, base_url, **{"model_id": None, **options}),
        local=LocalConfig(**{"workers": cpu_count(), **values.get("local", {})}),
        webhook=webhook,
        inboxes=tuple(InboxConfig(**inbox) for inbox in inboxes),
        reconcile_interval=values.get("reconcile_interval", _TOP["reconcile_interval"]),
        forget_after=values.get("forget_after", _TOP["forget_after"]),
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
    host, port = values.get("listen", defaults(WEBHOOK)["listen"])
    return WebhookConfig(host, port, Secret(secret) if secret else None)
