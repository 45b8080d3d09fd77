"""The webhook receiver: Mindee pushes each finished job's result here, so a file comes
back as soon as the API has it; polling stays as the fallback for a delivery that never
comes.

A POST on any path is taken as a delivery. Its `X-Signature` must be the lowercase hex
HMAC-SHA256 of the body with every CR and LF byte removed, keyed with the webhook's
signing secret (what the official SDKs check), compared in constant time; a missing or
wrong one gets 401 and nothing else happens. A signed body is the result JSON
(`{"inference": {...}}`): it is handed to the engine (`MindeeEngine.deliver`), whose next
poll of that job returns it as a `Result`, so it is stored exactly as a polled one, under
the same guard (a replay finds the row already moved on and changes nothing).

The answer (204) goes out before anything touches the ledger, well within the 100 ms a
webhook sender allows; only then is the job looked up (read only): a delivery that
overtook the recording of its enqueue is announced again once the file follows the job,
and one for a job no file here follows is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ocrwatchd.config import Config, WebhookConfig
from ocrwatchd.errors import ExitCode, OcrwatchdError
from ocrwatchd.ledger import Ledger

log = logging.getLogger(__name__)

BODY_LIMIT = 64 * 2**20 + 2**20  # the largest result the client takes, and some room
READ_TIMEOUT = 10.0  # seconds a sender may take to send its request
# Pauses before looking (again) for the file following a delivered job: an enqueue's
# answer is recorded within milliseconds, but a loaded machine may take longer.
RECHECKS = (0.0, 0.2, 1.0)


@runtime_checkable
class Receiving(Protocol):
    """What the receiver hands results to (the Mindee engine); `pushed` tells it polls
    are only the fallback."""

    pushed: bool

    def deliver(self, job_id: str, body: bytes) -> None: ...

    def announce(self, job_id: str) -> None: ...


class WebhookError(OcrwatchdError):
    """The receiver cannot listen where the config says."""

    exit_code = ExitCode.UNAVAILABLE


def signature(secret: bytes, body: bytes) -> str:
    """The `X-Signature` Mindee sends for `body`: hex HMAC-SHA256 of the body without
    its CR and LF bytes (how the official SDKs verify it)."""
    payload = body.replace(b"\r", b"").replace(b"\n", b"")
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def job_of(body: bytes) -> str | None:
    """The job id a delivered result names (`inference.job.id`, else `inference.id`), or
    None when the body is no OCR result."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    inference = document.get("inference") if isinstance(document, dict) else None
    if not isinstance(inference, dict):
        return None
    job = inference.get("job")
    job_id = job.get("id") if isinstance(job, dict) else None
    job_id = job_id if isinstance(job_id, str) and job_id else inference.get("id")
    # Ids are UUIDs: anything much longer is no job of ours (and is kept out of the logs).
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= 64 else None


class WebhookReceiver:
    """Listens on `settings.host:port` in its own thread; `start()`, `stop()`.

    Given the engine the results go to and the ledger's path (read only, to log
    deliveries for jobs no file follows)."""

    def __init__(self, settings: WebhookConfig, engine: Receiving, ledger_path: Path) -> None:
        assert settings.secret is not None
        self.settings = settings
        self.engine = engine
        self.ledger_path = ledger_path
        self._key = settings.secret.reveal().encode("utf-8")
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve. Raises WebhookError when the address cannot be bound."""
        host, port = self.settings.host, self.settings.port
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as exc:
            raise WebhookError(
                f"cannot receive webhooks on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        self._server.receiver = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="ocrwatchd-webhook",
            daemon=True,
        )
        self._thread.start()
        shown = f"[{host}]" if ":" in host else host
        log.info("receiving Mindee webhooks on http://%s:%d", shown, self.port)

    def stop(self) -> None:
        """Stop listening. Safe to call twice."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def verified(self, body: bytes, given: str | None) -> bool:
        if not given:
            return False
        expected = signature(self._key, body).encode("ascii")
        # Header values arrive as latin-1 text: any byte string compares, in constant time.
        return hmac.compare_digest(expected, given.strip().lower().encode("latin-1", "replace"))

    def follow_up(self, job_id: str) -> None:
        """After a delivery was answered: make sure a file following the job hears of it.
        A job is not followed yet when its delivery overtook the recording of its enqueue,
        and the news may have been taken by then: it is announced again once followed;
        one never followed is logged."""
        for pause in RECHECKS:
            if self._stopping.wait(pause):
                return
            try:
                followed = self.followed(job_id)
            except OcrwatchdError as exc:
                log.warning("webhook for job %s: cannot read the ledger: %s", job_id, exc)
                return
            if followed:
                # Again: a poller may have taken the first news before the file followed.
                self.engine.announce(job_id)
                log.debug("webhook: result of job %s received", job_id)
                return
        log.info(
            "webhook for job %s, which no file here is waiting for (unknown, or its result"
            " is already stored); answered and ignored",
            job_id,
        )

    def followed(self, job_id: str) -> bool:
        """Whether a file here is following this job (its own short-lived connection:
        deliveries are rare, and a connection is not shared between threads)."""
        ledger = Ledger(self.ledger_path)
        try:
            return bool(ledger.rows_with_jobs([job_id]))
        finally:
            ledger.close()


def start_receiver(config: Config, engine: object, ledger_path: Path) -> WebhookReceiver | None:
    """Start the receiver the config asks for, if its engine takes pushed results; tell
    the engine its polls are now the fallback when the enqueue names webhooks. Returns
    None when there is nothing to start. Raises WebhookError."""
    settings = config.webhook
    if settings is None or settings.secret is None:
        return None
    if not isinstance(engine, Receiving):
        log.warning("webhook: ignored, the %s engine gets no webhooks", config.engine)
        return None
    receiver = WebhookReceiver(settings, engine, ledger_path)
    receiver.start()
    if config.mindee.webhook_ids:
        engine.pushed = True
    else:
        log.warning(
            "webhook: mindee.webhook_ids is empty, so the API is asked for no deliveries;"
            " results are fetched by polling"
        )
    return receiver


class _Server(ThreadingHTTPServer):
    # A sender that hangs up mid-request must not keep the daemon's stop waiting.
    daemon_threads = True
    receiver: WebhookReceiver


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("webhook %s: " + format, self.client_address[0], *args)

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self._answer(411, close=True)
            return
        length = int(length_text)
        if length > BODY_LIMIT:
            self._answer(413, close=True)
            return
        try:
            body = self.rfile.read(length)
        except OSError:
            self.close_connection = True
            return
        if len(body) != length:
            self.close_connection = True
            return
        if not receiver.verified(body, self.headers.get("X-Signature")):
            log.warning(
                "webhook from %s refused: %s signature",
                self.client_address[0],
                "wrong" if self.headers.get("X-Signature") else "no",
            )
            self._answer(401)
            return
        job_id = job_of(body)
        if job_id is None:
            log.warning("webhook from %s: signed, but no OCR result", self.client_address[0])
            self._answer(400)
            return
        receiver.engine.deliver(job_id, body)
        self._answer(204)
        # After the answer: the sender is not kept waiting for the ledger.
        receiver.follow_up(job_id)

    def do_GET(self) -> None:
        self._answer(405)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _answer(self, status: int, *, close: bool = False) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.flush()
        except OSError:
            self.close_connection = True
