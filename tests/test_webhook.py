"""The webhook receiver: a real listener on 127.0.0.1, the real Mindee engine against the
emulator, a real ledger; and the real daemon receiving the emulator's signed deliveries."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrwatchd.config import MindeeConfig, WebhookConfig
from ocrwatchd.engines.base import JobRef
from ocrwatchd.engines.mindee_jobs import MindeeEngine
from ocrwatchd.ledger import Ledger
from ocrwatchd.lifecycle import Result, State
from ocrwatchd.secret import Secret
from ocrwatchd.webhook import WebhookReceiver
from tests.emulator_webhooks import WebhookSender, post, sign
from tests.helpers import (
    FIXTURES,
    DaemonProcess,
    drop,
    env_for,
    jobs,
    mindee_config,
    wait_for,
    write_config,
)
from tests.lifecycle_support import World
from tests.mindee_emulator import DEFAULT_API_KEY, MindeeEmulator

SECRET = "whsec-test-0123456789"
WEBHOOK_ID = "0b9e6f1c-2d3a-4e5f-8a7b-9c0d1e2f3a4b"
SAMPLE = (FIXTURES / "default_sample.jpg").read_bytes()
JOB = "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"


def result_body(job_id: str, *, crlf: bool = False) -> bytes:
    document = json.loads((FIXTURES / "ocr_single.json").read_text(encoding="utf-8"))
    document["inference"]["job"] = {"id": job_id}
    document["inference"]["id"] = job_id
    if crlf:  # pretty-printed with CRLF: the signature covers the body without them
        return json.dumps(document, indent=1).replace("\n", "\r\n").encode()
    return json.dumps(document).encode()


@pytest.fixture
def receiver(tmp_path: Path, emulator: MindeeEmulator) -> Iterator[tuple[WebhookReceiver, str]]:
    settings = MindeeConfig(Secret(DEFAULT_API_KEY), "env", emulator.url, None)
    engine = MindeeEngine(settings)
    ledger_path = tmp_path / "ledger.db"
    Ledger(ledger_path).close()
    hook = WebhookReceiver(WebhookConfig("127.0.0.1", 0, Secret(SECRET)), engine, ledger_path)
    hook.start()
    try:
        yield hook, f"http://127.0.0.1:{hook.port}/mindee"
    finally:
        hook.stop()
        engine.close()


def test_signed_result_is_taken_by_the_next_poll_without_asking_the_api(receiver, emulator):
    hook, url = receiver
    engine = hook.engine
    assert isinstance(engine, MindeeEngine)
    news = engine.news.subscribe()
    body = result_body(JOB, crlf=True)
    started = time.monotonic()
    status = post(url, body, {"X-Signature": sign(SECRET, body)})
    took = time.monotonic() - started
    assert status == 204
    assert took < 0.1, f"answered in {took * 1000:.0f} ms"
    assert news.wait(1), "the job was announced to be polled at once"
    assert engine.take_news() == {JOB}
    assert engine.poll(JobRef(JOB, time.time() - 1)) == Result(body)
    assert emulator.requests == [], "no request to the API for a delivered result"


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Signature": ""}, {"X-Signature": sign("another-secret", b"x")}, {"X-Signature": "é"}],
    ids=["unsigned", "empty", "forged", "not-hex"],
)
def test_missing_or_wrong_signature_is_refused_and_changes_nothing(receiver, headers, caplog):
    hook, url = receiver
    body = result_body(JOB)
    if headers.get("X-Signature") == sign("another-secret", b"x"):
        headers = {"X-Signature": sign("another-secret", body)}
    with caplog.at_level(logging.WARNING, logger="ocrwatchd.webhook"):
        assert post(url, body, headers) == 401
    assert hook.engine.deliveries.take(JOB) is None
    assert "signature" in caplog.text
    assert SECRET not in caplog.text


def test_signed_but_altered_body_is_refused(receiver):
    _, url = receiver
    body = result_body(JOB)
    signature = sign(SECRET, body)
    assert post(url, body.replace(b"CARRIER", b"CARRIES", 1), {"X-Signature": signature}) == 401
    assert post(url, body, {"X-Signature": signature.upper()}) == 204


def test_unknown_job_is_answered_and_logged(receiver, caplog):
    _, url = receiver
    body = result_body("11111111-2222-4333-8444-555555555555")
    with caplog.at_level(logging.INFO, logger="ocrwatchd.webhook"):
        assert post(url, body, {"X-Signature": sign(SECRET, body)}) == 204
        wait_for(lambda: "no file here is waiting" in caplog.text, 5, "the log line")
    assert "11111111-2222-4333-8444-555555555555" in caplog.text


def test_delivery_that_overtakes_the_enqueue_is_announced_once_the_file_follows(
    tmp_path, emulator, caplog
):
    world = World(tmp_path)
    engine = MindeeEngine(MindeeConfig(Secret(DEFAULT_API_KEY), "env", emulator.url, None))
    hook = WebhookReceiver(WebhookConfig("127.0.0.1", 0, Secret(SECRET)), engine, world.ledger.path)
    hook.start()
    try:
        news = engine.news.subscribe()
        body = result_body(JOB)
        with caplog.at_level(logging.INFO, logger="ocrwatchd.webhook"):
            assert (
                post(f"http://127.0.0.1:{hook.port}/", body, {"X-Signature": sign(SECRET, body)})
                == 204
            )
            engine.take_news()
            news.clear()
            world.row(State.PROCESSING, job_id=JOB)  # the enqueue's answer is recorded now
            assert news.wait(3), "announced again once a file follows the job"
        assert engine.take_news() == {JOB}
        assert engine.poll(JobRef(JOB, None)) == Result(body)
        assert "no file here is waiting" not in caplog.text
    finally:
        hook.stop()
        engine.close()
        world.ledger.close()


def test_signed_body_that_is_no_result_is_refused(receiver):
    _, url = receiver
    for body in (b"{}", b"not json", b'{"inference": {"job": {}}}'):
        assert post(url, body, {"X-Signature": sign(SECRET, body)}) == 400


# -- the real daemon -------------------------------------------------------------------------


def daemon_settings(tmp_path: Path, emulator: MindeeEmulator, **mindee: object) -> dict:
    secret = tmp_path / "webhook-secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    settings = mindee_config(tmp_path, emulator.url, webhook_ids=[WEBHOOK_ID], **mindee)
    settings["webhook"] = {"listen": "127.0.0.1:0", "secret_file": str(secret)}
    return settings


def listening_url(daemon: DaemonProcess) -> str:
    line = wait_for(
        lambda: next((x for x in daemon.log().splitlines() if "webhooks on http" in x), None),
        what="the receiver's address",
    )
    return line.rsplit(" ", 1)[1].rstrip("/") + "/"


def test_daemon_stores_delivered_results_and_ignores_replays(tmp_path, emulator):
    # Polls far later than the deliveries: the results must come by webhook.
    settings = daemon_settings(tmp_path, emulator, poll_initial_delay=30, poll_interval=30)
    config, env = write_config(tmp_path, settings), env_for(emulator)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    emulator.processing_seconds = 0.3
    with DaemonProcess(config, env) as daemon:
        url = listening_url(daemon)
        with WebhookSender(emulator, url, SECRET, repeat=2) as sender:
            names = [f"scan-{n}.jpg" for n in range(4)]
            for name in names:
                drop(inbox / name, SAMPLE + name.encode())
            for name in names:
                wait_for(lambda n=name: (out / f"{n}.json").exists(), 10, name)
            sender.wait_for(lambda s: len(s.deliveries) == 8)
        assert {status for _, status, _ in sender.deliveries} == {204}
        assert max(seconds for _, _, seconds in sender.deliveries) < 0.1
        written = {name: (out / f"{name}.json").stat().st_mtime_ns for name in names}
        # A replay, long after the result was stored: answered, nothing changes.
        job_id = emulator.enqueued[0].id
        body = result_body(job_id)
        assert post(url, body, {"X-Signature": sign(SECRET, body)}) == 204
        wait_for(lambda: "no file here is waiting" in daemon.log(), 5, "the replay logged")
        rows = jobs(config, env)
        assert daemon.stop() == 0
    assert [row["state"] for row in rows] == ["done"] * 4
    assert {name: (out / f"{name}.json").stat().st_mtime_ns for name in names} == written
    document = json.loads((out / "scan-0.jpg.json").read_text())
    assert document["inference"]["file"]["alias"] == str(inbox / "scan-0.jpg")
    assert [job.webhook_ids for job in emulator.enqueued] == [[WEBHOOK_ID]] * 4
    assert emulator.count("result") == 0, "no result fetched: all came by webhook"
    assert len(emulator.enqueued) == 4


def test_polling_is_the_fallback_when_no_webhook_comes(tmp_path, emulator):
    settings = daemon_settings(tmp_path, emulator, poll_initial_delay=0.2, poll_interval=0.2)
    config, env = write_config(tmp_path, settings), env_for(emulator)
    inbox, out = Path(settings["inboxes"][0]["path"]), Path(settings["inboxes"][0]["outbox"])
    with DaemonProcess(config, env) as daemon:
        drop(inbox / "a.jpg", SAMPLE)
        wait_for(lambda: (out / "a.jpg.json").exists(), 10, "the polled result")
        assert daemon.stop() == 0
    assert emulator.count("result") == 1
