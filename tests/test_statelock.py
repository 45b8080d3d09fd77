"""One daemon per state directory: real processes, a real flock, the real status command."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from ocrwatchd import statelock
from ocrwatchd.errors import ExitCode
from tests.helpers import FIXTURES, DaemonProcess, cli, inbox_settings, jobs, wait_for, write_config

NO_KEY = {"MINDEE_V2_API_KEY": "", "CREDENTIALS_DIRECTORY": ""}
RECEIPT = FIXTURES / "file_types" / "receipt.jpg"


def local_config(tmp_path: Path, **top: object) -> Path:
    settings = {
        "state_dir": str(tmp_path / "state"),
        "engine": "local",
        "local": {"workers": 1},
        "inboxes": [inbox_settings(tmp_path)],
        **top,
    }
    return write_config(tmp_path, {k: v for k, v in settings.items() if v is not None})


def status(config: Path, env: dict[str, str] | None = None) -> dict:
    result = cli(config, "status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_second_run_exits_75_naming_the_first_and_files_are_done_once(tmp_path):
    config = local_config(tmp_path)
    inbox, out = tmp_path / "scans-in", tmp_path / "scans-out"
    with DaemonProcess(config, NO_KEY) as first:
        assert first.process is not None
        shutil.copy(RECEIPT, inbox / "receipt.jpg")
        started = time.monotonic()
        second = cli(config, "run", env=NO_KEY, timeout=30)
        elapsed = time.monotonic() - started
        assert second.returncode == ExitCode.TEMPFAIL, second.stderr
        assert f"process {first.process.pid}" in second.stderr
        assert elapsed < 10
        wait_for(lambda: (out / "receipt.jpg.json").exists(), timeout=60, what="the result")
        assert first.stop() == 0
    [row] = jobs(config, NO_KEY)
    assert (row["state"], row["attempts"]) == ("done", 1)


def test_once_beside_a_holder_changes_nothing(tmp_path):
    config = local_config(tmp_path)
    inbox, out = tmp_path / "scans-in", tmp_path / "scans-out"
    shutil.copy(RECEIPT, inbox / "receipt.jpg")
    with statelock.acquire(tmp_path / "state", engine="mindee"):
        held = cli(config, "once", env=NO_KEY, timeout=30)
        assert held.returncode == ExitCode.TEMPFAIL, held.stderr
        assert f"process {os.getpid()}" in held.stderr
        # Nothing was opened, recovered or written: no ledger, no result.
        assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["daemon.lock"]
        assert list(out.iterdir()) == []
    # Released: the same command now does the work.
    done = cli(config, "once", env=NO_KEY, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "receipt.jpg.json").exists()


def test_status_shows_what_the_running_daemon_recorded(tmp_path):
    # No engine in the config: the daemon, without a key, chooses local; `status` run with a
    # key in its environment would resolve mindee itself, yet reports the daemon's choice.
    config = local_config(
        tmp_path,
        engine=None,
        mindee={
            "base_url": "http://127.0.0.1:9",
            "model_id": "7c5b6d1e-2a3f-4b8c-9d0e-1f2a3b4c5d6e",
        },
    )
    with_key = {"MINDEE_V2_API_KEY": "md_caller_key"}
    before = time.time()
    with DaemonProcess(config, NO_KEY) as daemon:
        assert daemon.process is not None
        pid = daemon.process.pid
        report = status(config, with_key)
        assert report["engine"] == "mindee"
        assert report["daemon"]["running"] is True
        assert report["daemon"]["pid"] == pid
        assert report["daemon"]["engine"] == "local"
        assert before - 1 <= report["daemon"]["started_at"] <= time.time()
        text = cli(config, "status", env=with_key).stdout
        assert f"daemon: running (pid {pid}, engine local)" in text
        assert daemon.stop() == 0
    stopped = {"running": False, "pid": None, "engine": None, "started_at": None}
    assert status(config, with_key)["daemon"] == stopped
    assert "daemon: not running" in cli(config, "status", env=with_key).stdout


def test_a_killed_daemon_leaves_no_lock_behind(tmp_path):
    config = local_config(tmp_path)
    daemon = DaemonProcess(config, NO_KEY).start()
    assert status(config)["daemon"]["running"] is True
    daemon.kill()
    assert status(config)["daemon"]["running"] is False
    with DaemonProcess(config, NO_KEY) as again:
        assert again.process is not None
        assert status(config)["daemon"]["pid"] == again.process.pid
        assert again.stop() == 0


def test_acquire_in_process(tmp_path):
    state = tmp_path / "state"
    assert statelock.read_daemon(state)["running"] is False
    with statelock.acquire(state, engine="local") as lock:
        assert lock.record["pid"] == os.getpid()
        assert statelock.read_daemon(state) == {"running": True, **lock.record}
        with pytest.raises(statelock.DaemonRunning) as raised:
            statelock.acquire(state, engine="local", wait=0.1)
        assert raised.value.pid == os.getpid()
        assert raised.value.exit_code == ExitCode.TEMPFAIL
    assert statelock.read_daemon(state)["running"] is False
    # A planted symlink is not followed.
    other = tmp_path / "elsewhere"
    other.write_text("keep")
    (state / "daemon.lock").unlink()
    (state / "daemon.lock").symlink_to(other)
    with pytest.raises(statelock.StateError):
        statelock.acquire(state, engine="local")
    assert other.read_text() == "keep"
