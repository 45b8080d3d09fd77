"""End to end with the embedded engine: no API key, no network, the real daemon process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers import FIXTURES, DaemonProcess, cli, inbox_settings, jobs, wait_for, write_config

NO_KEY = {"MINDEE_V2_API_KEY": ""}  # an empty key is no key


def local_config(tmp_path: Path, **inbox: object) -> tuple[Path, Path, Path]:
    settings = {
        "state_dir": str(tmp_path / "state"),
        "local": {"workers": 1},
        "inboxes": [inbox_settings(tmp_path, **inbox)],
    }
    config = write_config(tmp_path, settings)
    return config, tmp_path / "scans-in", tmp_path / "scans-out"


def test_without_a_key_the_local_engine_is_chosen_and_writes_mindee_json(tmp_path):
    config, inbox, out = local_config(tmp_path)
    env = NO_KEY
    with DaemonProcess(config, env) as daemon:
        shutil.copy(FIXTURES / "file_types" / "receipt.jpg", inbox / "receipt.jpg")
        shutil.copy(FIXTURES / "file_types" / "XfaForm_15p_encrypted.pdf", inbox / "locked.pdf")
        shutil.copy(FIXTURES / "file_types" / "receipt.txt", inbox / "receipt.pdf")
        wait_for(lambda: (out / "receipt.jpg.json").exists(), timeout=60)
        failed = wait_for(
            lambda: (
                len(jobs(config, env, "--state", "failed")) == 2
                and jobs(config, env, "--state", "failed")
            ),
            timeout=30,
        )
        assert daemon.stop() == 0
        log = daemon.log()
    assert "using the embedded local OCR engine" in log
    document = json.loads((out / "receipt.jpg.json").read_text())
    inference = document["inference"]
    assert inference["model"]["id"] == "local-tesseract-eng"
    assert inference["file"]["alias"] == str(inbox / "receipt.jpg")
    assert inference["file"]["mime_type"] == "image/jpeg"
    words = " ".join(w["content"] for w in inference["result"]["pages"][0]["words"]).lower()
    assert "total" in words
    reasons = {row["relpath"]: row["reason"] for row in failed}
    assert "encrypt" in reasons["locked.pdf"].lower() or "password" in reasons["locked.pdf"].lower()
    assert reasons["receipt.pdf"]
    assert not (out / "locked.pdf.json").exists()


def test_ocr_command_prints_the_json_for_one_file(tmp_path):
    config, _inbox, _out = local_config(tmp_path)
    result = cli(
        config, "ocr", str(FIXTURES / "file_types" / "receipt.png"), env=NO_KEY, timeout=120
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["inference"]["file"]["name"] == "receipt.png"
    assert document["inference"]["result"]["pages"][0]["content"]


def test_a_missing_language_stops_the_daemon_with_the_package_to_install(tmp_path):
    settings = {
        "state_dir": str(tmp_path / "state"),
        "engine": "local",
        "local": {"languages": ["eng", "fra"]},
        "inboxes": [inbox_settings(tmp_path)],
    }
    config = write_config(tmp_path, settings)
    for command in ("run", "once", "check-config"):
        result = cli(config, command, env=NO_KEY)
        assert result.returncode == 78, (command, result.stderr)
        assert "local.languages" in result.stderr and "tessdata.fast-fra" in result.stderr
