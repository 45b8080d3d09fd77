"""End to end: the real `ocrwatchd run` process, real inotify on temp dirs, a real SQLite
ledger, real HTTP against the Mindee emulator."""

from __future__ import annotations

import json
import sqlite3
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
from tests.mindee_emulator import DEFAULT_API_KEY, MindeeEmulator

SAMPLE = (FIXTURES / "default_sample.jpg").read_bytes()
PDF = (FIXTURES / "file_types" / "multipage.pdf").read_bytes()


def outbox_of(config: dict) -> Path:
    return Path(config["inboxes"][0]["outbox"])


def inbox_of(config: dict) -> Path:
    return Path(config["inboxes"][0]["path"])


@pytest.fixture
def setup(tmp_path: Path, emulator: MindeeEmulator) -> tuple[dict, Path, dict[str, str]]:
    settings = mindee_config(tmp_path, emulator.url)
    return settings, write_config(tmp_path, settings), env_for(emulator)


def test_nested_folders_and_unusual_names_come_out_mirrored(setup, emulator):
    settings, config, env = setup
    inbox, out = inbox_of(settings), outbox_of(settings)
    names = ["top.jpg", "sous dossier/reçu été 1.jpg", "a/b/c/scan 2.pdf", "日本語/文書.jpg"]
    with DaemonProcess(config, env) as daemon:
        for name in names:
            drop(inbox / name, PDF if name.endswith(".pdf") else SAMPLE)
        for name in names:
            wait_for(lambda name=name: (out / (name + ".json")).exists(), what=name)
        rows = {row["relpath"]: row for row in jobs(config, env)}
        assert daemon.stop() == 0
    for name in names:
        document = json.loads((out / (name + ".json")).read_text(encoding="utf-8"))
        assert document["inference"]["file"]["alias"] == str(inbox / name)
        assert document["inference"]["file"]["name"] == Path(name).name
        assert document["inference"]["result"]["pages"][0]["words"]
        assert rows[name]["state"] == "done"
        assert rows[name]["result"] == str(out / (name + ".json"))
        assert rows[name]["path"] == str(inbox / name)
    assert emulator.uploads_per_alias() == {str(inbox / n): 1 for n in names}
    assert not list(out.rglob("*.tmp")), "no temporary files left in the outbox"


def test_files_dropped_while_stopped_are_found_and_done_files_not_uploaded_again(setup, emulator):
    settings, config, env = setup
    inbox, out = inbox_of(settings), outbox_of(settings)
    for n in range(3):
        drop(inbox / f"before-{n}.jpg", SAMPLE)
    with DaemonProcess(config, env) as daemon:
        wait_for(lambda: len(list(out.glob("*.json"))) == 3, what="three results")
        assert daemon.stop() == 0
    drop(inbox / "while-stopped.jpg", SAMPLE + b"\0")
    with DaemonProcess(config, env) as daemon:
        wait_for(lambda: (out / "while-stopped.jpg.json").exists(), what="the new file")
        # Let one reconcile scan pass: done files must stay done, not be uploaded again.
        wait_for(lambda: cli(config, "status", "--json", env=env).returncode == 0)
        assert daemon.stop() == 0
    assert sorted(emulator.uploads_per_alias().values()) == [1, 1, 1, 1]


def test_failed_job_is_listed_with_the_api_detail_and_leaves_no_json(setup, emulator):
    settings, config, env = setup
    inbox, out = inbox_of(settings), outbox_of(settings)
    emulator.fail_jobs(
        alias=str(inbox / "bad.jpg"), status=422, detail="The file is not a document."
    )
    with DaemonProcess(config, env) as daemon:
        drop(inbox / "bad.jpg", SAMPLE)
        drop(inbox / "good.jpg", SAMPLE + b"\0")
        failed = wait_for(lambda: jobs(config, env, "--state", "failed"), what="a failed row")
        wait_for(lambda: (out / "good.jpg.json").exists())
        assert daemon.stop() == 0
    assert [row["relpath"] for row in failed] == ["bad.jpg"]
    assert "The file is not a document." in failed[0]["reason"]
    assert not (out / "bad.jpg.json").exists()
    explained = json.loads(cli(config, "explain", str(inbox / "bad.jpg"), "--json", env=env).stdout)
    assert explained["state"] == "failed"
    assert "not a document" in explained["explanation"]


