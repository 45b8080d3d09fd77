"""The command line's contract: exit codes and messages for usage and config trouble."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, cli, write_config


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocrwatchd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_usage_errors_exit_64():
    assert run().returncode == 64
    assert run("frobnicate").returncode == 64
    assert run("jobs", "--state", "sideways").returncode == 64


def test_version_and_help_exit_0():
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("ocrwatchd ")
    assert run("status", "--help").returncode == 0


def test_a_missing_config_is_a_config_error_naming_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    for command in ("run", "once", "status", "jobs", "check-config"):
        result = cli(missing, command)
        assert result.returncode == 78, (command, result.stderr)
        assert str(missing) in result.stderr


def test_status_and_jobs_work_before_the_daemon_ever_ran(tmp_path):
    (tmp_path / "in").mkdir()
    config = write_config(
        tmp_path,
        {
            "state_dir": str(tmp_path / "state"),
            "engine": "local",
            "inboxes": [
                {"name": "a", "path": str(tmp_path / "in"), "outbox": str(tmp_path / "out")}
            ],
        },
    )
    status = cli(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert '"totals"' in status.stdout
    jobs = cli(config, "jobs", "--json")
    assert jobs.returncode == 0 and jobs.stdout.strip() == "[]"
    explain = cli(config, "explain", str(tmp_path / "elsewhere.pdf"))
    assert explain.returncode == 0 and "not inside any inbox" in explain.stdout


def test_once_on_a_terminal_draws_a_progress_bar(tmp_path):
    import os
    import pty
    import shutil

    from tests.helpers import FIXTURES

    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    shutil.copy(FIXTURES / "file_types" / "receipt.png", tmp_path / "in" / "r.png")
    config = write_config(
        tmp_path,
        {
            "state_dir": str(tmp_path / "state"),
            "engine": "local",
            "local": {"workers": 1},
            "inboxes": [
                {
                    "name": "a",
                    "path": str(tmp_path / "in"),
                    "outbox": str(tmp_path / "out"),
                    "settle_seconds": 0,
                }
            ],
        },
    )
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "ocrwatchd", "once", "-c", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        cwd=ROOT,
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    assert "[" + "#" * 30 + "] 1/1 finished, 0 failed" in text
    assert "INFO" not in text  # the bar replaces the per-file lines
