"""End to end, the real daemon against the Mindee emulator, on the edges of a file's life:
a writer that pauses, a file replaced during OCR, a share that goes away, long names, and
a second file of the same name archived."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

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


def start(tmp_path: Path, emulator, **inbox: object) -> tuple[Path, Path, Path, dict[str, str]]:
    settings = mindee_config(tmp_path, emulator.url, inbox_settings(tmp_path, **inbox))
    config = write_config(tmp_path, settings)
    first = settings["inboxes"][0]
    return config, Path(first["path"]), Path(first["outbox"]), env_for(emulator)


def row_of(config: Path, env: dict[str, str], relpath: str) -> dict | None:
    rows = [row for row in jobs(config, env) if row["relpath"] == relpath]
    return rows[0] if rows else None


def test_poll_mode_waits_for_a_paused_writer_before_upload_and_delete(tmp_path, emulator):
    config, inbox, out, env = start(
        tmp_path, emulator, watch="poll", poll_interval=0.2, on_success="delete"
    )
    with DaemonProcess(config, env) as daemon:
        path = inbox / "scan.jpg"
        with open(path, "wb") as writer:
            writer.write(SAMPLE[: len(SAMPLE) // 2])
            writer.flush()
            # The daemon looks at it after settle_seconds, sees the writer and waits.
            held = wait_for(
                lambda: (
                    (row := row_of(config, env, "scan.jpg"))
                    and "open for writing" in (row["last_error"] or "")
                    and row
                ),
                what="the daemon seeing the writer",
            )
            assert held["state"] == "pending"
            assert emulator.count("enqueue") == 0 and path.exists()
            writer.write(SAMPLE[len(SAMPLE) // 2 :])
        wait_for(lambda: (out / "scan.jpg.json").exists(), what="the result")
        wait_for(lambda: not path.exists(), what="the source deleted")
        assert daemon.stop() == 0
    uploads = [r for r in emulator.requests if r.route == "enqueue"]
    assert len(uploads) == 1
    assert uploads[0].file_sha256 == hashlib.sha256(SAMPLE).hexdigest()  # the whole file


def test_a_file_replaced_during_ocr_keeps_its_new_version_and_is_processed_again(
    tmp_path, emulator
):
    config, inbox, out, env = start(tmp_path, emulator, on_success="delete")
    emulator.processing_polls = 1_000_000
    with DaemonProcess(config, env) as daemon:
        drop(inbox / "scan.jpg", SAMPLE)
        first = wait_for(
            lambda: (row := row_of(config, env, "scan.jpg")) and row["job_id"] and row,
            what="the first job in flight",
        )
        emulator.processing_polls = 1
        drop(inbox / "scan.jpg", RECEIPT)  # a new version while the first is OCR'd
        wait_for(lambda: emulator.count("enqueue") == 2, what="the new version submitted")
        emulator.job(first["job_id"]).processing_polls = 0
        wait_for(lambda: (out / "scan.jpg.json").exists(), what="the result")
        wait_for(lambda: not (inbox / "scan.jpg").exists(), what="the new version deleted")
        row = row_of(config, env, "scan.jpg")
        assert daemon.stop() == 0
    second = emulator.enqueued[1]
    document = json.loads((out / "scan.jpg.json").read_text())
    assert document["inference"]["job"]["id"] == second.id != first["job_id"]
    uploads = [r.file_sha256 for r in emulator.requests if r.route == "enqueue"]
    assert uploads == [hashlib.sha256(d).hexdigest() for d in (SAMPLE, RECEIPT)]
    assert row is not None and row["state"] == "done" and row["job_id"] == second.id


def test_a_file_settling_when_the_share_goes_away_is_done_after_the_remount(
    tmp_path, emulator, fuse_share
):
    out = tmp_path / "share-out"
    out.mkdir()
    settings = mindee_config(
        tmp_path,
        emulator.url,
        {
            "name": "share",
            "path": str(fuse_share.mount_point),
            "outbox": str(out),
            "watch": "auto",
            "settle_seconds": 2,
        },
    )
    config = write_config(tmp_path, settings)
    env = env_for(emulator)
    with DaemonProcess(config, env) as daemon:
        (fuse_share.mount_point / "scan.jpg").write_bytes(SAMPLE)
        wait_for(lambda: row_of(config, env, "scan.jpg"), what="the file seen")
        fuse_share.unmount()
        unmounted_at = time.monotonic()

        def unavailable() -> bool:
            status = json.loads(cli(config, "status", "--json", env=env).stdout)
            return not status["inboxes"][0]["available"]

        wait_for(unavailable, what="the share reported unavailable")
        # The daemon must have had its chance to get it wrong: settle_seconds (2 s) and a
        # rescan (reconcile_interval 2 s) of the empty mount point have passed.
        wait_for(lambda: time.monotonic() > unmounted_at + 4.5, timeout=10, what="a rescan")
        row = row_of(config, env, "scan.jpg")
        assert row is not None and row["state"] != "ignored", row
        assert emulator.count("enqueue") == 0
        fuse_share.mount()
        wait_for(lambda: (out / "scan.jpg.json").exists(), timeout=30, what="the result")
        row = row_of(config, env, "scan.jpg")
        assert daemon.stop() == 0
    assert row is not None and row["state"] == "done"
    assert "removed before it was processed" not in daemon.log()
    assert emulator.uploads_per_alias() == {str(fuse_share.mount_point / "scan.jpg"): 1}


def test_a_230_byte_name_is_done_and_a_252_byte_one_fails_naming_name_max(tmp_path, emulator):
    config, inbox, out, env = start(tmp_path, emulator)
    fits, too_long = "a" * 226 + ".jpg", "b" * 248 + ".jpg"
    assert (len(fits.encode()), len(too_long.encode())) == (230, 252)
    with DaemonProcess(config, env) as daemon:
        drop(inbox / fits, SAMPLE)
        (inbox / too_long).write_bytes(RECEIPT)
        wait_for(lambda: (out / (fits + ".json")).exists(), what="the long name's result")
        failed = wait_for(lambda: jobs(config, env, "--state", "failed"), what="the failure")
        assert daemon.stop() == 0
    assert [row["relpath"] for row in failed] == [too_long]
    assert "NAME_MAX" in failed[0]["reason"] and "rename it" in failed[0]["reason"]
    assert emulator.uploads_per_alias() == {str(inbox / fits): 1}
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


def test_a_second_invoice_archived_does_not_replace_the_first(tmp_path, emulator):
    archive = tmp_path / "archive"
    config, inbox, out, env = start(
        tmp_path, emulator, on_success="archive", archive_dir=str(archive)
    )
    with DaemonProcess(config, env) as daemon:
        drop(inbox / "invoice.jpg", SAMPLE)
        wait_for(lambda: (archive / "invoice.jpg").exists(), what="the first archived")
        drop(inbox / "invoice.jpg", RECEIPT)
        wait_for(lambda: (archive / "invoice (2).jpg").exists(), what="the second archived")
        assert daemon.stop() == 0
    assert (out / "invoice.jpg.json").exists()
    assert (archive / "invoice.jpg").read_bytes() == SAMPLE
    assert (archive / "invoice (2).jpg").read_bytes() == RECEIPT
    assert not (inbox / "invoice.jpg").exists()
