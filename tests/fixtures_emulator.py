"""Pytest fixtures around the Mindee API emulator (`tests/mindee_emulator.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mindee_emulator import MindeeEmulator


@pytest.fixture
def emulator() -> Iterator[MindeeEmulator]:
    """Yield a started emulator with default settings (key `DEFAULT_API_KEY`); stop it after.

    Its settings (`processing_polls`, `delete_on_fetch`, `latency`, `api_key`) are plain
    attributes a test may change.
    """
    with MindeeEmulator() as emu:
        yield emu
