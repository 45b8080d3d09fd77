"""ocrwatchd's Mindee client against the emulator: the happy path and every failure mapping."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import traceback
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
import pytest

from ocrwatchd.engines import transport
from ocrwatchd.engines.mindee import USER_AGENT, Job, MindeeClient, parse_retry_after
from ocrwatchd.errors import ApiError
from ocrwatchd.secret import Secret
from tests.mindee_emulator import DATA_DIR, MindeeEmulator

MODEL_ID = "6c3f2a1e-8d4b-4f6a-9c2e-1b7d5e9a0f3c"
WEBHOOK_IDS = ("0b9e6f1c-2d3a-4e5f-8a7b-9c0d1e2f3a4b", "1c0f7a2d-3e4b-4f6a-9b8c-0d1e2f3a4b5c")
ALIAS = "/tmp/in/sous dossier/reçu 1.jpg"
FILENAME = "reçu 1.jpg"
SAMPLE = DATA_DIR / "default_sample.jpg"


@pytest.fixture
def client(emulator: MindeeEmulator) -> Iterator[MindeeClient]:
    with MindeeClient(
        emulator.url, Secret(emulator.api_key), request_timeout=5, connect_timeout=2
    ) as mindee:
        yield mindee


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "sous dossier" / FILENAME
    path.parent.mkdir()
    shutil.copyfile(SAMPLE, path)
    return path


def enqueue(client: MindeeClient, path: Path, **overrides: str) -> Job:
    arguments = {"model_id": MODEL_ID, "alias": ALIAS, "filename": FILENAME, **overrides}
    return client.enqueue(path, **arguments)


def raised(call: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def connections_to(client: MindeeClient, url: str) -> int:
    """How many connections the client's pool for `url` has opened so far."""
    assert client._pool is not None
    return int(client._pool.connection_from_url(url).num_connections)


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Clear every *_proxy variable (either case); the test sets the ones it wants."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    return monkeypatch


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


