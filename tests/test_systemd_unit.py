"""The systemd unit: `ocrwatchd unit` renders it from the config, systemd's own tools accept
it, and its hardening scores an exposure of at most 2.0."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ocrwatchd import unit
from ocrwatchd.config import load_config
from tests.helpers import FIXTURES, ROOT, cli, inbox_settings, write_config

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)
SHIPPED = ROOT / "systemd" / "ocrwatchd.service"
INSTALLED_CONFIG = Path("/etc/ocrwatchd/ocrwatchd.yaml")
INSTALLED_PROGRAM = Path("/opt/ocrwatchd/bin/ocrwatchd")


def shipped_text() -> str:
    """The unit for the example config as installed by the README's steps."""
    config = load_config(ROOT / "config" / "ocrwatchd.example.yaml", env={})
    return unit.render(dataclasses.replace(config, source=INSTALLED_CONFIG), INSTALLED_PROGRAM)


def folders_config(tmp_path: Path) -> Path:
    # Spaces and % in folder names must survive systemd's quoting and specifiers.
    root = tmp_path / "shared drive 100%"
    scans = inbox_settings(
        root,
        "scans",
        on_success="archive",
        archive_dir=str(root / "archive"),
        failed_dir=str(root / "failed"),
    )
    return write_config(
        tmp_path,
        {"state_dir": str(tmp_path / "state"), "engine": "local", "inboxes": [scans]},
    )


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def test_the_shipped_unit_is_the_rendered_example():
    assert SHIPPED.read_text(encoding="utf-8") == shipped_text(), (
        "systemd/ocrwatchd.service is out of date; write tests.test_systemd_unit.shipped_text()"
        " to it"
    )


def test_unit_command_names_every_folder_and_this_program(tmp_path):
    config = folders_config(tmp_path)
    result = cli(config, "unit")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    root = tmp_path / "shared drive 100%%"
    [read_write] = re.findall(r"^ReadWritePaths=(.*)$", text, re.MULTILINE)
    expected = [f'-"{root}/{name}"' for name in ("scans-in", "scans-out", "archive", "failed")]
    # The state directory outside /var/lib/ocrwatchd must be writable too.
    assert read_write == " ".join([*expected, f"-{tmp_path}/state"])
    program = Path(sys.executable).parent / "ocrwatchd"
    assert f"ExecStart={program} run -c {config}\n" in text
    # engine: local needs no key, and LoadCredential= would fail the start without its file.
    assert "LoadCredential=" not in text.replace("No LoadCredential=", "")

    folders = cli(config, "unit", "--folders")
    names = ("scans-in", "scans-out", "archive", "failed")
    assert folders.stdout.splitlines() == [
        *(str(tmp_path / "shared drive 100%" / name) for name in names),
        str(tmp_path / "state"),
    ]
    missing = cli(config, "unit", "--exec", str(tmp_path / "no-such-program"))
    assert missing.returncode == 64
    assert "no-such-program does not exist" in missing.stderr


@needs_analyze
def test_systemd_analyze_verify_reports_nothing(tmp_path):
    config = folders_config(tmp_path)
    path = tmp_path / "ocrwatchd.service"
    path.write_text(unit.render_file(config, unit.default_executable()), encoding="utf-8")
    result = analyze("verify", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""


@needs_analyze
def test_security_exposure_is_at_most_2(tmp_path):
    path = tmp_path / "ocrwatchd.service"
    path.write_text(
        unit.render_file(folders_config(tmp_path), unit.default_executable()), encoding="utf-8"
    )
    result = analyze("security", "--offline=true", str(path), cwd=tmp_path)
    match = re.search(r"Overall exposure level for ocrwatchd\.service: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= 2.0, result.stdout


def test_the_local_engine_works_without_writable_executable_memory(tmp_path):
    """MemoryDenyWriteExecute=yes is in the unit: the embedded engine (tesserocr, pdfium,
    ctypes) must work under it. The kernel's PR_SET_MDWE (Linux 6.3+) enforces the same rule
    on a plain process, so this runs without systemd."""
    config = folders_config(tmp_path)
    probe = (
        "import ctypes, runpy, sys\n"
        "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:\n"
        "    sys.exit(99)\n"
        "sys.argv = ['ocrwatchd'] + sys.argv[1:]\n"
        "runpy.run_module('ocrwatchd', run_name='__main__')\n"
    )
    receipt = FIXTURES / "file_types" / "receipt.png"
    result = subprocess.run(
        [sys.executable, "-c", probe, "ocr", str(receipt), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    if result.returncode == 99:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr
    assert '"inference"' in result.stdout
