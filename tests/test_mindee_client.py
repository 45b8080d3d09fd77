"""ocrwatchd's Mindee client against the emulator: the happy path and every answer mapping."""

from __future__ import annotations

import hashlib
import json
import os
from email.utils import formatdate
from pathlib import Path

import pytest

from ocrwatchd.engines.mindee import USER_AGENT, MindeeClient, parse_retry_after
from ocrwatchd.secret import Secret
from tests.fixtures_mindee_client import (
    ALIAS,
    FILENAME,
    MODEL_ID,
    SAMPLE,
    WEBHOOK_IDS,
    enqueue,
    raised,
)
from tests.mindee_emulator import MindeeEmulator

# -- the happy path -------------------------------------------------------------------------


def test_enqueue_poll_fetch(emulator: MindeeEmulator, client: MindeeClient, source: Path) -> None:
    job = enqueue(client, source)
    assert (job.status, job.alias, job.filename, job.result_url) == (
        "Processing",
        ALIAS,
        FILENAME,
        None,
    )
    assert job.polling_url == f"{emulator.url}/v2/jobs/{job.id}"

    assert client.get_job(job.id).status == "Processing"
    processed = client.get_job(job.id)
    assert processed.status == "Processed"
    assert processed.error is None
    assert processed.result_url is not None
    assert emulator.requests[-1].status == 302

    raw = client.get_result(processed.result_url)
    inference = json.loads(raw)["inference"]
    assert inference["id"] == job.id
    assert inference["file"] == {
        "name": FILENAME,
        "alias": ALIAS,
        "page_count": 1,
        "mime_type": "image/jpeg",
    }
    assert len(inference["result"]["pages"][0]["words"]) == 305

    # With "delete extracted data when fetched", there is no second chance.
    gone = raised(lambda: client.get_result(processed.result_url or ""))
    assert (gone.status, gone.retryable) == (404, False)


def test_enqueue_form_carries_every_field(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    enqueue(client, source, model_id=MODEL_ID)
    client.enqueue(
        source, model_id=MODEL_ID, alias=ALIAS, filename=FILENAME, webhook_ids=WEBHOOK_IDS
    )

    first, second = emulator.requests
    assert first.form == {"model_id": [MODEL_ID], "alias": [ALIAS], "filename": [FILENAME]}
    assert second.form["webhook_ids"] == list(WEBHOOK_IDS)
    assert second.file_name == FILENAME
    assert second.file_sha256 == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    assert second.headers["authorization"] == emulator.api_key
    assert second.headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith("ocrwatchd/") and USER_AGENT.endswith(" linux")
    assert [job.webhook_ids for job in emulator.enqueued] == [[], list(WEBHOOK_IDS)]


def test_enqueue_streams_a_large_file_with_a_content_length(
    emulator: MindeeEmulator, client: MindeeClient, tmp_path: Path
) -> None:
    big = tmp_path / "big.pdf"
    big.write_bytes(b"%PDF-1.7\n" + os.urandom(3 * 1024 * 1024))

    enqueue(client, big, filename="big.pdf")

    [upload] = emulator.requests
    assert "transfer-encoding" not in upload.headers
    assert upload.file_size == big.stat().st_size
    assert upload.file_sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert emulator.enqueued[0].mime_type == "application/pdf"


def test_processed_job_without_result_url_uses_the_location(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    job = enqueue(client, source)
    body = {"job": {"id": job.id, "status": "Processed", "result_url": None, "error": None}}
    body["job"] |= {"alias": ALIAS, "filename": FILENAME, "polling_url": job.polling_url}
    emulator.fault("job", status=302, body=body, headers={"Location": f"/v2/x/{job.id}"})

    assert client.get_job(job.id).result_url == f"{emulator.url}/v2/x/{job.id}"


def test_a_netrc_entry_does_not_replace_the_key(
    emulator: MindeeEmulator,
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password something\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with MindeeClient(emulator.url, Secret(emulator.api_key), request_timeout=5) as client:
        assert enqueue(client, source).status == "Processing"
    assert emulator.requests[-1].headers["authorization"] == emulator.api_key


# -- API error answers ----------------------------------------------------------------------


def test_wrong_key_pauses_work(emulator: MindeeEmulator, source: Path) -> None:
    with MindeeClient(emulator.url, Secret("md_wrong"), request_timeout=5) as wrong:
        error = raised(lambda: enqueue(wrong, source))
    assert (error.status, error.code, error.pauses_work, error.retryable) == (
        401,
        "401-001",
        True,
        False,
    )
    assert error.detail == "The provided API key is invalid."
    with MindeeClient(emulator.url, Secret(""), request_timeout=5) as keyless:
        assert raised(lambda: enqueue(keyless, source)).code == "401-008"


@pytest.mark.parametrize("status", [402, 403])
def test_account_problems_pause_work(
    emulator: MindeeEmulator, client: MindeeClient, source: Path, status: int
) -> None:
    emulator.fault("enqueue", status=status)
    error = raised(lambda: enqueue(client, source))
    assert (error.status, error.pauses_work, error.retryable) == (status, True, False)


def test_invalid_form_fails_permanently_with_the_api_detail(
    client: MindeeClient, source: Path
) -> None:
    error = raised(lambda: enqueue(client, source, model_id="not-a-uuid"))
    assert (error.status, error.code, error.retryable, error.pauses_work) == (
        422,
        "422-001",
        False,
        False,
    )
    assert error.detail == "One or more fields failed validation."
    assert "One or more fields failed validation." in str(error)
    assert "#/model_id: model_id must be a valid UUID format" in str(error)


@pytest.mark.parametrize(
    ("header", "expected"), [(2, 2.0), (None, None), (formatdate(usegmt=True), 0.0)]
)
def test_rate_limit_is_retryable_and_honours_retry_after(
    emulator: MindeeEmulator,
    client: MindeeClient,
    source: Path,
    header: float | str | None,
    expected: float | None,
) -> None:
    emulator.fault("enqueue", status=429, retry_after=header)
    error = raised(lambda: enqueue(client, source))
    assert (error.status, error.retryable, error.pauses_work) == (429, True, False)
    if expected is None:
        assert error.retry_after is None
    else:
        assert error.retry_after == pytest.approx(expected, abs=1.5)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(value, now=now) == expected


def test_server_error_is_retryable(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    emulator.fault("enqueue", status=500)
    error = raised(lambda: enqueue(client, source))
    assert (error.status, error.retryable, error.code) == (500, True, "500-001")


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("<html><body><h1>502 Bad Gateway</h1></body></html>", "non-JSON body: '<html>"),
        ("", "non-JSON body)"),
        ('{"status": 502, "tit', "non-JSON body"),
        ("[1, 2]", "JSON body that is not an error object"),
    ],
)
def test_error_answers_that_are_not_api_errors(
    emulator: MindeeEmulator, client: MindeeClient, source: Path, body: str, kind: str
) -> None:
    job = enqueue(client, source)
    emulator.fault("job", status=502, body=body, content_type="text/html")
    error = raised(lambda: client.get_job(job.id))
    assert (error.status, error.retryable, error.code) == (502, True, None)
    assert str(error).startswith(f"job {job.id}: HTTP 502 from the API ({kind}")


# -- answers that are no answer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"job": {"id": ', "malformed JSON"),
        ("", "malformed JSON"),
        ('"Processing"', "JSON that is not an object"),
        ({"jobs": []}, "no job object"),
        ({"job": {"id": "x", "status": "Processing"}}, "lacks alias, filename, polling_url"),
        ("SAME_JOB_WITH_STATUS_Queued", "unknown job status 'Queued'"),
        ("OTHER_JOB", "the API answered about job"),
    ],
)
def test_broken_job_bodies_are_retryable(
    emulator: MindeeEmulator, client: MindeeClient, source: Path, body: object, message: str
) -> None:
    job = enqueue(client, source)
    whole = {
        "id": job.id,
        "status": "Processing",
        "alias": ALIAS,
        "filename": FILENAME,
        "polling_url": job.polling_url,
        "result_url": None,
        "error": None,
    }
    if body == "SAME_JOB_WITH_STATUS_Queued":
        body = {"job": whole | {"status": "Queued"}}
    elif body == "OTHER_JOB":
        body = {"job": whole | {"id": MODEL_ID}}
    emulator.fault("job", status=200, body=body)
    error = raised(lambda: client.get_job(job.id))
    assert (error.status, error.retryable) == (None, True)
    assert message in str(error)


