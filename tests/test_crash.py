"""kill -9 at arbitrary instants: nothing is lost, and only an upload in flight at the
instant of a crash is repeated."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tests.helpers import (
    FIXTURES,
    DaemonProcess,
    drop,
    env_for,
    inbox_settings,
    jobs,
    mindee_config,
    wait_for,
    write_config,
)

SAMPLE = (FIXTURES / "default_sample.jpg").read_bytes()


def test_repeated_kill_9_loses_nothing_and_repeats_at_most_one_upload_per_crash(tmp_path, emulator):
    emulator.processing_polls = 2
    emulator.latency = 0.01
    settings = mindee_config(
        tmp_path, emulator.url, inbox_settings(tmp_path, settle_seconds=0.05), max_in_flight=8
    )
    config = write_config(tmp_path, settings)
    env = env_for(emulator)
    inbox, out = tmp_path / "scans-in", tmp_path / "scans-out"
    names = [f"sub{n % 3}/doc {n}.jpg" for n in range(40)]
    rng = random.Random(20261129)
    crashes = 0
    for round_number in range(6):
        for name in names[round_number * 6 : round_number * 6 + 6]:
            drop(inbox / name, SAMPLE + name.encode())
        daemon = DaemonProcess(config, env).start()
        time.sleep(rng.uniform(0.05, 0.6))  # the crash lands wherever it lands
        daemon.kill()
        crashes += 1
    for name in names[36:]:
        drop(inbox / name, SAMPLE + name.encode())
    with DaemonProcess(config, env) as daemon:
        wait_for(lambda: all((out / (n + ".json")).exists() for n in names), timeout=60)
        rows = jobs(config, env)
        assert daemon.stop() == 0
    assert {row["relpath"] for row in rows} == set(names)
    assert all(row["state"] == "done" for row in rows)
    uploads = emulator.uploads_per_alias()
    assert set(uploads) == {str(inbox / n) for n in names}
    # Each crash can repeat at most the uploads in flight at that instant
    extra = sum(count - 1 for count in uploads.values())
    # (4 uploader threads; 2 pollers whose fetched result may be lost with the process.)
    assert extra <= crashes * 6, uploads
    for name in names:
        document = json.loads((out / (name + ".json")).read_text())
        assert document["inference"]["file"]["alias"] == str(inbox / name)
    assert not list(Path(out).rglob(".ocrwatchd-*"))