def test_dropped_connection_is_retryable_and_the_session_recovers(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    emulator.fault("enqueue", drop=True)
    emulator.fault("enqueue", drop=True, process=True)

    for _ in range(2):
        error = raised(lambda: enqueue(client, source))
        assert (error.status, error.retryable) == (None, True)
    # The second upload reached the server: its answer alone was lost.
    assert len(emulator.enqueued) == 1
    assert enqueue(client, source).status == "Processing"
    assert emulator.uploads_per_alias()[ALIAS] == 2


def test_one_connection_is_kept_alive_and_replaced_after_a_drop(
    emulator: MindeeEmulator, client: MindeeClient, source: Path
) -> None:
    emulator.processing_polls = 0
    job = client.get_job(enqueue(client, source).id)
    client.get_result(job.result_url or "")
    assert connections_to(client, emulator.url) == 1

    emulator.fault("job", drop=True)
    assert raised(lambda: client.get_job(job.id)).status is None
    client.get_job(job.id)
    client.get_job(job.id)
    assert connections_to(client, emulator.url) == 2
    assert [r.status for r in emulator.requests] == [202, 302, 200, None, 302, 302]


def test_close_closes_the_connection_even_while_an_answer_is_kept(
    emulator: MindeeEmulator,
) -> None:
    client = MindeeClient(emulator.url, Secret(emulator.api_key), request_timeout=5)
    # The error's traceback holds the answer, which holds the connection pool.
    gone = raised(lambda: client.get_result(f"{emulator.url}/v2/products/ocr/results/x"))
    assert gone.status == 404
    assert client._pool is not None
    [connection] = client._pool.connection_from_url(emulator.url).pool.queue
    sock = connection.sock
    assert sock is not None and sock.fileno() != -1

    client.close()

    assert sock.fileno() == -1
    assert raised(lambda: client.get_job("some-job")).status == 404  # it reconnects
    client.close()


def test_enqueue_sends_the_file_in_blocks_as_it_reads_it(
    emulator: MindeeEmulator, client: MindeeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.pdf"
    big.write_bytes(b"%PDF-1.7\n" + os.urandom(3 * 1024 * 1024))
    asked: list[int] = []
    read = transport.MultipartBody.read

    def spy(body: transport.MultipartBody, size: int = -1) -> bytes:
        asked.append(size)
        return read(body, size)

    monkeypatch.setattr(transport.MultipartBody, "read", spy)

    enqueue(client, big, filename="big.pdf")

    assert len(asked) > 40 and 0 < max(asked) <= 64 * 1024
    assert emulator.requests[0].file_size == big.stat().st_size


def test_a_file_that_shrinks_during_the_upload_is_retryable(
    emulator: MindeeEmulator, client: MindeeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.pdf"
    big.write_bytes(b"%PDF-1.7\n" + os.urandom(1024 * 1024))
    read = transport.MultipartBody.read

    def shrink_then_read(body: transport.MultipartBody, size: int = -1) -> bytes:
        os.truncate(big, 1000)
        return read(body, size)

    monkeypatch.setattr(transport.MultipartBody, "read", shrink_then_read)
    error = raised(lambda: enqueue(client, big, filename="big.pdf"))
    assert (error.status, error.retryable) == (None, True)
    assert "the file shrank while it was being uploaded" in str(error)
    assert emulator.enqueued == []

    monkeypatch.undo()
    assert enqueue(client, big, filename="big.pdf").status == "Processing"
    assert emulator.enqueued[0].file_size == 1000


def test_connection_refused_is_retryable() -> None:
    with MindeeClient(closed_port_url(), Secret("md_x"), request_timeout=2) as nowhere:
        error = raised(lambda: nowhere.get_job("some-job"))
    assert (error.status, error.retryable) == (None, True)
    # urllib3's NewConnectionError is a ConnectTimeoutError: it must not read "timed out".
    assert str(error).startswith("job some-job: request failed, no answer from the API")
    assert "Connection refused" in str(error)


def test_a_result_url_that_is_not_http_is_retryable(client: MindeeClient) -> None:
    error = raised(lambda: client.get_result("/v2/products/ocr/results/x"))
    assert (error.status, error.retryable) == (None, True)
    assert "not an http(s) URL" in str(error)


def test_slow_answer_times_out_and_the_result_is_then_gone(
    emulator: MindeeEmulator, source: Path
) -> None:
    emulator.processing_polls = 0
    with MindeeClient(emulator.url, Secret(emulator.api_key), request_timeout=0.3) as impatient:
        result_url = impatient.get_job(enqueue(impatient, source).id).result_url or ""
        emulator.fault("result", delay=3)

        slow = raised(lambda: impatient.get_result(result_url))
        assert (slow.status, slow.retryable) == (None, True)
        assert "timed out" in str(slow)

        # The server answered (late) and deleted the result meanwhile.
        gone = raised(lambda: impatient.get_result(result_url))
        assert (gone.status, gone.retryable) == (404, False)


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


# -- the API key stays secret ---------------------------------------------------------------


CANARY = "md_CANARY_k3y_that_must_never_show_9f8e7d"


def test_api_key_never_leaks(
    emulator: MindeeEmulator, source: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.api_key = CANARY
    emulator.processing_polls = 0
    echo = {"status": 401, "title": f"bad {CANARY}", "detail": f"key {CANARY}", "code": CANARY}
    errors: list[ApiError] = []
    jobs: list[Job] = []

    def collect(call: Callable[[], object]) -> None:
        errors.append(raised(call))

    with (
        MindeeClient(emulator.url, Secret(CANARY), request_timeout=0.3) as client,
        MindeeClient(closed_port_url(), Secret(CANARY), request_timeout=1) as nowhere,
    ):
        jobs.append(enqueue(client, source))
        job_id = jobs[0].id
        for status, body in [
            (401, echo),
            (402, None),
            (403, None),
            (429, None),
            (500, None),
            (502, f"<html>echo Authorization: {CANARY}</html>"),
            (200, f'{{"job": "{CANARY}'),
        ]:
            emulator.fault("job", status=status, body=body, retry_after=1)
            collect(lambda: client.get_job(job_id))
        emulator.fault("enqueue", status=200, body={"job": {"id": CANARY}})
        collect(lambda: enqueue(client, source))
        collect(lambda: enqueue(client, source, model_id="not-a-uuid"))
        emulator.fault("job", drop=True)
        collect(lambda: client.get_job(job_id))
        emulator.fault("job", delay=2)
        collect(lambda: client.get_job(job_id))
        collect(lambda: nowhere.get_job(job_id))
        emulator.fail_next_job(detail=f"rejected {CANARY}", errors=[{"detail": CANARY}])
        jobs.append(client.get_job(enqueue(client, source).id))
        assert jobs[-1].error is not None
        errors.append(jobs[-1].error)
        with MindeeClient(emulator.url, Secret("md_other"), request_timeout=1) as other:
            collect(lambda: other.get_job(job_id))  # a 401: wrong key
        texts = [repr(client), repr(nowhere), *map(repr, jobs), caplog.text]
        texts += [record.getMessage() for record in caplog.records]

    for error in errors:
        texts += [str(error), repr(error), *map(str, error.args)]
        texts += [str(getattr(error, name)) for name in ("code", "title", "detail")]
        texts.append("".join(traceback.format_exception(error)))
    assert len(errors) == 14
    assert all(CANARY not in text for text in texts), [t for t in texts if CANARY in t][:3]
    assert "***" in str(errors[0])


# -- proxies and TLS from the environment ---------------------------------------------------


def test_requests_go_through_the_proxy_the_environment_names(
    emulator: MindeeEmulator, source: Path, proxy_env: pytest.MonkeyPatch
) -> None:
    # The emulator plays the proxy: it serves the absolute-URI requests a proxy receives.
    host = emulator.url.removeprefix("http://")
    proxy_env.setenv("HTTP_PROXY", f"http://us%40er:p%3Ass@{host}")
    proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1,mindee.net")
    with MindeeClient(
        "http://api.mindee.invalid", Secret(emulator.api_key), request_timeout=5
    ) as client:
        job = enqueue(client, source)
        assert client.get_job(job.id).status == "Processing"

    expected = "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    for request in emulator.requests:
        assert request.headers["host"] == "api.mindee.invalid"
        assert request.headers["proxy-authorization"] == expected
        assert request.headers["authorization"] == emulator.api_key


@pytest.mark.parametrize(
    "no_proxy",
    ["127.0.0.1", "localhost, 127.0.0.0/8", "*", "127.0.0.1:PORT", "[::1],.local,127.0.0.1"],
)
def test_no_proxy_excludes_the_api_host(
    emulator: MindeeEmulator, source: Path, proxy_env: pytest.MonkeyPatch, no_proxy: str
) -> None:
    port = emulator.url.rpartition(":")[2]
    proxy_env.setenv("all_proxy", closed_port_url())
    proxy_env.setenv("no_proxy", no_proxy.replace("PORT", port))
    with MindeeClient(emulator.url, Secret(emulator.api_key), request_timeout=5) as client:
        assert enqueue(client, source).status == "Processing"


@pytest.mark.parametrize("no_proxy", [None, "", "127.0.0.2", "10.0.0.0/8", "127.0.0.1:1", "0.0.1"])
def test_a_proxy_that_applies_is_used(
    emulator: MindeeEmulator, source: Path, proxy_env: pytest.MonkeyPatch, no_proxy: str | None
) -> None:
    proxy_env.setenv("http_proxy", closed_port_url().removeprefix("http://"))  # no scheme
    if no_proxy is not None:
        proxy_env.setenv("no_proxy", no_proxy)
    with MindeeClient(emulator.url, Secret(emulator.api_key), request_timeout=5) as client:
        error = raised(lambda: enqueue(client, source))
    assert (error.status, error.retryable) == (None, True)
    assert "ProxyError" in str(error)
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ("socks5://user:s3cret@127.0.0.1:1080", "needs PySocks, which is not installed"),
        ("ftp://user:s3cret@127.0.0.1:21", "cannot be used (ProxySchemeUnknown)"),
    ],
)
def test_an_unusable_proxy_fails_each_request_not_the_client(
    emulator: MindeeEmulator,
    source: Path,
    proxy_env: pytest.MonkeyPatch,
    proxy: str,
    message: str,
) -> None:
    proxy_env.setenv("ALL_PROXY", proxy)
    with MindeeClient(emulator.url, Secret(emulator.api_key), request_timeout=5) as client:
        error = raised(lambda: enqueue(client, source))
    assert (error.status, error.retryable) == (None, True)
    assert message in str(error)
    assert "s3cret" not in str(error)
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"REQUESTS_CA_BUNDLE": "A", "SSL_CERT_FILE": "B", "CURL_CA_BUNDLE": "C"}, ("A", None)),
        ({"SSL_CERT_FILE": "B", "CURL_CA_BUNDLE": "C"}, ("B", None)),
        ({"CURL_CA_BUNDLE": "DIR"}, (None, "DIR")),
        ({}, (certifi.where(), None)),
    ],
)
def test_tls_is_verified_against_the_ca_bundle_the_environment_names(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    expected: tuple[str | None, str | None],
) -> None:
    paths = {"A": tmp_path / "a.pem", "B": tmp_path / "b.pem", "C": tmp_path / "c.pem"}
    paths["DIR"] = tmp_path
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, str(paths[value]))
    ca_certs, ca_cert_dir = (str(paths.get(v, v)) if v else None for v in expected)

    with MindeeClient("https://api-v2.mindee.net", Secret("md_x"), request_timeout=5) as client:
        assert client._pool is not None
        pool = client._pool.connection_from_url("https://api-v2.mindee.net")
        assert (pool.cert_reqs, pool.ca_certs, pool.ca_cert_dir) == (
            "CERT_REQUIRED",
            ca_certs,
            ca_cert_dir,
        )


class _NoSuchJob(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"status": 404, "title": "Not Found", "detail": "no such job", "code": "404-001"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Yield the URL of an HTTPS server answering 404 to everything, and its certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
    command += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(command, check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchJob)
    server.daemon_threads = False  # so that server_close() joins the handler threads
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="tls-server")
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_tls_certificates_are_checked(
    tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = tls_server
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)

    with MindeeClient(url, Secret("md_x"), request_timeout=5) as untrusting:
        refused = raised(lambda: untrusting.get_job("some-job"))
    assert (refused.status, refused.retryable) == (None, True)
    assert "SSLError" in str(refused) and "CERTIFICATE_VERIFY_FAILED" in str(refused)

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with MindeeClient(url, Secret("md_x"), request_timeout=5) as trusting:
        answered = raised(lambda: trusting.get_job("some-job"))
    assert (answered.status, answered.code) == (404, "404-001")