def test_broken_enqueue_answer_is_retryable(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    emulator.fault("enqueue", status=202, body="<html>OK</html>", process=True)
    error = raised(lambda: enqueue(client, source))
    assert (error.status, error.retryable) == (None, True)
    assert "malformed JSON" in str(error)


def test_result_without_inference_is_retryable(
    emulator: MindeeEmulator, client: MindeeClient
) -> None:
    emulator.fault("result", status=200, body={"inference": None})
    error = raised(lambda: client.get_result(f"{emulator.url}/v2/products/ocr/results/x"))
    assert (error.status, error.retryable) == (None, True)


def test_unexpected_redirect_is_retryable(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    emulator.fault("enqueue", status=307, headers={"Location": "/login"})
    error = raised(lambda: enqueue(client, source))
    assert (error.status, error.retryable) == (None, True)
    assert "unexpected HTTP 307" in str(error)


# -- failed jobs ----------------------------------------------------------------------------


def test_failed_job_carries_the_api_error(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    emulator.processing_polls = 0
    emulator.fail_next_job(
        status=422,
        detail="One or more fields failed validation.",
        errors=[{"pointer": "#/file", "detail": "the file is not a document"}],
    )

    job = client.get_job(enqueue(client, source).id)

    assert (job.status, job.result_url) == ("Failed", None)
    assert job.error is not None
    assert (job.error.status, job.error.code, job.error.retryable) == (422, "422-001", False)
    assert job.error.title == "Invalid fields in form"
    assert job.error.detail == "One or more fields failed validation."
    assert str(job.error) == (
        f"job {job.id} failed: Invalid fields in form [422-001]: "
        "One or more fields failed validation. (#/file: the file is not a document)"
    )


def test_jobs_fail_for_good_by_alias(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    emulator.processing_polls = 0
    emulator.fail_jobs(alias=ALIAS, status=500, detail="inference timed out")

    statuses = [client.get_job(enqueue(client, source).id) for _ in range(2)]
    other = client.get_job(enqueue(client, source, alias="other").id)

    assert [job.status for job in statuses] == ["Failed", "Failed"]
    assert all(job.error and job.error.retryable for job in statuses)
    assert other.status == "Processed"
