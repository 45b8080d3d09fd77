"""End to end: `ocrwatchd retry` and `explain` on the real daemon, with failed_dir and with
files the daemon cannot read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    FIXTURES,
    DaemonProcess,
    cli,
    drop,
    env_for,
    inbox_settings,
    jobs,
    mindee_config,
    wait_for,
    write_config,
)

SAMPLE = (FIXTURES / "default_sample.jpg").read_bytes()
RECEIPT = (FIXTURES / "file_types" / "receipt.jpg").read_bytes()


def test_retry_brings_a_file_back_from_failed_dir_and_it_is_done(tmp_path, emulator):
    failed = tmp_path / "failed"
    settings = mindee_config(
        tmp_path, emulator.url, inbox_settings(tmp_path, failed_dir=str(failed))
    )
    config = write_config(tmp_path, settings)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    env = env_for(emulator)
    emulator.fail_next_job(status=422, detail="Temporary model problem.")
    emulator.fail_next_job(status=422, detail="Temporary model problem.")
    with DaemonProcess(config, env) as daemon:
        drop(inbox / "sub" / "again.jpg", SAMPLE)
        drop(inbox / "taken.jpg", SAMPLE + b"\0")
        wait_for(lambda: (failed / "sub" / "again.jpg.reason.json").exists(), what="failed")
        wait_for(lambda: (failed / "taken.jpg.reason.json").exists(), what="failed")
        # The path in the failed folder is accepted, and the file goes back to its inbox.
        result = cli(config, "retry", str(failed / "sub" / "again.jpg"), env=env)
        assert result.returncode == 0, result.stderr
        assert "1 file(s) queued again" in result.stdout
        wait_for(lambda: (out / "sub" / "again.jpg.json").exists(), what="the result")
        row = wait_for(
            lambda: [r for r in jobs(config, env) if r["relpath"] == "sub/again.jpg"], what="row"
        )[0]
        assert row["state"] == "done", row
        assert daemon.stop() == 0
    # A new file under the failed one's inbox name is never overwritten.
    drop(inbox / "taken.jpg", b"someone else's file")
    refused = cli(config, "retry", str(failed / "taken.jpg"), env=env)
    assert refused.returncode == 1
    assert "exists in the inbox" in refused.stderr
    assert (inbox / "sub" / "again.jpg").read_bytes() == SAMPLE  # on_success: keep
    assert not (failed / "sub" / "again.jpg").exists()
    assert not (failed / "sub" / "again.jpg.reason.json").exists()
    assert (failed / "taken.jpg").read_bytes() == SAMPLE + b"\0"
    assert (inbox / "taken.jpg").read_bytes() == b"someone else's file"
    assert emulator.uploads_per_alias()[str(inbox / "sub" / "again.jpg")] == 2


def _as_nobody() -> list[str] | None:
    """A command prefix that runs a process as `nobody`, where this machine has one."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return None
    prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    # This interpreter may live where nobody may not go (a pyenv under a private /root):
    # then nobody cannot start the daemon's helper processes (multiprocessing re-executes
    # sys.executable), and the test cannot be made here.
    helpers = "import multiprocessing as m; m.get_context('forkserver').Lock()"
    probe = subprocess.run([*prefix, sys.executable, "-c", helpers], capture_output=True)
    return prefix if probe.returncode == 0 else None


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can reach (pytest's own temporary folders are root's alone)."""
    with tempfile.TemporaryDirectory(prefix="ocrwatchd-nobody-") as name:
        os.chmod(name, 0o777)
        yield Path(name)


def test_an_unreadable_file_says_why_and_is_picked_up_once_readable(shared_dir, emulator):
    """As root, permission bits stop nothing: the daemon runs as `nobody` here."""
    prefix = _as_nobody()
    if prefix is None:
        pytest.skip("needs root, setpriv, and a Python whose helper processes nobody may start")
    settings = mindee_config(shared_dir, emulator.url)
    settings["reconcile_interval"] = 600  # it must come through intake's retry, not a rescan
    config = write_config(shared_dir, settings)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    (shared_dir / "state").mkdir()
    for folder in (inbox, out, shared_dir / "state"):
        os.chmod(folder, 0o777)
    locked = inbox / "locked.jpg"
    locked.write_bytes(RECEIPT)
    os.chmod(locked, 0o600)  # root's, unreadable for nobody
    log = shared_dir / "daemon.log"
    env = {**os.environ, "HOME": str(shared_dir), **env_for(emulator)}
    command = [*prefix, sys.executable, "-m", "ocrwatchd", "run", "-c", str(config)]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:

        def row_with_reason() -> dict | None:
            rows = [r for r in jobs(config, env) if r["relpath"] == "locked.jpg"]
            return rows[0] if rows and rows[0]["last_error"] else None

        row = wait_for(row_with_reason, timeout=30, what="the row with the reason")
        assert "Permission denied" in row["last_error"], row
        assert row["state"] == "pending"
        assert "Permission denied" in cli(config, "jobs", env=env).stdout
        explained = json.loads(cli(config, "explain", str(locked), "--json", env=env).stdout)
        assert "cannot read it: Permission denied" in explained["explanation"]
        assert "tried again every few seconds" in explained["explanation"]
        os.chmod(locked, 0o644)
        # Well within the 600 s rescan: intake's own retry finds it readable.
        wait_for(lambda: (out / "locked.jpg.json").exists(), timeout=20, what="the result")
    except AssertionError:
        print(log.read_text())
        raise
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()
