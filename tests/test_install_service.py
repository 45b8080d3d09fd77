"""scripts/install-service --dry-run: the steps a real install would take, and no change."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, inbox_settings, write_config

SCRIPT = ROOT / "scripts" / "install-service"


def dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )


def exists(lookup, name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path):
    scans = inbox_settings(tmp_path, on_success="archive", archive_dir=str(tmp_path / "archive"))
    config = write_config(
        tmp_path, {"state_dir": str(tmp_path / "state"), "engine": "local", "inboxes": [scans]}
    )
    venv = tmp_path / "venv"
    result = dry_run("--config", str(config), "--prefix", str(venv))
    assert result.returncode == 0, result.stderr
    steps = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    expected = []
    if not exists(grp.getgrnam, "ocrwatchd"):
        expected.append("groupadd --system ocrwatchd")
    if not exists(pwd.getpwnam, "ocrwatchd"):
        expected.append(
            "useradd --system --gid ocrwatchd --home-dir /var/lib/ocrwatchd --no-create-home"
            " --shell /usr/sbin/nologin ocrwatchd"
        )
    key = Path("/etc/ocrwatchd/mindee-api-key")
    if key.is_file():
        expected += [f"chown root:ocrwatchd {key}", f"chmod 0640 {key}"]
    expected += [
        f"python3 -m venv {venv}",
        f"{venv}/bin/pip install --quiet --disable-pip-version-check --upgrade {ROOT}",
        # The inbox and outbox exist (left alone); the archive and state folders do not.
        f"install -d -m 2770 -o ocrwatchd -g ocrwatchd {tmp_path / 'archive'}",
        f"install -d -m 2770 -o ocrwatchd -g ocrwatchd {tmp_path / 'state'}",
        f"{venv}/bin/ocrwatchd unit -c {config} --exec {venv}/bin/ocrwatchd"
        " > /etc/systemd/system/ocrwatchd.service",
        "systemctl daemon-reload",
        "systemctl enable ocrwatchd.service",
        "systemctl restart ocrwatchd.service",
    ]
    assert steps == expected
    assert not venv.exists()
    assert not (tmp_path / "archive").exists()
    assert not (tmp_path / "state").exists()


def test_without_a_config_the_example_is_installed_first(tmp_path):
    config = tmp_path / "etc" / "ocrwatchd.yaml"
    result = dry_run("--config", str(config), "--prefix", str(tmp_path / "venv"), "--no-start")
    assert result.returncode == 0, result.stderr
    assert (
        f"+ install -m 0640 -o root -g ocrwatchd {ROOT}/config/ocrwatchd.example.yaml {config}"
        in result.stdout
    )
    assert f"edit {config} (inboxes, engine), then run this script again" in result.stdout
    assert "systemctl restart" not in result.stdout
    assert not config.parent.exists()


def test_unknown_options_are_refused():
    result = dry_run("--frobnicate")
    assert result.returncode == 64
    assert "unknown option --frobnicate" in result.stderr