def test_sigterm_stops_gracefully_and_notifies_systemd(setup):
    _settings, config, env = setup
    # JOURNAL_STREAM says stderr goes to journald: lines carry <N> priority prefixes.
    # WATCHDOG_USEC asks for pings every half interval while the work threads are alive.
    extra = {"JOURNAL_STREAM": "8:12345", "WATCHDOG_USEC": "200000"}
    daemon = DaemonProcess(config, {**env, **extra}).start()
    wait_for(lambda: "WATCHDOG=1" in daemon.notifications(), what="a watchdog ping")
    assert daemon.stop() == 0
    daemon_messages = daemon.messages
    assert "READY=1" in daemon_messages
    assert "STOPPING=1" in daemon_messages
    assert any(message.startswith("STATUS=") for message in daemon_messages)
    lines = daemon.log().splitlines()
    assert lines and all(line[:3] in ("<6>", "<5>", "<4>", "<3>") for line in lines), lines


def test_wrong_key_pauses_work_without_a_retry_storm(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    env = env_for(emulator, key="md_wrong_key_SECRET_4242")
    inbox = inbox_of(settings)
    with DaemonProcess(config, env) as daemon:
        for n in range(5):
            drop(inbox / f"f{n}.jpg", SAMPLE + bytes([n]))
        wait_for(lambda: emulator.count("enqueue", status=401) >= 1, what="a 401")
        status = wait_for(
            lambda: json.loads(cli(config, "status", "--json", env=env).stdout)["inboxes"][0][
                "paused"
            ]
        )
        assert daemon.stop() == 0
        log = daemon.log()
    assert "Invalid API key" in status
    assert emulator.count("enqueue") <= 2, "paused after the first refusal"
    assert log.count("remote work is paused") == 1
    assert all(row["state"] == "pending" for row in jobs(config, env))
    assert "md_wrong_key_SECRET_4242" not in log


def test_the_api_key_never_reaches_logs_ledger_outbox_or_status(setup, emulator, tmp_path):
    settings, config, env = setup
    inbox, out = inbox_of(settings), outbox_of(settings)
    settings["log_level"] = "debug"
    write_config(tmp_path, settings)
    emulator.fault("enqueue", status=500)
    emulator.fault("job", status=502, body="<html>bad gateway</html>", content_type="text/html")
    with DaemonProcess(config, env) as daemon:
        drop(inbox / "one.jpg", SAMPLE)
        wait_for(lambda: (out / "one.jpg.json").exists(), timeout=30)
        status = cli(config, "status", "--json", env=env).stdout
        listing = cli(config, "jobs", "--json", env=env).stdout
        assert daemon.stop() == 0
        log = daemon.log()
    key = DEFAULT_API_KEY
    assert key not in log
    assert key not in status and key not in listing
    assert key.encode() not in (Path(settings["state_dir"]) / "ledger.db").read_bytes()
    for path in out.rglob("*"):
        assert key.encode() not in path.read_bytes()


def test_kill_9_while_a_job_is_processing_resumes_polling_without_uploading_again(
    tmp_path, emulator
):
    emulator.processing_polls = 10_000  # stays Processing until we say so
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    env = env_for(emulator)
    inbox, out = inbox_of(settings), outbox_of(settings)
    daemon = DaemonProcess(config, env).start()
    drop(inbox / "crash.jpg", SAMPLE)
    wait_for(lambda: emulator.count("job") >= 2, what="polling")
    daemon.kill()
    db = sqlite3.connect(Path(settings["state_dir"]) / "ledger.db")
    state, job_id = db.execute("SELECT state, job_id FROM files").fetchone()
    db.close()
    assert (state, job_id) == ("processing", emulator.enqueued[0].id)
    emulator.processing_polls = 0
    emulator.job(job_id).processing_polls = 0
    with DaemonProcess(config, env) as second:
        wait_for(lambda: (out / "crash.jpg.json").exists())
        assert second.stop() == 0
    assert emulator.uploads_per_alias() == {str(inbox / "crash.jpg"): 1}


def test_once_processes_everything_then_exits_with_the_outcome(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url, inbox_settings(tmp_path, settle_seconds=0))
    config = write_config(tmp_path, settings)
    env = env_for(emulator)
    inbox, out = inbox_of(settings), outbox_of(settings)
    drop(inbox / "a.jpg", SAMPLE)
    drop(inbox / "b.pdf", PDF)
    result = cli(config, "once", env=env)
    assert result.returncode == 0, result.stderr
    assert (out / "a.jpg.json").exists() and (out / "b.pdf.json").exists()
    (inbox / "notes.txt").write_text("plain text is not a document")
    drop(inbox / "fake.pdf", b"this is not a pdf at all")
    result = cli(config, "once", env=env)
    assert result.returncode == 1
    failed = jobs(config, env, "--state", "failed")
    assert [row["relpath"] for row in failed] == ["fake.pdf"]
    ignored = jobs(config, env, "--state", "ignored")
    assert [row["relpath"] for row in ignored] == ["notes.txt"]
    assert emulator.uploads_per_alias()[str(inbox / "a.jpg")] == 1
