"""The config file's schema, checked on the YAML node tree so every problem has a position.

`parse` turns the file's text into a node tree (`yaml.compose`, SafeLoader rules);
`check_document` walks it against the tables at the bottom of this module and returns plain
dicts of converted values. Neither stops at the first problem: both add every problem to the
`Context` and carry on, so the user sees all of them at once. Cross-field rules (engine, API
key, disjoint directories) live in `ocrwatchd.config`, which builds the dataclasses.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Mark = tuple[int, int]

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MERGE = _TAG + "merge"
# Scalars a user may write unquoted where text is expected (`name: 2024`, a date-like path).
_TEXT_TAGS = frozenset({_STR, _INT, _FLOAT, _TAG + "timestamp"})

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_INBOX_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# Key names that can only mean a secret pasted into the file.
SECRET_KEYS = frozenset({"api_key", "apikey", "api-key", "secret", "password", "token"})


class Invalid(Exception):
    """A value breaks the schema; `message=None` means its problems are recorded already."""

    def __init__(self, message: str | None) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Context:
    """What a check needs besides the node: where relative paths start, the home directory,
    and the places to record problems and value positions."""

    base_dir: Path
    home: str
    problems: list[tuple[Mark | None, str, str]] = field(default_factory=list)
    marks: dict[str, Mark] = field(default_factory=dict)
    constructor: SafeConstructor = field(default_factory=SafeConstructor)

    def problem(self, where: Node | Mark | None, key: str, message: str) -> None:
        """Record a problem at a node, a (line, column) pair or nowhere in particular."""
        mark = node_mark(where) if isinstance(where, Node) else where
        self.problems.append((mark, key, message))


def node_mark(node: Node) -> Mark:
    """Given a node, return its 1-based (line, column)."""
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def join_key(prefix: str, name: str) -> str:
    """Given a key path and a key, return the longer key path (`mindee` + `model_id`)."""
    return f"{prefix}.{name}" if prefix else name


def parse(text: str, ctx: Context) -> Node | None:
    """Given the file's text, return its node tree, or None when empty or unparsable.

    A syntax error becomes a problem at the parser's mark.
    """
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = (mark.line + 1, mark.column + 1) if mark else None
        message = error.problem or "syntax error"
        if error.context and error.context_mark:
            started = error.context_mark.line + 1
            message = f"{error.context} (from line {started}): {message}"
        if "alias" in message:
            message += ' (a value starting with * is an alias in YAML: quote it, "*.pdf")'
        tab = _tab_at(text, mark.line, mark.column) if mark else None
        if mark and tab is not None:
            # PyYAML's own words ("found character '\t' that cannot start any token") do
            # not say what to do.
            where = (mark.line + 1, tab + 1)
            message = "a tab character; YAML indentation must be spaces, not tabs"
        ctx.problem(where, "", f"invalid YAML: {message}")
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        ctx.problem((line, column), "", f"invalid character #x{error.character:04x} in YAML")
    except yaml.YAMLError as error:
        ctx.problem(None, "", f"invalid YAML: {error}")
    return None


def _tab_at(text: str, line: int, column: int) -> int | None:
    """Given the 0-based position of a YAML error, return the 0-based column of the tab
    that caused it (one at that position, or in that line's indentation), else None."""
    lines = text.splitlines()
    if line >= len(lines):
        return None
    current = lines[line]
    if column < len(current) and current[column] == "\t":
        return column
    indentation = current[: len(current) - len(current.lstrip(" \t"))]
    return indentation.index("\t") if "\t" in indentation else None


def describe(node: Node) -> str:
    """Given a node, return a short phrase for messages that never shows a secret-like value."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "null"
    if node.tag == _BOOL:
        return f"the boolean {node.value}"
    if node.tag == _STR:
        # A pasted API key (md_…) or a long token must not reach a message (Guarantee 6).
        if node.value.startswith("md_") or len(node.value) > 40:
            return "a string"
        return f"the string {node.value!r}"
    return str(node.value)


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


# Converters: given a value node, its key path and the context, return the converted value
# or raise Invalid.
Converter = Callable[[Node, str, Context], Any]


def text(node: Node, key: str, ctx: Context) -> str:
    if not isinstance(node, ScalarNode) or node.tag not in _TEXT_TAGS:
        raise Invalid(f"must be a string, got {describe(node)}")
    if not node.value:
        raise Invalid("must not be empty")
    return str(node.value)


def boolean(node: Node, key: str, ctx: Context) -> bool:
    if not isinstance(node, ScalarNode) or node.tag != _BOOL:
        raise Invalid(f"must be true or false, got {describe(node)}")
    return bool(ctx.constructor.construct_yaml_bool(node))


def _number(node: Node, ctx: Context) -> float | int | None:
    if not isinstance(node, ScalarNode) or node.tag not in (_INT, _FLOAT):
        return None
    value = (
        ctx.constructor.construct_yaml_int(node)
        if node.tag == _INT
        else ctx.constructor.construct_yaml_float(node)
    )
    return value if math.isfinite(value) else None


def seconds(*, zero_allowed: bool = False) -> Converter:
    """Return a converter for a duration: a plain number of seconds, > 0 (or >= 0)."""

    def convert(node: Node, key: str, ctx: Context) -> float | int:
        value = _number(node, ctx)
        if value is None:
            raise Invalid(f"must be a number of seconds, got {describe(node)}")
        if value < 0 or (value == 0 and not zero_allowed):
            raise Invalid(f"must be {'0 or more' if zero_allowed else 'more than 0'} seconds")
        return value

    return convert


def positive_number(node: Node, key: str, ctx: Context) -> float | int:
    value = _number(node, ctx)
    if value is None or value <= 0:
        raise Invalid(f"must be a number greater than 0, got {describe(node)}")
    return value


def positive_int(node: Node, key: str, ctx: Context) -> int:
    value = _number(node, ctx) if node.tag == _INT else None
    if value is None or value < 1:
        raise Invalid(f"must be a whole number, 1 or more, got {describe(node)}")
    return int(value)


def whole_number(*, at_least: int) -> Converter:
    """Return a converter for a whole number of `at_least` or more."""

    def convert(node: Node, key: str, ctx: Context) -> int:
        value = _number(node, ctx) if node.tag == _INT else None
        if value is None or value < at_least:
            raise Invalid(f"must be a whole number, {at_least} or more, got {describe(node)}")
        return int(value)

    return convert


def choice(*options: str) -> Converter:
    """Return a converter that accepts exactly one of `options`."""

    def convert(node: Node, key: str, ctx: Context) -> str:
        if isinstance(node, ScalarNode) and node.tag == _STR and node.value in options:
            return str(node.value)
        message = f"must be one of {', '.join(options)}, got {describe(node)}"
        if isinstance(node, ScalarNode) and node.tag == _STR:
            close = difflib.get_close_matches(node.value.lower(), options, n=1)
            if close:
                message += f"; did you mean {close[0]}?"
        raise Invalid(message)

    return convert


def uuid(node: Node, key: str, ctx: Context) -> str:
    value = text(node, key, ctx)
    if not _UUID.fullmatch(value):
        raise Invalid("must be a UUID like 00000000-0000-4000-8000-000000000000")
    return value.lower()


def filesystem_path(node: Node, key: str, ctx: Context) -> Path:
    """A path: `~` expanded, relative to the config file's directory, normalised, symlinks kept."""
    if is_null(node) and node.value == "~":
        raise Invalid('must be a path; a lone ~ is null in YAML, write "~" in quotes')
    value = text(node, key, ctx)
    if "\0" in value:
        raise Invalid("must not contain a NUL character")
    if value == "~" or value.startswith("~/"):
        value = ctx.home + value[1:]
    else:
        value = os.path.expanduser(value)
    return Path(os.path.normpath(ctx.base_dir / value))


def prom_file(node: Node, key: str, ctx: Context) -> Path:
    """A path ending in .prom: node_exporter's textfile collector reads no other files."""
    path = filesystem_path(node, key, ctx)
    if path.suffix != ".prom":
        raise Invalid("must end in .prom (node_exporter's textfile collector reads only those)")
    return path


def inbox_name(node: Node, key: str, ctx: Context) -> str:
    value = text(node, key, ctx)
    # "." and ".." pass the pattern but would be odd as a directory or ledger name.
    if not _INBOX_NAME.fullmatch(value) or value in (".", ".."):
        raise Invalid("may only hold letters, digits, '_', '.' and '-'")
    return value


def listen_address(node: Node, key: str, ctx: Context) -> tuple[str, int]:
    value = text(node, key, ctx)
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise Invalid("must be HOST:PORT, like 127.0.0.1:8787")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise Invalid("write an IPv6 address in brackets, like [::1]:8787")
    return host, int(port)


def normalise_base_url(value: str) -> str:
    """Given a base URL, return it without trailing `/` or `/v2`; raise Invalid if unusable."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("must be an http(s) URL like https://api-v2.mindee.net")
    if parts.username or parts.password:
        raise Invalid("must not contain credentials; the API key goes in api_key_file")
    if parts.query or parts.fragment:
        raise Invalid("must not have a query or fragment")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        # Plain http would send the API key and every document in clear over the network.
        raise Invalid(
            "must be https:// (http:// only for a loopback host: 127.0.0.0/8, ::1, localhost)"
        )
    # Requests are made to BASE/v2/...; accept the URL with or without that suffix.
    value = value.rstrip("/")
    return value.removesuffix("/v2").rstrip("/")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(node: Node, key: str, ctx: Context) -> str:
    return normalise_base_url(text(node, key, ctx))


def list_of(item: Converter, *, non_empty: str | None = None) -> Converter:
    """Return a converter for a list whose items all pass `item`; each bad item is a problem.

    `non_empty` is the message for an empty list, when an empty list makes no sense.
    """

    def convert(node: Node, key: str, ctx: Context) -> tuple[Any, ...]:
        if not isinstance(node, SequenceNode):
            raise Invalid(f"must be a list, got {describe(node)}")
        if not node.value and non_empty:
            raise Invalid(non_empty)
        values, failed = [], False
        for index, child in enumerate(node.value):
            try:
                values.append(item(child, f"{key}[{index}]", ctx))
            except Invalid as error:
                failed = True
                ctx.problem(child, f"{key}[{index}]", error.message or "")
        if failed:
            raise Invalid(None)
        return tuple(values)

    return convert


@dataclass(frozen=True)
class Field:
    """One key: its converter; `required` is the message when it is missing; a `nullable`
    key may be null, which means the same as leaving it out."""

    convert: Converter
    required: str | None = None
    nullable: bool = False


@dataclass(frozen=True)
class Section:
    """A mapping's keys, its name in messages, and the hint given when a secret shows up."""

    where: str
    fields: Mapping[str, Field]
    secret_hint: str


def check_mapping(node: Node, section: Section, prefix: str, ctx: Context) -> dict[str, Any]:
    """Given a mapping node, return {key: converted value} for the keys that are valid.

    Records a problem for each duplicate, unknown, secret, missing or invalid key, and the
    position of every known key's value in `ctx.marks`; the valid keys still come back so
    that later checks can run and report their problems too. Raises Invalid if the node is
    not a mapping at all.
    """
    if not isinstance(node, MappingNode):
        raise Invalid(f"must be a mapping of keys, got {describe(node)}")
    values: dict[str, Any] = {}
    seen: dict[str, Mark] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            ctx.problem(key_node, prefix, "YAML merge keys (<<) are not supported here")
            continue
        if not isinstance(key_node, ScalarNode) or key_node.tag not in _TEXT_TAGS:
            ctx.problem(key_node, prefix, f"keys must be strings, got {describe(key_node)}")
            continue
        name = str(key_node.value)
        key = join_key(prefix, name)
        if name in seen:
            ctx.problem(key_node, key, f"duplicate key; first given on line {seen[name][0]}")
            continue
        seen[name] = node_mark(key_node)
        spec = section.fields.get(name)
        if spec is None:
            message = section.secret_hint if name in SECRET_KEYS else unknown_key(name, section)
            ctx.problem(key_node, key, message)
            continue
        ctx.marks[key] = node_mark(value_node)
        if spec.nullable and is_null(value_node):
            continue
        try:
            values[name] = spec.convert(value_node, key, ctx)
        except Invalid as error:
            if error.message:
                ctx.problem(value_node, key, error.message)
    for name, spec in section.fields.items():
        if spec.required and name not in seen:
            ctx.problem(node, join_key(prefix, name), spec.required)
    return values


def unknown_key(name: str, section: Section) -> str:
    """Given an unknown key and its section, return the message with the likeliest fix."""
    homes = [s.where for s in SECTIONS if s is not section and name in s.fields]
    if homes:
        return f"unknown key here; {name} belongs {' or '.join(homes)}"
    close = difflib.get_close_matches(name, section.fields, n=1)
    if close:
        return f"unknown key; did you mean {close[0]}?"
    return f"unknown key; known keys here: {', '.join(section.fields)}"


def section(schema: Section) -> Converter:
    """Return a converter for a nested mapping of `schema`'s keys."""

    def convert(node: Node, key: str, ctx: Context) -> dict[str, Any]:
        return check_mapping(node, schema, key, ctx)

    return convert


def inbox_list(node: Node, key: str, ctx: Context) -> tuple[dict[str, Any], ...]:
    """The inboxes: a non-empty list of mappings; a bad inbox still yields its valid keys."""
    if not isinstance(node, SequenceNode):
        raise Invalid(f"must be a list of inboxes, got {describe(node)}")
    if not node.value:
        raise Invalid("no inboxes; add at least one")
    inboxes = []
    for index, child in enumerate(node.value):
        item_key = f"{key}[{index}]"
        ctx.marks[item_key] = node_mark(child)
        try:
            inboxes.append(check_mapping(child, INBOX, item_key, ctx))
        except Invalid as error:
            ctx.problem(child, item_key, error.message or "")
            inboxes.append({})
    return tuple(inboxes)


_SECRETS_ELSEWHERE = (
    "secrets do not live in the config; use mindee.api_key_file / $MINDEE_V2_API_KEY"
)

INBOX = Section(
    "in an inbox (under inboxes:)",
    {
        "name": Field(inbox_name, required="missing; every inbox needs a name"),
        "path": Field(filesystem_path, required="missing; every inbox needs a path to watch"),
        "outbox": Field(filesystem_path, required="missing; every inbox needs an outbox"),
        "model_id": Field(uuid, nullable=True),
        "recursive": Field(boolean),
        "include": Field(list_of(text, non_empty="is empty, so no file would be processed")),
        "exclude": Field(list_of(text)),
        "watch": Field(choice("auto", "events", "poll")),
        "poll_interval": Field(seconds()),
        "settle_seconds": Field(seconds(zero_allowed=True)),
        "on_success": Field(choice("keep", "delete", "archive")),
        "archive_dir": Field(filesystem_path, nullable=True),
        "failed_dir": Field(filesystem_path, nullable=True),
        "write_text": Field(boolean),
        "dedupe": Field(boolean),
        "ready_marker": Field(boolean),
    },
    _SECRETS_ELSEWHERE,
)

MINDEE = Section(
    "under mindee:",
    {
        "api_key_file": Field(filesystem_path, nullable=True),
        "base_url": Field(base_url, nullable=True),
        "model_id": Field(uuid, nullable=True),
        "webhook_ids": Field(list_of(uuid)),
        "max_in_flight": Field(positive_int),
        "enqueue_per_minute": Field(positive_number),
        "poll_per_minute": Field(positive_number),
        "request_timeout": Field(seconds()),
        "job_timeout": Field(seconds()),
        "poll_initial_delay": Field(seconds(zero_allowed=True)),
        "poll_interval": Field(seconds()),
    },
    _SECRETS_ELSEWHERE,
)

LOCAL = Section(
    "under local:",
    {
        "languages": Field(list_of(text, non_empty="is empty; name at least one, like [eng]")),
        "workers": Field(positive_int),
        "tessdata_dir": Field(filesystem_path, nullable=True),
        "max_pixels_per_page": Field(positive_int),
        "max_pages": Field(positive_int),
        "max_seconds_per_file": Field(seconds()),
        # Below this a worker cannot even load Tesseract and read a small page.
        "max_worker_memory_mb": Field(whole_number(at_least=256)),
    },
    _SECRETS_ELSEWHERE,
)

WEBHOOK = Section(
    "under webhook:",
    {
        "listen": Field(listen_address),
        # Without the signing secret anyone reaching the listener could forge results:
        # config.py requires it, here or as the systemd credential webhook-secret.
        "secret_file": Field(filesystem_path),
    },
    "secrets do not live in the config; use webhook.secret_file",
)

METRICS = Section(
    "under metrics:",
    {
        "listen": Field(listen_address, nullable=True),
        "textfile": Field(prom_file, nullable=True),
    },
    _SECRETS_ELSEWHERE,
)

TOP = Section(
    "at the top level",
    {
        "state_dir": Field(filesystem_path, nullable=True),
        "engine": Field(choice("mindee", "local"), nullable=True),
        "log_level": Field(choice("debug", "info", "warning", "error")),
        "reconcile_interval": Field(seconds()),
        "mindee": Field(section(MINDEE), nullable=True),
        "local": Field(section(LOCAL), nullable=True),
        "webhook": Field(section(WEBHOOK), nullable=True),
        "metrics": Field(section(METRICS), nullable=True),
        "inboxes": Field(inbox_list, required="no inboxes; add an inboxes: list"),
    },
    _SECRETS_ELSEWHERE,
)

SECTIONS = (TOP, MINDEE, LOCAL, WEBHOOK, METRICS, INBOX)


def check_document(root: Node | None, ctx: Context) -> dict[str, Any]:
    """Given the node tree (None for an empty file), return the top-level values.

    Sections come back as dicts and `inboxes` as a tuple of dicts, holding only the keys
    that were given and valid; every problem is in `ctx.problems`.
    """
    if root is None:
        ctx.problem(None, "", "the config is empty; it needs at least one inbox under inboxes:")
        return {}
    try:
        return check_mapping(root, TOP, "", ctx)
    except Invalid:
        ctx.problem(root, "", f"the config must be a mapping of keys, got {describe(root)}")
        return {}
