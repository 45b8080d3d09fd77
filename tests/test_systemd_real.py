"""The unit under a real systemd: a Debian container booted with systemd-nspawn, the service
installed by scripts/install-service from a wheel of this tree, started (READY), fed a
file, reloaded and stopped.

Opt-in (slow, root, needs PyPI): OCRWATCHD_SYSTEMD_TEST=1, with a root file system made by
  apt-get install systemd-container debootstrap
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3,python3-venv \\
      bookworm /var/lib/machines/ocrwatchd-test
(or another path in OCRWATCHD_SYSTEMD_ROOT). The container runs on a throw-away overlay.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FIXTURES, ROOT, wait_for

ROOTFS = Path(os.environ.get("OCRWATCHD_SYSTEMD_ROOT", "/var/lib/machines/ocrwatchd-test"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("OCRWATCHD_SYSTEMD_TEST") != "1", reason="set OCRWATCHD_SYSTEMD_TEST=1"
    ),
]
CONFIG = """\
state_dir: /var/lib/ocrwatchd
engine: local
local:
  workers: 1
inboxes:
  - name: scans
    path: /srv/scans/inbox
    outbox: /srv/scans/outbox
    settle_seconds: 0.5
"""
# A clean environment inside: the host's pip and CA settings name host paths.
CLEAN = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "PIP_CERT=/tmp/ca.crt"]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


@pytest.fixture
def container(tmp_path):
    if not ROOTFS.is_dir() or shutil.which("systemd-nspawn") is None:
        pytest.skip(f"no container root at {ROOTFS} or no systemd-nspawn (see the docstring)")
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "*cache*"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), source],
        check=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("ocrwatchd-*.whl")
    boot = ["-D", str(ROOTFS), "--boot", "--register=no", "--keep-unit", "--volatile=overlay"]
    binds = [f"--bind-ro={source}:/src", f"--bind-ro={wheel}:/tmp/{wheel.name}"]
    nspawn = subprocess.Popen(
        ["systemd-nspawn", "-q", *boot, *binds],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        leader = wait_for(lambda: children(nspawn.pid), timeout=30, what="the container")[0]

        def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["nsenter", "-t", str(leader), "-a", *CLEAN, *command],
                capture_output=True,
                text=True,
                timeout=600,
                check=check,
            )

        wait_for(
            lambda: (
                run("systemctl", "is-system-running", check=False).stdout.strip()
                in ("running", "degraded")
            ),
            timeout=60,
            what="boot",
        )
        inside = Path(f"/proc/{leader}/root")
        shutil.copy(
            os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
            inside / "tmp/ca.crt",
        )
        (inside / "etc/ocrwatchd").mkdir(parents=True, exist_ok=True)
        (inside / "etc/ocrwatchd/ocrwatchd.yaml").write_text(CONFIG)
        yield run, inside, wheel.name
    finally:
        nspawn.send_signal(signal.SIGTERM)
        nspawn.wait(timeout=60)


def show(run, *properties: str) -> dict[str, str]:
    output = run("systemctl", "show", "ocrwatchd", *(f"-p{name}" for name in properties)).stdout
    return dict(line.split("=", 1) for line in output.splitlines())


# pip installs the dependencies inside the container, and a stop may take systemd's 90 s.
@pytest.mark.timeout(600)
def test_install_start_reload_stop(container):
    run, inside, wheel = container
    run("/src/scripts/install-service", "--from", f"/tmp/{wheel}")
    # `systemctl restart` returned, so READY=1 came: Type=notify.
    state = show(run, "ActiveState", "SubState", "MainPID", "StatusText")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    assert "pending" in state["StatusText"]
    shutil.copy(FIXTURES / "file_types" / "receipt.jpg", inside / "srv/scans/inbox/receipt.jpg")
    wait_for(lambda: (inside / "srv/scans/outbox/receipt.jpg.json").exists(), timeout=60)

    run("systemctl", "reload", "ocrwatchd")
    again = show(run, "ActiveState", "MainPID")
    assert again == {"ActiveState": "active", "MainPID": state["MainPID"]}
    status = run("/opt/ocrwatchd/bin/ocrwatchd", "status").stdout
    assert f"daemon: running (pid {state['MainPID']}, engine local)" in status

    run("systemctl", "stop", "ocrwatchd")
    stopped = show(run, "ActiveState", "Result")
    assert stopped == {"ActiveState": "inactive", "Result": "success"}, run(
        "journalctl", "-u", "ocrwatchd", "--no-pager"
    ).stdout
