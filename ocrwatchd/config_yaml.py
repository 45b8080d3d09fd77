"""The config file's YAML, as a node tree that keeps every value's line and column, and
the converters that check one value each (`text`, `seconds`, `uuid`, ...).

`parse` turns the file's text into a node tree (`yaml.compose`, SafeLoader rules); a
converter, given a value node, its key path and the `Context`, returns the converted value
or raises `Invalid`. Problems are recorded in the Context, never raised one by one.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable
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
MERGE_TAG = _TAG + "merge"
# Scalars a user may write unquoted where text is expected (`name: 2024`, a date-like path).
TEXT_TAGS = frozenset({_STR, _INT, _FLOAT, _TAG + "timestamp"})

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
    if not isinstance(node, ScalarNode) or node.tag not in TEXT_TAGS:
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


def format_problem(source: Path, mark: tuple[int, int] | None, key: str, message: str) -> str:
    """Given the config file, a 1-based (line, column) or None, a key path (may be empty)
    and a message, return `FILE:LINE:COL: key: message` (parts that are missing left out)."""
    where = f"{source}:{mark[0]}:{mark[1]}" if mark else str(source)
    return ": ".join(part for part in (where, key, message) if part)
