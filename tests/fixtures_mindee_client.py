"""Fixtures and helpers for the tests of ocrwatchd's Mindee client (`test_mindee_*.py`)."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocrwatchd.engines.mindee import Job, MindeeClient
from ocrwatchd.errors import ApiError
from ocrwatchd.secret import Secret
from tests.mindee_emulator import DATA_DIR, MindeeEmulator

MODEL_ID = "6c3f2a1e-8d4b-4f6a-9c2e-1b7d5e9a0f3c"
WEBHOOK_IDS = ("0b9e6f1c-2d3a-4e5f-8a7b-9c0d1e2f3a4b", "1c0f7a2d-3e4b-4f6a-9b8c-0d1e2f3a4b5c")
ALIAS = "/tmp/in/sous dossier/reçu 1.jpg"
FILENAME = "reçu 1.jpg"
SAMPLE = DATA_DIR / "default_sample.jpg"


@pytest.fixture
def client(emulator: MindeeEmulator) -> Iterator[MindeeClient]:
    with MindeeClient(
        emulator.url, Secret(emulator.api_key), request_timeout=5, connect_timeout=2
    ) as mindee:
        yield mindee


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "sous dossier" / FILENAME
    path.parent.mkdir()
    shutil.copyfile(SAMPLE, path)
    return path


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Clear every *_proxy variable (either case); the test sets the ones it wants."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    return monkeypatch


def enqueue(client: MindeeClient, path: Path, **overrides: str) -> Job:
    arguments = {"model_id": MODEL_ID, "alias": ALIAS, "filename": FILENAME, **overrides}
    return client.enqueue(path, **arguments)


def raised(call: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
