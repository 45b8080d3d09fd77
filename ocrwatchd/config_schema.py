"""The config file's schema: every key with its converter, its default and its doc.

`check_document` walks the node tree (`config_yaml.parse`) against the tables at the bottom
of this module and returns plain dicts of converted values; it does not stop at the first
problem, so the user sees all of them at once. Each `Field` carries the key's default (the
one place defaults live: `ocrwatchd.config` builds the dataclasses from them, and a test
checks the example config against them) and a one-line doc. Cross-field rules (engine,
API key, disjoint directories) live in `ocrwatchd.config` and `ocrwatchd.config_checks`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ocrwatchd.config_yaml import (
    MERGE_TAG,
    SECRET_KEYS,
    TEXT_TAGS,
    Context,
    Converter,
    Invalid,
    Mark,
    base_url,
    boolean,
    choice,
    describe,
    filesystem_path,
    inbox_name,
    is_null,
    join_key,
    list_of,
    listen_address,
    node_mark,
    positive_int,
    positive_number,
    prom_file,
    seconds,
    text,
    uuid,
    whole_number,
)

# Converters and helpers that other modules take from here.
__all__ = ["SECTIONS", "Context", "Field", "Invalid", "Section", "check_document", "defaults"]

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
NO_DEFAULT: Any = object()  # required, or resolved from the environment (see `shown`)


@dataclass(frozen=True)
class Field:
    """One key: its converter, its default and its doc. `required` is the message when it
    is missing; a `nullable` key may be null, which means the same as leaving it out.
    `shown` describes a default that is not a plain value (resolved from the environment
    or the machine), as the example config states it."""

    convert: Converter
    default: Any = NO_DEFAULT
    doc: str = ""
    required: str | None = None
    nullable: bool = False
    shown: str | None = None


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
        if key_node.tag == MERGE_TAG:
            ctx.problem(key_node, prefix, "YAML merge keys (<<) are not supported here")
            continue
        if not isinstance(key_node, ScalarNode) or key_node.tag not in TEXT_TAGS:
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
F = Field

INBOX = Section(
    "in an inbox (under inboxes:)",
    {
        "name": F(
            inbox_name,
            doc="unique name, used in logs, status and the ledger",
            required="missing; every inbox needs a name",
        ),
        "path": F(
            filesystem_path,
            doc="the directory to watch",
            required="missing; every inbox needs a path to watch",
        ),
        "outbox": F(
            filesystem_path,
            doc="where results go, mirroring the inbox tree",
            required="missing; every inbox needs an outbox",
        ),
        "model_id": F(uuid, None, "overrides mindee.model_id for this inbox", nullable=True),
        "recursive": F(boolean, True, "also watch subdirectories"),
        "include": F(
            list_of(text, non_empty="is empty, so no file would be processed"),
            DEFAULT_INCLUDE,
            "glob patterns to process (case-insensitive)",
        ),
        "exclude": F(list_of(text), (), "glob patterns to skip, besides the built-in junk"),
        "watch": F(
            choice("auto", "events", "poll"), "auto", "auto polls on nfs/cifs/smb/fuse/9p mounts"
        ),
        "poll_interval": F(seconds(), 5, "seconds between scans when polling"),
        "settle_seconds": F(
            seconds(zero_allowed=True), 2, "seconds a file's size and mtime must stay unchanged"
        ),
        "on_success": F(
            choice("keep", "delete", "archive"),
            "keep",
            "what to do with a source once its result is written",
        ),
        "archive_dir": F(
            filesystem_path, None, "where on_success: archive moves sources", nullable=True
        ),
        "failed_dir": F(
            filesystem_path,
            None,
            "where permanently failed sources move, with a .reason.json",
            nullable=True,
        ),
        "write_text": F(boolean, False, "also write the pages' text as OUTBOX/....txt"),
        "dedupe": F(boolean, True, "reuse the result of identical content done in this inbox"),
        "ready_marker": F(boolean, False, "take NAME only once NAME.ready exists"),
    },
    _SECRETS_ELSEWHERE,
)

MINDEE = Section(
    "under mindee:",
    {
        "api_key_file": F(
            filesystem_path,
            None,
            "file holding the API key",
            nullable=True,
            shown="$CREDENTIALS_DIRECTORY/mindee-api-key",
        ),
        "base_url": F(
            base_url,
            None,
            "API address, without /v2",
            nullable=True,
            shown="$MINDEE_V2_BASE_URL, else https://api-v2.mindee.net",
        ),
        "model_id": F(
            uuid,
            None,
            "the OCR model for inboxes that do not name their own",
            nullable=True,
            shown="none",
        ),
        "webhook_ids": F(list_of(uuid), (), "webhook endpoints Mindee pushes results to"),
        "max_in_flight": F(positive_int, 20, "jobs enqueued and not finished, all inboxes"),
        "enqueue_per_minute": F(positive_number, 200, "client-side limit on enqueues"),
        "poll_per_minute": F(positive_number, 1200, "client-side limit on polls"),
        "request_timeout": F(seconds(), 120, "seconds allowed for one HTTP request, in all"),
        "job_timeout": F(seconds(), 600, "seconds of processing before a job is given up"),
        "poll_initial_delay": F(
            seconds(zero_allowed=True), 2, "seconds from enqueue to the first poll (as the SDKs)"
        ),
        "poll_interval": F(seconds(), 1.5, "seconds between polls of one job (as the SDKs)"),
    },
    _SECRETS_ELSEWHERE,
)

LOCAL = Section(
    "under local:",
    {
        "languages": F(
            list_of(text, non_empty="is empty; name at least one, like [eng]"),
            ("eng",),
            "Tesseract languages to recognise",
        ),
        "workers": F(
            positive_int, None, "OCR processes", shown="the number of CPUs ocrwatchd may run on"
        ),
        "tessdata_dir": F(filesystem_path, None, "directory of *.traineddata files", nullable=True),
        "max_pixels_per_page": F(positive_int, 100_000_000, "pixels of one page image"),
        "max_pages": F(positive_int, 500, "pages (PDF pages, TIFF frames) of one file"),
        "max_seconds_per_file": F(seconds(), 600, "seconds one file may take in a worker"),
        # Below this a worker cannot even load Tesseract and read a small page.
        "max_worker_memory_mb": F(
            whole_number(at_least=256), 2048, "address space of each OCR process, in MB"
        ),
    },
    _SECRETS_ELSEWHERE,
)

WEBHOOK = Section(
    "under webhook:",
    {
        "listen": F(
            listen_address, ("127.0.0.1", 8787), "HOST:PORT to listen on", shown="127.0.0.1:8787"
        ),
        # Without the signing secret anyone reaching the listener could forge results:
        # config.py requires it, here or as the systemd credential webhook-secret.
        "secret_file": F(filesystem_path, doc="file holding the webhook's signing secret"),
    },
    "secrets do not live in the config; use webhook.secret_file",
)

METRICS = Section(
    "under metrics:",
    {
        "listen": F(listen_address, None, "HOST:PORT serving /metrics", nullable=True),
        "textfile": F(
            prom_file, None, "a .prom file for node_exporter's textfile collector", nullable=True
        ),
    },
    _SECRETS_ELSEWHERE,
)

TOP = Section(
    "at the top level",
    {
        "state_dir": F(
            filesystem_path,
            None,
            "holds the job ledger (ledger.db)",
            nullable=True,
            shown="$STATE_DIRECTORY",
        ),
        "engine": F(
            choice("mindee", "local"),
            None,
            "mindee or local",
            nullable=True,
            shown="mindee when an API key is found",
        ),
        "log_level": F(choice("debug", "info", "warning", "error"), "info", "log level"),
        "reconcile_interval": F(seconds(), 60, "seconds between full rescans of every inbox"),
        "forget_after": F(
            seconds(), 2_592_000, "seconds before rows of files that are gone are forgotten"
        ),
        "mindee": F(section(MINDEE), doc="the Mindee API engine", nullable=True),
        "local": F(section(LOCAL), doc="the embedded engine", nullable=True),
        "webhook": F(section(WEBHOOK), doc="the optional webhook receiver", nullable=True),
        "metrics": F(section(METRICS), doc="optional Prometheus metrics", nullable=True),
        "inboxes": F(
            inbox_list, doc="the inboxes to watch", required="no inboxes; add an inboxes: list"
        ),
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


def defaults(schema: Section) -> dict[str, Any]:
    """The keys of `schema` that have a plain default, with it."""
    return {
        name: field.default
        for name, field in schema.fields.items()
        # A default of None shown otherwise is resolved at load time (environment, CPUs).
        if field.default is not NO_DEFAULT and not (field.default is None and field.shown)
    }


def shown_default(field: Field) -> str | None:
    """A field's default as the example config states it ("Default: …"), or None for a
    required key or a section."""
    if field.shown is not None:
        return field.shown
    if field.default is NO_DEFAULT:
        return None
    return _yaml_text(field.default)


def _yaml_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_text(item) for item in value) + "]"
    if isinstance(value, str) and value.startswith("*"):
        return f'"{value}"'
    return str(value)
