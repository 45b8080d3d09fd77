"""Test helpers: waiting on predicates, writing configs, running the real daemon."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
FIXTURES = DATA / "mindee"
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def write_config(directory: Path, settings: dict[str, Any]) -> Path:
    path = directory / "ocrwatchd.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def inbox_settings(root: Path, name: str = "scans", **overrides: Any) -> dict[str, Any]:
    """An inbox under `root` with fast settling; creates the directories."""
    inbox = root / f"{name}-in"
    out = root / f"{name}-out"
    inbox.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"name": name, "path": str(inbox), "outbox": str(out), "settle_seconds": 0.2}
    settings.update(overrides)
    return settings


def mindee_config(
    root: Path, base_url: str, *inboxes: dict[str, Any], **mindee: Any
) -> dict[str, Any]:
    settings = {
        "state_dir": str(root / "state"),
        "engine": "mindee",
        "reconcile_interval": 2,
        "mindee": {
            "base_url": base_url,
            "model_id": "7c5b6d1e-2a3f-4b8c-9d0e-1f2a3b4c5d6e",
            "poll_initial_delay": 0.05,
            "poll_interval": 0.05,
            "request_timeout": 5,
            **mindee,
        },
        "inboxes": list(inboxes) or [inbox_settings(root)],
    }
    return settings


def env_for(emulator: Any, key: str | None = None) -> dict[str, str]:
    """The environment pointing the daemon at the emulator, with its key (or `key`)."""
    from tests.mindee_emulator import DEFAULT_API_KEY

    return {"MINDEE_V2_API_KEY": key or DEFAULT_API_KEY, "MINDEE_V2_BASE_URL": emulator.url}


def drop(path: Path, data: bytes) -> Path:
    """Write a file the way a careful scanner does: a temp name, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / (path.name + ".part")
    temp.write_bytes(data)
    os.replace(temp, path)
    return path


class DaemonProcess:
    """`ocrwatchd run` as a real child process, with a real sd_notify socket."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.socket_dir = tempfile.TemporaryDirectory()
        self.notify_path = os.path.join(self.socket_dir.name, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.notify_path)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> DaemonProcess:
        env = {**self.env, "NOTIFY_SOCKET": self.notify_path, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ocrwatchd", "run", "-c", str(self.config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        if wait_ready:
            wait_for(
                lambda: self._drain() or "READY=1" in self.messages or self._died(),
                timeout=30,
                what="READY=1",
            )
            assert self.process.poll() is None, self.log()
        return self

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def _drain(self) -> bool:
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError, OSError):
            return False

    def notifications(self) -> list[str]:
        self._drain()
        return self.messages

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._drain()
        self.close()
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self.close()

    def close(self) -> None:
        self.sock.close()
        self.socket_dir.cleanup()

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()


def cli(
    config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocrwatchd", *args, "-c", str(config)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def jobs(config: Path, env: dict[str, str] | None = None, *args: str) -> list[dict[str, Any]]:
    result = cli(config, "jobs", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
