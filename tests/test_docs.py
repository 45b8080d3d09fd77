"""The documentation keeps up with the code: every command is in the README, every config
key is in the example config (sqlite-utils' habit: a test fails when something is
undocumented)."""

from __future__ import annotations

import argparse
import re

import pytest

from ocrwatchd import cli
from ocrwatchd.config_schema import INBOX, LOCAL, METRICS, MINDEE, TOP, WEBHOOK
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLE = (ROOT / "config" / "ocrwatchd.example.yaml").read_text(encoding="utf-8")


def commands() -> list[str]:
    parser = cli._parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(subparsers.choices)


@pytest.mark.parametrize("command", commands())
def test_every_command_is_in_the_readme(command):
    assert f"`ocrwatchd {command}" in README


@pytest.mark.parametrize(
    "section,key",
    [
        (section.where, key)
        for section in (TOP, MINDEE, LOCAL, WEBHOOK, METRICS, INBOX)
        for key in section.fields
    ],
)
def test_every_config_key_is_in_the_example_config(section, key):
    # Commented-out keys count: they document a default.
    assert re.search(rf"^\s*#?\s*-?\s*{re.escape(key)}:", EXAMPLE, re.MULTILINE), (section, key)
