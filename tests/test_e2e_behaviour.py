"""End to end, the rest of the contract: API faults, changed files, dedupe, on_success,
failed_dir, retry, explain, reload and check-config, against the real daemon process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import yaml

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


def test_api_faults_are_retried_until_the_result_is_written(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    emulator.fault("enqueue", status=500)
    emulator.fault("enqueue", status=429, retry_after=1)
    emulator.fault("enqueue", drop=True)
    emulator.fault("job", status=502, body="<html>502 Bad Gateway</html>", content_type="text/html")
    emulator.fault("job", status=200, body='{"job": {')
    emulator.fault("result", status=503)
    with DaemonProcess(config, env_for(emulator)) as daemon:
        drop(inbox / "flaky.jpg", SAMPLE)
        wait_for(lambda: (out / "flaky.jpg.json").exists(), timeout=60)
        assert daemon.stop() == 0
    document = json.loads((out / "flaky.jpg.json").read_text())
    assert document["inference"]["file"]["alias"] == str(inbox / "flaky.jpg")
    assert emulator.count("enqueue", status=202) == 1
    [row] = jobs(config, env_for(emulator))
    # The 500 and the dropped answer count; the 429 holds submissions but is no attempt.
    assert row["state"] == "done" and row["attempts"] == 3


def test_a_result_deleted_before_it_was_stored_is_uploaded_again(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    # The fetch happens (and deletes the result) but the answer is lost.
    emulator.fault("result", drop=True, process=True)
    with DaemonProcess(config, env_for(emulator)) as daemon:
        drop(inbox / "lost.jpg", SAMPLE)
        wait_for(lambda: (out / "lost.jpg.json").exists(), timeout=60)
        assert daemon.stop() == 0
    assert emulator.uploads_per_alias()[str(inbox / "lost.jpg")] == 2


def test_a_file_changed_after_upload_is_processed_again(tmp_path, emulator):
    emulator.processing_polls = 10_000
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    env = env_for(emulator)
    with DaemonProcess(config, env) as daemon:
        drop(inbox / "edit.jpg", SAMPLE)
        wait_for(lambda: emulator.count("job") >= 1, what="the first job polled")
        emulator.processing_polls = 0
        drop(inbox / "edit.jpg", RECEIPT)
        wait_for(lambda: (out / "edit.jpg.json").exists(), timeout=30)
        [row] = jobs(config, env)
        assert daemon.stop() == 0
    uploads = [r for r in emulator.requests if r.route == "enqueue" and r.status == 202]
    assert len(uploads) == 2
    assert row["state"] == "done" and row["job_id"] == emulator.enqueued[1].id
    assert row["size"] == len(RECEIPT)


def test_dedupe_archive_delete_and_failed_dir(tmp_path, emulator):
    archive, failed = tmp_path / "archive", tmp_path / "failed"
    settings = mindee_config(
        tmp_path,
        emulator.url,
        inbox_settings(tmp_path, "keep"),
        inbox_settings(
            tmp_path,
            "arch",
            on_success="archive",
            archive_dir=str(archive),
            failed_dir=str(failed),
            write_text=True,
        ),
        inbox_settings(tmp_path, "del", on_success="delete"),
    )
    config = write_config(tmp_path, settings)
    env = env_for(emulator)
    keep_in, keep_out = tmp_path / "keep-in", tmp_path / "keep-out"
    bad = tmp_path / "arch-in" / "sub" / "bad.jpg"
    emulator.fail_jobs(alias=str(bad), detail="Unreadable page.")
    with DaemonProcess(config, env) as daemon:
        drop(keep_in / "first.jpg", SAMPLE)
        wait_for(lambda: (keep_out / "first.jpg.json").exists())
        drop(keep_in / "copy of first.jpg", SAMPLE)
        drop(tmp_path / "arch-in" / "sub" / "doc.jpg", RECEIPT)
        drop(tmp_path / "arch-in" / "sub" / "bad.jpg", RECEIPT + b"\0")
        drop(tmp_path / "del-in" / "gone.jpg", SAMPLE + b"\0")
        wait_for(lambda: (keep_out / "copy of first.jpg.json").exists())
        wait_for(lambda: (archive / "sub" / "doc.jpg").exists())
        wait_for(lambda: (failed / "sub" / "bad.jpg.reason.json").exists())
        wait_for(lambda: not (tmp_path / "del-in" / "gone.jpg").exists())
        assert daemon.stop() == 0
    copy = json.loads((keep_out / "copy of first.jpg.json").read_text())
    assert copy["inference"]["file"]["alias"] == str(keep_in / "copy of first.jpg")
    assert emulator.uploads_per_alias().get(str(keep_in / "copy of first.jpg")) is None
    explained = json.loads(
        cli(config, "explain", str(keep_in / "copy of first.jpg"), "--json", env=env).stdout
    )
    assert "duplicate of first.jpg" in explained["explanation"]
    assert (tmp_path / "arch-out" / "sub" / "doc.jpg.json").exists()
    text = (tmp_path / "arch-out" / "sub" / "doc.jpg.txt").read_text()
    assert text and "\f" not in text  # one page, no form feed
    assert not (tmp_path / "arch-in" / "sub" / "doc.jpg").exists()
    assert (failed / "sub" / "bad.jpg").read_bytes() == RECEIPT + b"\0"
    reason = json.loads((failed / "sub" / "bad.jpg.reason.json").read_text())
    assert "Unreadable page." in reason["reason"]
    assert not (tmp_path / "arch-out" / "sub" / "bad.jpg.json").exists()
    assert (tmp_path / "del-out" / "gone.jpg.json").exists()


def test_retry_queues_a_failed_file_again(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    env = env_for(emulator)
    emulator.fail_next_job(status=422, detail="Temporary model problem.")
    with DaemonProcess(config, env) as daemon:
        drop(inbox / "again.jpg", SAMPLE)
        wait_for(lambda: jobs(config, env, "--state", "failed"))
        result = cli(config, "retry", str(inbox / "again.jpg"), env=env)
        assert result.returncode == 0 and "1 file(s)" in result.stdout
        wait_for(lambda: (out / "again.jpg.json").exists())
        assert daemon.stop() == 0
    assert cli(config, "retry", str(inbox / "nope.jpg"), env=env).returncode == 1


def test_sighup_reloads_the_config_and_watches_a_new_inbox(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    env = env_for(emulator)
    with DaemonProcess(config, env) as daemon:
        settings["inboxes"].append(inbox_settings(tmp_path, "second"))
        config.write_text(yaml.safe_dump(settings))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in daemon.log(), what="the reload")
        drop(tmp_path / "second-in" / "late.jpg", SAMPLE)
        wait_for(lambda: (tmp_path / "second-out" / "late.jpg.json").exists())
        # A broken config is refused; the daemon goes on with the one it has.
        config.write_text("inboxes: [\n")
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reload failed" in daemon.log(), what="the refusal")
        drop(tmp_path / "second-in" / "later.jpg", RECEIPT)
        wait_for(lambda: (tmp_path / "second-out" / "later.jpg.json").exists())
        assert daemon.stop() == 0
    # Under systemd, STOPPING=1 would start a stop: a reload says RELOADING=1 (with the
    # time, as sd_notify(3) asks) and READY=1 once done; STOPPING=1 comes only at the end.
    lifecycle = [m for m in daemon.messages if not m.startswith(("STATUS=", "WATCHDOG="))]
    kinds = [message.split("\n")[0] for message in lifecycle]
    assert kinds == ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    assert all("\nMONOTONIC_USEC=" in m for m in lifecycle if m.startswith("RELOADING=1"))


def test_check_config_reports_every_problem_with_its_position(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "engine: local\n"
        "inboxes:\n"
        "  - name: a\n"
        f"    path: {tmp_path}/in\n"
        f"    outbox: {tmp_path}/in/out\n"
        "    settle_second: 2\n"
    )
    result = cli(config, "check-config")
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert any(
        line.startswith(f"{config}:6:5: inboxes[0].settle_second: unknown key")
        and "did you mean settle_seconds" in line
        for line in lines
    )
    assert any("inboxes[0].outbox" in line for line in lines)
    good = tmp_path / "good.yaml"
    (tmp_path / "in2").mkdir()
    (tmp_path / "out2").mkdir()
    good.write_text(
        f"state_dir: {tmp_path}/state\nengine: local\ninboxes:\n"
        f"  - name: a\n    path: {tmp_path}/in2\n    outbox: {tmp_path}/out2\n"
    )
    result = cli(good, "check-config")
    assert result.returncode == 0, result.stderr


def test_the_official_sdk_parses_the_outbox_files(tmp_path, emulator):
    from mindee import LocalResponse
    from mindee.v2.product.ocr.ocr_response import OCRResponse

    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    with DaemonProcess(config, env_for(emulator)) as daemon:
        drop(inbox / "sdk.jpg", SAMPLE)
        wait_for(lambda: (out / "sdk.jpg.json").exists())
        assert daemon.stop() == 0
    response = LocalResponse(str(out / "sdk.jpg.json")).deserialize_response(OCRResponse)
    assert response.inference.file.alias == str(inbox / "sdk.jpg")
    assert response.inference.result.pages[0].words[0].content
    assert os.path.getsize(out / "sdk.jpg.json") > 1000


def test_ocr_command_with_the_mindee_engine_prints_the_api_result(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    sample = tmp_path / "one off.jpg"
    sample.write_bytes(SAMPLE)
    emulator.fault("job", status=503)
    result = cli(config, "ocr", str(sample), env=env_for(emulator))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["inference"]["file"]["alias"] == str(sample)
    assert emulator.uploads_per_alias() == {str(sample): 1}
    assert not (Path(settings["state_dir"]) / "ledger.db").exists()
    emulator.fail_next_job(status=422, detail="Not a document.")
    refused = cli(config, "ocr", str(sample), env=env_for(emulator))
    assert refused.returncode == 1 and "Not a document." in refused.stderr


def test_an_unwritable_outbox_keeps_the_result_and_writes_it_once_fixed(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    blocker = out / "sub"
    blocker.write_text("a file where the outbox needs a folder")
    env = env_for(emulator)
    with DaemonProcess(config, env) as daemon:
        drop(inbox / "sub" / "kept.jpg", SAMPLE)
        row = wait_for(lambda: [r for r in jobs(config, env) if r["last_error"]], timeout=30)[0]
        assert "cannot write outbox" in row["last_error"]
        assert row["state"] == "processing"  # fetched: the result is safe in the ledger
        blocker.unlink()
        wait_for(lambda: (out / "sub" / "kept.jpg.json").exists(), timeout=30)
        assert daemon.stop() == 0
    assert emulator.uploads_per_alias() == {str(inbox / "sub" / "kept.jpg"): 1}
    assert emulator.count("result") == 1


def test_temporary_files_left_by_a_crash_are_removed_at_start(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    out = Path(settings["inboxes"][0]["outbox"])
    stale = out / "deep" / ".ocrwatchd-scan.pdf.json.k2j3h4.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"inference": {"trunc')
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    someone_elses = out / ".editor-swap.tmp"
    someone_elses.write_text("not ours")
    with DaemonProcess(config, env_for(emulator)) as daemon:
        wait_for(lambda: not stale.exists(), what="the stale temporary file removed")
        assert daemon.stop() == 0
    assert someone_elses.exists()


def test_once_with_an_inbox_gone_exits_69_and_names_it(tmp_path, emulator):
    settings = mindee_config(
        tmp_path, emulator.url, inbox_settings(tmp_path, "here"), inbox_settings(tmp_path, "gone")
    )
    config = write_config(tmp_path, settings)
    drop(tmp_path / "here-in" / "a.jpg", SAMPLE)
    (tmp_path / "gone-in").rmdir()
    result = cli(config, "once", env=env_for(emulator))
    assert result.returncode == 69, result.stderr
    assert "gone" in result.stderr
    assert (tmp_path / "here-out" / "a.jpg.json").exists()


def test_an_inbox_folder_deleted_and_recreated_is_watched_again(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url)
    settings["reconcile_interval"] = 600  # only a new watch can see the file in time
    config = write_config(tmp_path, settings)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    with DaemonProcess(config, env_for(emulator)) as daemon:
        inbox.rmdir()
        inbox.mkdir()
        wait_for(lambda: daemon.log().count("watching") >= 2, timeout=20, what="a new watch")
        drop(inbox / "after.jpg", SAMPLE)
        wait_for(lambda: (out / "after.jpg.json").exists(), timeout=20)
        assert daemon.stop() == 0
