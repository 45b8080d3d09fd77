"""End to end: a reload that changes the engine. Jobs in flight finish on the engine that
started them (a paid Mindee job is not done again locally); new files use the new one;
`status` names the engine in use now."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import yaml

from tests.helpers import (
    FIXTURES,
    DaemonProcess,
    cli,
    drop,
    env_for,
    jobs,
    mindee_config,
    wait_for,
    write_config,
)

SAMPLE = (FIXTURES / "default_sample.jpg").read_bytes()
RECEIPT = (FIXTURES / "file_types" / "receipt.jpg").read_bytes()


def row_of(config: Path, env: dict[str, str], relpath: str) -> dict | None:
    rows = [row for row in jobs(config, env) if row["relpath"] == relpath]
    return rows[0] if rows else None


def test_mindee_jobs_in_flight_finish_on_mindee_after_a_reload_to_local(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    env = env_for(emulator)
    emulator.processing_polls = 1_000_000  # the job runs until the test lets it end
    with DaemonProcess(config, env) as daemon:
        drop(inbox / "slow.jpg", SAMPLE)
        slow = wait_for(
            lambda: (row := row_of(config, env, "slow.jpg")) and row["job_id"] and row,
            what="the Mindee job in flight",
        )
        settings["engine"] = "local"
        settings["local"] = {"workers": 1}
        config.write_text(yaml.safe_dump(settings))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "finish there" in daemon.log(), what="the reload keeping the job")
        status = json.loads(cli(config, "status", "--json", env=env).stdout)
        assert status["daemon"]["engine"] == "local"
        assert status["other_engines"] == ["1 job(s) started on the mindee engine finish there"]
        drop(inbox / "new.jpg", RECEIPT)
        wait_for(lambda: (out / "new.jpg.json").exists(), timeout=60, what="the local result")
        assert not (out / "slow.jpg.json").exists()
        emulator.job(slow["job_id"]).processing_polls = 0
        wait_for(lambda: (out / "slow.jpg.json").exists(), what="the Mindee result")
        rows = {row["relpath"]: row for row in jobs(config, env)}
        assert daemon.stop() == 0
    assert rows["slow.jpg"]["engine"] == "mindee" and rows["slow.jpg"]["state"] == "done"
    assert rows["slow.jpg"]["job_id"] == slow["job_id"]
    assert rows["new.jpg"]["engine"] == "local" and rows["new.jpg"]["state"] == "done"
    assert emulator.count("enqueue") == 1  # the paid job was neither dropped nor redone
    assert emulator.uploads_per_alias() == {str(inbox / "slow.jpg"): 1}
    document = json.loads((out / "slow.jpg.json").read_text())
    assert document["inference"]["job"]["id"] == slow["job_id"]


def test_without_a_key_the_old_jobs_wait_and_status_says_so(tmp_path, emulator):
    settings = mindee_config(tmp_path, emulator.url)
    config = write_config(tmp_path, settings)
    inbox = Path(settings["inboxes"][0]["path"])
    env = env_for(emulator)
    emulator.processing_polls = 1_000_000
    with DaemonProcess(config, env) as daemon:
        drop(inbox / "slow.jpg", SAMPLE)
        wait_for(lambda: (row := row_of(config, env, "slow.jpg")) and row["job_id"])
        assert daemon.stop() == 0
    settings["engine"] = "local"
    config.write_text(yaml.safe_dump(settings))
    no_key = {"MINDEE_V2_API_KEY": ""}
    with DaemonProcess(config, no_key) as daemon:
        wait_for(lambda: "wait: no Mindee API key" in daemon.log(), what="the warning")
        status = cli(config, "status", env=no_key).stdout
        assert "1 job(s) started on the mindee engine wait: no Mindee API key" in status
        row = row_of(config, no_key, "slow.jpg")
        assert row is not None and row["state"] == "processing" and row["engine"] == "mindee"
        assert daemon.stop() == 0
    assert emulator.count("enqueue") == 1
