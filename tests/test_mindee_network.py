"""ocrwatchd's Mindee client and the network: connections, uploads, timeouts, secrets,
proxies and TLS."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import ssl
import subprocess
import threading
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ocrwatchd.engines import transport
from ocrwatchd.engines.mindee import Job, MindeeClient
from ocrwatchd.errors import ApiError
from ocrwatchd.secret import Secret
from tests.fixtures_mindee_client import ALIAS, closed_port_url, enqueue, raised
from tests.mindee_emulator import MindeeEmulator


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
    assert len({r.client_port for r in emulator.requests}) == 1

    emulator.fault("job", drop=True)
    assert raised(lambda: client.get_job(job.id)).status is None
    client.get_job(job.id)
    client.get_job(job.id)
    assert len({r.client_port for r in emulator.requests}) == 2
    assert [r.status for r in emulator.requests] == [202, 302, 200, None, 302, 302]


def test_close_closes_the_connection_even_while_an_answer_is_kept(
    emulator: MindeeEmulator,
) -> None:
    client = MindeeClient(emulator.url, Secret(emulator.api_key), request_timeout=5)
    # The error's traceback holds the answer, which holds the connection pool.
    gone = raised(lambda: client.get_result(f"{emulator.url}/v2/products/ocr/results/x"))
    assert gone.status == 404
    assert emulator.open_connections == 1

    client.close()

    assert emulator.wait_for(lambda e: e.open_connections == 0)
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
    ["127.0.0.1", "localhost, 127.0.0.0/8", "*", "[::1],.local,127.0.0.1"],
)
def test_no_proxy_excludes_the_api_host(
    emulator: MindeeEmulator, source: Path, proxy_env: pytest.MonkeyPatch, no_proxy: str
) -> None:
    port = emulator.url.rpartition(":")[2]
    proxy_env.setenv("all_proxy", closed_port_url())
    proxy_env.setenv("no_proxy", no_proxy.replace("PORT", port))
    with MindeeClient(emulator.url, Secret(emulator.api_key), request_timeout=5) as client:
        assert enqueue(client, source).status == "Processing"


@pytest.mark.parametrize("no_proxy", [None, "", "127.0.0.2", "10.0.0.0/8", "127.0.0.1:1"])
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
        ("socks5://user:s3cret@127.0.0.1:1080", "Missing dependencies for SOCKS support"),
        ("ftp://user:s3cret@127.0.0.1:21", "Proxy URL had unsupported scheme ftp"),
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
        ({"REQUESTS_CA_BUNDLE": "A", "CURL_CA_BUNDLE": "C"}, "A"),
        ({"CURL_CA_BUNDLE": "C"}, "C"),
        ({}, True),  # requests' default: certifi's bundle
    ],
)
def test_the_ca_bundle_the_environment_names_is_read_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    expected: str | bool,
) -> None:
    paths = {"A": str(tmp_path / "a.pem"), "C": str(tmp_path / "c.pem")}
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, paths[value])

    with MindeeClient("https://api-v2.mindee.net", Secret("md_x"), request_timeout=5) as client:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "later.pem"))
        assert client._session.verify == paths.get(str(expected), expected)


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
