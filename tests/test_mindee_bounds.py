"""The Mindee client's bounds: a total deadline per request, capped bodies, a capped
Retry-After, and the API key sent to the base URL's origin only."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from ocrwatchd.engines.mindee import Job, MindeeClient, parse_retry_after
from ocrwatchd.secret import Secret
from tests.fixtures_mindee_client import enqueue, raised
from tests.mindee_emulator import MindeeEmulator


@pytest.fixture
def other() -> Iterator[MindeeEmulator]:
    """A second server, on another port (so another origin), that records what it gets."""
    with MindeeEmulator() as server:
        yield server


def processed(emulator: MindeeEmulator, client: MindeeClient, source: Path) -> Job:
    emulator.processing_polls = 0
    return client.get_job(enqueue(client, source).id)


# -- the total deadline ---------------------------------------------------------------------


def test_an_answer_dripping_a_byte_every_second_is_cut_at_request_timeout(
    emulator: MindeeEmulator, source: Path
) -> None:
    with MindeeClient(emulator.url, Secret(emulator.api_key), request_timeout=1.5) as client:
        job = enqueue(client, source)
        emulator.fault("job", drip=1.0)  # ~400 bytes: ~7 minutes if each byte reset a timer
        started = time.monotonic()
        error = raised(lambda: client.get_job(job.id))
        elapsed = time.monotonic() - started

        assert (error.status, error.retryable) == (None, True)
        assert "timed out" in str(error)
        assert 1.4 < elapsed < 2.5
        # The cut connection is not reused: the next call works.
        assert client.get_job(job.id).status in ("Processing", "Processed")


def test_an_upload_the_server_does_not_read_is_cut_at_request_timeout(tmp_path: Path) -> None:
    big = tmp_path / "big.pdf"
    big.write_bytes(b"%PDF-1.7\n" + bytes(48 * 1024 * 1024))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        accepted: list[socket.socket] = []
        # Accept, never read: the client's sends block once the socket buffers are full.
        acceptor = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
        acceptor.start()
        url = f"http://127.0.0.1:{port}"
        try:
            with MindeeClient(url, Secret("md_x"), request_timeout=1, connect_timeout=5) as client:
                started = time.monotonic()
                error = raised(lambda: enqueue(client, big, filename="big.pdf"))
                elapsed = time.monotonic() - started
        finally:
            acceptor.join(5)
            for connection in accepted:
                connection.close()
    assert (error.status, error.retryable) == (None, True)
    assert "timed out" in str(error)
    assert elapsed < 2.5


# -- bounded bodies -------------------------------------------------------------------------


@pytest.mark.parametrize("declare_length", [True, False])
def test_a_result_over_64_mb_fails_for_good(
    emulator: MindeeEmulator, client: MindeeClient, source: Path, declare_length: bool
) -> None:
    job = processed(emulator, client, source)
    emulator.fault("result", status=200, size=64 * 2**20 + 1, declare_length=declare_length)

    error = raised(lambda: client.get_result_for(job))

    assert (error.status, error.retryable, error.pauses_work) == (None, False, False)
    assert "result larger than 64 MB" in str(error)
    # The connection holding the rest of the body was dropped, not reused.
    assert raised(lambda: client.get_job("no-such-job")).status == 404


def test_a_result_of_just_under_64_mb_is_read(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    job = processed(emulator, client, source)
    emulator.fault("result", status=200, size=64 * 2**20, declare_length=False)
    # Read whole, then judged by its content (filler, not JSON): a retryable bad body.
    error = raised(lambda: client.get_result_for(job))
    assert (error.status, error.retryable) == (None, True)
    assert "malformed JSON" in str(error)


def test_a_job_answer_over_1_mb_is_no_answer(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    job = enqueue(client, source)
    emulator.fault("job", status=200, size=2**20 + 1, declare_length=False)
    error = raised(lambda: client.get_job(job.id))
    assert (error.status, error.retryable) == (None, True)
    assert "answer larger than 1 MB" in str(error)


def test_a_huge_error_page_keeps_its_status(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    job = enqueue(client, source)
    emulator.fault("job", status=502, size=20 * 2**20, content_type="text/html")
    error = raised(lambda: client.get_job(job.id))
    assert (error.status, error.retryable) == (502, True)
    assert client.get_job(job.id).id == job.id


# -- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header", [86400, "1e9", "inf", formatdate(time.time() + 7 * 86400, usegmt=True)]
)
def test_retry_after_is_honoured_up_to_15_minutes(
    emulator: MindeeEmulator, client: MindeeClient, source: Path, header: float | str
) -> None:
    emulator.fault("enqueue", status=429, retry_after=header)
    error = raised(lambda: enqueue(client, source))
    assert (error.status, error.retryable, error.retry_after) == (429, True, 900.0)


def test_retry_after_under_the_cap_is_kept() -> None:
    assert parse_retry_after("899.5") == 899.5
    assert parse_retry_after("901") == 900.0


# -- the key goes to the base URL's origin only ---------------------------------------------


def test_a_result_url_on_another_origin_is_fetched_from_the_base_url(
    emulator: MindeeEmulator,
    other: MindeeEmulator,
    client: MindeeClient,
    source: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    emulator.result_base = other.url
    emulator.processing_polls = 0
    job = enqueue(client, source)
    assert emulator.job(job.id) and other.url != emulator.url

    with caplog.at_level(logging.WARNING):
        done = client.get_job(job.id)
    assert done.result_url == f"{emulator.url}/v2/products/ocr/results/{job.id}"
    assert other.url.removeprefix("http://") in caplog.text  # the API did name it
    assert b'"inference"' in client.get_result(done.result_url)
    assert other.requests == []
    assert "fetched from" in caplog.text and emulator.api_key not in caplog.text


def test_a_location_on_another_origin_is_not_used(
    emulator: MindeeEmulator, other: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    job = enqueue(client, source)
    body = {"job": {"id": job.id, "status": "Processed", "result_url": None, "error": None}}
    body["job"] |= {"alias": job.alias, "filename": job.filename, "polling_url": None}
    emulator.fault("job", status=302, body=body, headers={"Location": f"{other.url}/r/{job.id}"})

    assert client.get_job(job.id).result_url == (f"{emulator.url}/v2/products/ocr/results/{job.id}")
    assert other.requests == []


def test_no_request_ever_goes_to_another_origin(
    emulator: MindeeEmulator, other: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    job = processed(emulator, client, source)
    foreign = f"{other.url}/v2/products/ocr/results/{job.id}"

    refused = raised(lambda: client.get_result(foreign))
    assert (refused.status, refused.retryable) == (None, False)
    assert "not on the API's origin" in str(refused)

    # A redirect from the API itself is not followed either.
    emulator.fault("result", status=302, headers={"Location": foreign})
    redirected = raised(lambda: client.get_result_for(job))
    assert (redirected.status, redirected.retryable) == (None, True)
    assert "unexpected HTTP 302" in str(redirected)

    # get_result_for() takes a Job from anywhere (a webhook, the ledger): same rule.
    stray = Job(job.id, "Processed", foreign, None, None, None, None)
    assert b'"inference"' in client.get_result_for(stray)
    assert other.requests == []
