"""A local emulator of the Mindee API v2 "OCR utility", for tests.

It is a real HTTP/1.1 server (keep-alive, like the real API) on 127.0.0.1 and a free port,
speaking the contract of `API.md`: enqueue, job polling with the 302 answer, result fetch,
RFC 9457-style error bodies, `Authorization: <raw key>`.

    with MindeeEmulator(api_key="md_test") as emu:
        client = SomeClient(base_url=emu.url, api_key="md_test")   # emu.url has no /v2

Settings (constructor keywords, also plain attributes that may change while it runs):

- `api_key`: the only accepted key. Missing header → 401 `401-008`, other key → 401
  `401-001` (bodies of the fixture files).
- `processing_polls` (1): how many job polls answer Processing before the job ends; 0 makes
  a job finished at once (its result can be fetched without polling). The enqueue answer
  always says Processing, as the real API does. Each job copies the value when created;
  `emu.job(id).processing_polls` changes it for one job.
- `delete_on_fetch` (True): the first successful result fetch deletes the result (404 after).
- `latency` (0): seconds added before every answer.
- `result_base` (None): the base URL named in `result_url` and `Location` (default: the
  emulator's own), to play an API that sends clients to another origin for results.
- `processing_seconds` (None): when set, a job is Processing for that many seconds after
  its enqueue, whatever the polls (`processing_polls` is then not used).
- `webhooks` (None): a `tests.emulator_webhooks.WebhookSender`, told of each job enqueued
  with `webhook_ids`; it POSTs the signed result when the job ends.
- `chaos` (None): `chaos(route, key)` → a `Fault` or None, asked for every request that
  has no queued fault (`key`: the enqueue's alias, else the request's path).

Routes, as named by faults and `count()`: `"enqueue"` (POST /v2/products/ocr/enqueue),
`"job"` (GET /v2/jobs/{id}), `"result"` (GET /v2/products/ocr/results/{id}).

Faults are queued per route and consumed in order, one per request:

    emu.fault("enqueue", status=500)                         # API-style JSON error body
    emu.fault("enqueue", status=429, retry_after=2)          # with a Retry-After header
    emu.fault("job", status=502, body="<html>502</html>", content_type="text/html")
    emu.fault("job", status=200, body='{"job": {')           # malformed JSON
    emu.fault("result", delay=3)                             # processed, answered 3 s late
    emu.fault("enqueue", drop=True)                          # connection closed, no answer
    emu.fault("enqueue", drop=True, process=True)            # job created, answer lost
    emu.fault("job", status=503, times=3)                    # the next three polls
    emu.fault("result", drip=2)                              # body sent a byte every 2 s
    emu.fault("result", status=200, size=65 * 2**20)         # a 65 MB body, made as sent
    emu.fault("result", status=200, size=9, declare_length=False)  # no Content-Length

A fault with `status` or `body` replaces the answer (`body` may be str, bytes or a
JSON-able object; a `status` >= 400 without `body` gets an API-style error body, a lower
one an empty body). `process` says whether the request still has its normal effect
(job created, poll counted, result deleted); it defaults to true only for faults that
replace nothing (pure `delay` or `drip`). The request is processed before any delay, so a
slow answer that the client gives up on has still happened on the server, as in real life.
`drip` sends the body one byte at a time, that many seconds apart (headers at once);
`size` replaces the body with that many filler bytes, made while they are sent; with
`declare_length=False` the answer has no Content-Length and ends when the connection
closes.

Failed jobs: `fail_next_job(status=422, detail=...)` makes the next enqueued job end
Failed with an error object shaped like `fail_422.json`; `fail_jobs(alias=..., filename=...)`
does it for every matching job from now on. Results: by default the pages of
`ocr_multiple.json` for a PDF upload, else those of `ocr_single.json`, with ids, alias,
name and MIME type taken from the job; `script_result(pages)` sets the pages of the next
job, `script_result(pages, alias=...)` those of every job with that alias.

Observability (all thread-safe): `requests` (list of `RecordedRequest`: method, path,
query, route, lower-cased headers, form fields, uploaded file name/size/sha256, answered
status, client port; recorded once the answer is decided, before any delay and before it
is sent, so a client holding its answer always finds its request), `enqueued` (list of
`EmulatedJob`),
`job(id)`, `count(route, status=None)`, `uploads_per_alias()` (a Counter),
`open_connections`, and `wait_for(predicate, timeout)`, which waits until
`predicate(emulator)` is true, waking on every recorded request and closed connection, and
returns False on timeout.

`start()` returns the emulator; `stop()` closes every connection and joins every thread it
started; both happen in `with MindeeEmulator() as emu:`. The pytest fixture `emulator`
(`tests/fixtures_emulator.py`) yields a started one with `DEFAULT_API_KEY`.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import functools
import hashlib
import http
import json
import mimetypes
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DATA_DIR = Path(__file__).parent / "data" / "mindee"
DEFAULT_API_KEY = "md_emulator_test_key_0123456789abcdef"
ROUTES = ("enqueue", "job", "result")

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_JOB_PATH = re.compile(r"^/v2/jobs/([^/]+)$")
_RESULT_PATH = re.compile(r"^/v2/products/ocr/results/([^/]+)$")
_ENQUEUE_PATH = "/v2/products/ocr/enqueue"
# A handler idle this long on a keep-alive connection gives up, so nothing can hang forever.
_SOCKET_TIMEOUT = 30.0


@functools.cache
def _fixture(name: str) -> Any:
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))


_PAGES_SLOT = "\u0000pages\u0000"  # cannot occur in a real name or alias


@functools.cache
def _fixture_pages(name: str) -> tuple[int, str]:
    """A result fixture's page count and its pages serialized as JSON."""
    pages = _fixture(name)["inference"]["result"]["pages"]
    return len(pages), json.dumps(pages, ensure_ascii=False)


def error_body(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    code: str | None = None,
    errors: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Return an API error object `{"status","title","detail","code","errors"}`."""
    return {
        "status": status,
        "title": title or _phrase(status),
        "detail": detail,
        "code": code or f"{status}-001",
        "errors": list(errors or []),
    }


@dataclass
class Fault:
    """One scripted misbehaviour of one request; see the module docstring."""

    status: int | None = None
    body: Any = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float | str | None = None
    delay: float = 0.0
    drop: bool = False
    drip: float = 0.0
    size: int | None = None
    declare_length: bool = True
    process: bool = False

    @property
    def replaces_answer(self) -> bool:
        return self.status is not None or self.body is not None or self.size is not None

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """Return (status, headers, body) of the replacement answer."""
        status = 200 if self.status is None else self.status
        body = self.body
        if body is None and status >= 400:
            body = error_body(status, "Scripted fault of the emulator.")
        if body is None:
            raw = b""
        elif isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode("utf-8")
        else:
            raw = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": self.content_type or "application/json", **self.headers}
        if self.retry_after is not None:
            value = self.retry_after
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            headers["Retry-After"] = str(value)
        return status, headers, raw


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator saw it. Header names are lower-cased."""

    method: str
    path: str
    query: dict[str, list[str]]
    route: str | None
    headers: dict[str, str]
    form: dict[str, list[str]]
    file_name: str | None
    file_size: int | None
    file_sha256: str | None
    status: int | None  # None when the connection was dropped without an answer
    client_port: int = 0  # tells the client's connections apart


@dataclass
class EmulatedJob:
    """A job held by the emulator. Tests read it; they may change `processing_polls`."""

    id: str
    model_id: str
    alias: str | None
    filename: str | None
    mime_type: str
    file_size: int
    file_sha256: str
    webhook_ids: list[str]
    processing_polls: int
    created_at: datetime
    ready_at: datetime | None = None  # with processing_seconds: when it ends
    failure: dict[str, Any] | None = None
    pages: list[dict[str, Any]] | None = None
    completed_at: datetime | None = None
    polls: int = 0
    fetches: int = 0
    deleted: bool = False

    @property
    def finished(self) -> bool:
        return self.completed_at is not None

    @property
    def status(self) -> str:
        if not self.finished:
            return "Processing"
        return "Failed" if self.failure else "Processed"


@dataclass
class _FailRule:
    alias: str | None
    filename: str | None
    error: dict[str, Any]

    def matches(self, alias: str | None, filename: str | None) -> bool:
        return (self.alias is None or self.alias == alias) and (
            self.filename is None or self.filename == filename
        )


@dataclass
class _Upload:
    fields: dict[str, list[str]]
    file_name: str | None = None
    file_data: bytes | None = None


class MindeeEmulator:
    """The emulated API; see the module docstring for the whole interface."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        processing_polls: int = 1,
        delete_on_fetch: bool = True,
        latency: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.processing_polls = processing_polls
        self.delete_on_fetch = delete_on_fetch
        self.latency = latency
        self.result_base: str | None = None
        self.processing_seconds: float | None = None
        self.webhooks: Any = None
        self.chaos: Callable[[str, str], Fault | None] | None = None
        # A reentrant lock: wait_for() predicates read the thread-safe properties below.
        self._cond = threading.Condition(threading.RLock())
        self._faults: dict[str, collections.deque[Fault]] = {r: collections.deque() for r in ROUTES}
        self._fail_next: collections.deque[dict[str, Any]] = collections.deque()
        self._fail_rules: list[_FailRule] = []
        self._next_pages: collections.deque[list[dict[str, Any]]] = collections.deque()
        self._pages_by_alias: dict[str, list[dict[str, Any]]] = {}
        self._jobs: dict[str, EmulatedJob] = {}
        self._enqueued: list[EmulatedJob] = []
        self._requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> MindeeEmulator:
        """Bind 127.0.0.1 on a free port and serve in a background thread; return self."""
        if self._server is not None:
            raise RuntimeError("the emulator is already started")
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="mindee-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and join every thread. Idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        with self._cond:
            self._stopping.set()
            connections = list(self._connections)
        server.shutdown()
        # Handlers wait on idle keep-alive connections: cutting them lets the joins finish.
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> MindeeEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, `http://127.0.0.1:PORT`, without `/v2`."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- scripting --------------------------------------------------------------------------

    def fault(
        self,
        route: str,
        *,
        status: int | None = None,
        body: Any = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        retry_after: float | str | None = None,
        delay: float = 0.0,
        drop: bool = False,
        drip: float = 0.0,
        size: int | None = None,
        declare_length: bool = True,
        process: bool | None = None,
        times: int = 1,
    ) -> None:
        """Queue a fault for the next `times` requests of `route` ("enqueue", "job", "result")."""
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; expected one of {ROUTES}")
        fault = Fault(status, body, content_type, dict(headers or {}), retry_after, delay, drop)
        fault.drip, fault.size, fault.declare_length = drip, size, declare_length
        fault.process = (not fault.replaces_answer and not drop) if process is None else process
        with self._cond:
            self._faults[route].extend(fault for _ in range(times))

    def fail_next_job(
        self,
        *,
        status: int = 422,
        detail: str = "One or more fields failed validation.",
        title: str | None = None,
        code: str | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        """Make the next enqueued job end Failed with this error object."""
        if status == 422 and title is None:
            title = "Invalid fields in form"
        with self._cond:
            self._fail_next.append(
                error_body(status, detail, title=title, code=code, errors=errors)
            )

    def fail_jobs(
        self,
        *,
        alias: str | None = None,
        filename: str | None = None,
        status: int = 422,
        detail: str = "One or more fields failed validation.",
        title: str | None = None,
        code: str | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        """Make every job enqueued from now on with this alias and/or filename end Failed."""
        if alias is None and filename is None:
            raise ValueError("fail_jobs needs an alias or a filename")
        if status == 422 and title is None:
            title = "Invalid fields in form"
        error = error_body(status, detail, title=title, code=code, errors=errors)
        with self._cond:
            self._fail_rules.append(_FailRule(alias, filename, error))

    def script_result(self, pages: list[dict[str, Any]], *, alias: str | None = None) -> None:
        """Set the result pages of the next job, or of every job with `alias`."""
        pages = json.loads(json.dumps(pages))
        with self._cond:
            if alias is None:
                self._next_pages.append(pages)
            else:
                self._pages_by_alias[alias] = pages

    # -- observability ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    @property
    def enqueued(self) -> list[EmulatedJob]:
        with self._cond:
            return list(self._enqueued)

    def job(self, job_id: str) -> EmulatedJob:
        """Return the job with this id; raise KeyError if there is none."""
        with self._cond:
            return self._jobs[job_id]

    def count(self, route: str, status: int | None = None) -> int:
        """Return how many requests of `route` were answered (with `status`, if given)."""
        with self._cond:
            return sum(
                1
                for r in self._requests
                if r.route == route and (status is None or r.status == status)
            )

    @property
    def open_connections(self) -> int:
        """How many client connections are open now."""
        with self._cond:
            return len(self._connections)

    def uploads_per_alias(self) -> collections.Counter[str | None]:
        """Return how many jobs were enqueued per alias."""
        with self._cond:
            return collections.Counter(job.alias for job in self._enqueued)

    def wait_for(self, predicate: Callable[[MindeeEmulator], bool], timeout: float = 5.0) -> bool:
        """Wait until `predicate(self)` is true; return False if `timeout` seconds pass first."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    # -- used by the handler ----------------------------------------------------------------

    def _register(self, connection: socket.socket) -> bool:
        with self._cond:
            if self._stopping.is_set():
                return False
            self._connections.add(connection)
            return True

    def _unregister(self, connection: socket.socket) -> None:
        with self._cond:
            self._connections.discard(connection)
            self._cond.notify_all()

    def _next_fault(self, route: str | None, key: str = "") -> Fault | None:
        with self._cond:
            queue = self._faults.get(route or "")
            if queue:
                return queue.popleft()
            chaos = self.chaos
        return chaos(route, key) if chaos is not None and route is not None else None

    def complete(self, job_id: str) -> bytes | None:
        """End the job now if it has not ended; return its result body (as the result
        route would, without counting a fetch), or None if it Failed or is gone."""
        with self._cond:
            job = self._jobs[job_id]
            if not job.finished:
                job.completed_at = job.ready_at or _now()
            if job.status != "Processed" or job.deleted:
                return None
            return self._result_body(job)

    def delivered(self, job_id: str) -> None:
        """A webhook delivery of the job succeeded: like a fetch, it deletes the result."""
        with self._cond:
            if self.delete_on_fetch:
                self._jobs[job_id].deleted = True

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    def _sleep(self, seconds: float) -> bool:
        """Wait `seconds`; return False if the emulator is stopping meanwhile."""
        return seconds <= 0 or not self._stopping.wait(seconds)

    def _answer(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        upload: _Upload | None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Process one request; return (status, headers, body)."""
        route, ident = _route_of(path)
        if route is None:
            return _json_answer(404, error_body(404, f"No route for {path}.", code="404-000"))
        expected_method = "POST" if route == "enqueue" else "GET"
        if method != expected_method:
            return _json_answer(405, error_body(405, f"{method} is not allowed on {path}."))
        key = headers.get("authorization", "")
        if not key:
            return _json_answer(401, _fixture("error_401_missing_credentials.json"))
        if key != self.api_key:
            return _json_answer(401, _fixture("error_401_invalid_api_key.json"))
        if route == "enqueue":
            return self._enqueue(headers.get("content-type", ""), upload)
        with self._cond:
            job = self._jobs.get(ident)
            if job is None:
                kind = "Job" if route == "job" else "Inference"
                return _json_answer(
                    404, error_body(404, f"{kind} {ident} not found.", code="404-002")
                )
            if route == "job":
                return self._poll(job, query)
            return self._fetch(job)

    def _enqueue(
        self, content_type: str, upload: _Upload | None
    ) -> tuple[int, dict[str, str], bytes]:
        if upload is None:
            problem = {"pointer": "#/", "detail": f"expected a form, got {content_type!r}"}
            return _json_answer(422, _invalid_form([problem]))
        fields = upload.fields
        problems = []
        model_id = _first(fields, "model_id")
        if model_id is None or not _UUID.match(model_id):
            problems.append(
                {"pointer": "#/model_id", "detail": "model_id must be a valid UUID format"}
            )
        webhook_ids = [
            w.strip() for v in fields.get("webhook_ids", []) for w in v.split(",") if w.strip()
        ]
        if any(not _UUID.match(w) for w in webhook_ids):
            problems.append(
                {"pointer": "#/webhook_ids", "detail": "webhook_ids must be valid UUIDs"}
            )
        data, default_name = upload.file_data, upload.file_name
        url, base64_text = _first(fields, "url"), _first(fields, "file_base64")
        if data is None and url is not None:
            if not url.startswith("https://") or len(url) > 2048:
                problems.append({"pointer": "#/url", "detail": "url must be an HTTPS URI"})
            data, default_name = b"", url.rsplit("/", 1)[-1] or None
        elif data is None and base64_text is not None:
            try:
                data = base64.b64decode(base64_text, validate=True)
            except (binascii.Error, ValueError):
                data = None
            if data is None or len(base64_text) < 15:
                problems.append(
                    {"pointer": "#/file_base64", "detail": "file_base64 is not valid base64"}
                )
        elif data is None:
            problems.append(
                {"pointer": "#/file", "detail": "one of file, url or file_base64 is required"}
            )
        if problems or data is None or model_id is None:
            return _json_answer(422, _invalid_form(problems))
        filename = _first(fields, "filename") or default_name
        alias = _first(fields, "alias")
        now = _now()
        with self._cond:
            job = EmulatedJob(
                id=str(uuid.uuid4()),
                model_id=model_id,
                alias=alias,
                filename=filename,
                mime_type=_sniff_mime(data, filename),
                file_size=len(data),
                file_sha256=hashlib.sha256(data).hexdigest(),
                webhook_ids=webhook_ids,
                processing_polls=self.processing_polls,
                created_at=now,
            )
            if self._fail_next:
                job.failure = self._fail_next.popleft()
            else:
                job.failure = next(
                    (r.error for r in self._fail_rules if r.matches(alias, filename)), None
                )
            if self._next_pages:
                job.pages = self._next_pages.popleft()
            elif alias in self._pages_by_alias:
                job.pages = self._pages_by_alias[alias]
            if self.processing_seconds is not None:
                job.ready_at = now + timedelta(seconds=self.processing_seconds)
            elif job.processing_polls <= 0:
                job.completed_at = now
            self._jobs[job.id] = job
            self._enqueued.append(job)
            body = {"job": self._job_json(job, status="Processing")}
        if self.webhooks is not None and webhook_ids:
            self.webhooks.schedule(job.id, job.ready_at or now)
        return _json_answer(202, body)

    def _poll(
        self, job: EmulatedJob, query: dict[str, list[str]]
    ) -> tuple[int, dict[str, str], bytes]:
        """Answer a job poll; the caller holds the lock."""
        if job.ready_at is not None:
            if not job.finished and _now() >= job.ready_at:
                job.completed_at = job.ready_at
        elif not job.finished and job.polls >= job.processing_polls:
            job.completed_at = _now()
        job.polls += 1
        body = {"job": self._job_json(job)}
        redirect = (_first(query, "redirect") or "true").lower() != "false"
        if job.status == "Processed" and redirect:
            status, headers, raw = _json_answer(302, body)
            headers["Location"] = self._result_url(job)
            return status, headers, raw
        return _json_answer(200, body)

    def _fetch(self, job: EmulatedJob) -> tuple[int, dict[str, str], bytes]:
        """Answer a result fetch; the caller holds the lock."""
        if job.status != "Processed" or job.deleted:
            return _json_answer(
                404, error_body(404, f"Inference {job.id} not found.", code="404-002")
            )
        job.fetches += 1
        if self.delete_on_fetch:
            job.deleted = True
        return 200, {"Content-Type": "application/json"}, self._result_body(job)

    def _result_body(self, job: EmulatedJob) -> bytes:
        """The result JSON of a Processed job; the caller holds the lock."""
        pdf = job.mime_type == "application/pdf"
        if job.pages is None:
            name = "ocr_multiple.json" if pdf else "ocr_single.json"
            page_count, pages_json = _fixture_pages(name)
        else:
            page_count = len(job.pages)
            pages_json = json.dumps(job.pages, ensure_ascii=False)
        inference = {
            "id": job.id,
            "job": {"id": job.id},
            "model": {"id": job.model_id},
            "file": {
                "name": job.filename,
                "alias": job.alias,
                "page_count": page_count,
                "mime_type": job.mime_type,
            },
            "result": {"pages": _PAGES_SLOT},
        }
        # The pages are serialized once per fixture and spliced in: serializing 170 kB
        # per fetch under the lock made the emulator, not the client, the bottleneck.
        head = json.dumps({"inference": inference}, ensure_ascii=False)
        return head.replace(json.dumps(_PAGES_SLOT), pages_json, 1).encode("utf-8")

    def _result_url(self, job: EmulatedJob) -> str:
        return f"{self.result_base or self.url}/v2/products/ocr/results/{job.id}"

    def _job_json(self, job: EmulatedJob, *, status: str | None = None) -> dict[str, Any]:
        status = status or job.status
        done = status != "Processing"
        return {
            "id": job.id,
            "model_id": job.model_id,
            "filename": job.filename,
            "alias": job.alias,
            "created_at": job.created_at.isoformat(),
            "completed_at": job.completed_at.isoformat() if done and job.completed_at else None,
            "status": status,
            "polling_url": f"{self.url}/v2/jobs/{job.id}",
            "result_url": self._result_url(job) if status == "Processed" else None,
            "webhooks": [
                {
                    "id": webhook_id,
                    "created_at": job.created_at.isoformat(),
                    "status": "Processed" if done else "Processing",
                    "error": None,
                    "attempts_count": 1 if done else 0,
                }
                for webhook_id in job.webhook_ids
            ],
            "error": job.failure if status == "Failed" else None,
        }


class _Server(ThreadingHTTPServer):
    # Non-daemon handler threads are tracked, so server_close() joins every one of them.
    daemon_threads = False
    block_on_close = True

    def __init__(self, emulator: MindeeEmulator) -> None:
        self.emulator = emulator
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _SOCKET_TIMEOUT
    # Headers and body go out in two writes; with Nagle, the body waits for a delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        if not self.server.emulator._register(self.connection):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self.server.emulator._unregister(self.connection)
        # The client may be gone already: there is nothing left to flush then.
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read emulator.requests, not stderr

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        emulator = self.server.emulator
        body = self._read_body()
        if body is None:
            self.close_connection = True
            return
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        headers = {name.lower(): value for name, value in self.headers.items()}
        content_type = headers.get("content-type", "")
        upload = _parse_form(content_type, body) if self.command == "POST" else None
        route, _ = _route_of(split.path)
        if route == "enqueue" and self.command != "POST":
            route = None
        alias = _first(upload.fields, "alias") if upload and route == "enqueue" else None
        fault = emulator._next_fault(route, alias or split.path)
        answer: tuple[int, dict[str, str], bytes] | None = None
        if fault is None or fault.process:
            answer = emulator._answer(self.command, split.path, query, headers, upload)
        if fault is not None and fault.replaces_answer:
            answer = fault.answer()
        dropped = answer is None or (fault is not None and fault.drop)
        file_data = upload.file_data if upload else None
        # Recorded before answering: a client holding its answer finds its request recorded.
        emulator._record(
            RecordedRequest(
                method=self.command,
                path=split.path,
                query=query,
                route=route,
                headers=headers,
                form=upload.fields if upload else {},
                file_name=upload.file_name if upload else None,
                file_size=None if file_data is None else len(file_data),
                file_sha256=None if file_data is None else hashlib.sha256(file_data).hexdigest(),
                status=None if dropped or answer is None else answer[0],
                client_port=self.client_address[1],
            )
        )
        delay = emulator.latency + (fault.delay if fault else 0.0)
        if emulator._sleep(delay) and not dropped and answer is not None:
            self._send(*answer, fault=fault)
        else:
            self.close_connection = True

    def _read_body(self) -> bytes | None:
        """Return the request body, or None if the connection broke while reading it."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            return body if len(body) == length else None
        except (OSError, ValueError):
            return None

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        while True:
            size_line = self.rfile.readline(65537)
            if not size_line:
                return None
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers are not used by any client of ours
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(65537)

    def _send(
        self, status: int, headers: dict[str, str], body: bytes, fault: Fault | None = None
    ) -> None:
        size = len(body) if fault is None or fault.size is None else fault.size
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if fault is None or fault.declare_length:
                self.send_header("Content-Length", str(size))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if fault is not None and fault.size is not None:
                block = b"x" * min(size, 1 << 20)
                for start in range(0, size, len(block) or 1):
                    self.wfile.write(block[: size - start])
            elif fault is not None and fault.drip:
                self.wfile.flush()
                for index in range(len(body)):
                    if not self.server.emulator._sleep(fault.drip):
                        break
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
            else:
                self.wfile.write(body)
        except OSError:
            self.close_connection = True


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _route_of(path: str) -> tuple[str | None, str]:
    if path == _ENQUEUE_PATH:
        return "enqueue", ""
    for route, pattern in (("job", _JOB_PATH), ("result", _RESULT_PATH)):
        match = pattern.match(path)
        if match:
            return route, match.group(1)
    return None, ""


def _json_answer(status: int, body: Any) -> tuple[int, dict[str, str], bytes]:
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
    return status, {"Content-Type": "application/json"}, raw


def _invalid_form(problems: list[dict[str, str]]) -> dict[str, Any]:
    return error_body(
        422,
        "One or more fields failed validation.",
        title="Invalid fields in form",
        code="422-001",
        errors=problems,
    )


def _first(values: dict[str, list[str]], name: str) -> str | None:
    found = values.get(name)
    return found[0] if found else None


def _now() -> datetime:
    # The API writes naive UTC timestamps, as in the fixtures.
    return datetime.now(UTC).replace(tzinfo=None)


def _sniff_mime(data: bytes, filename: str | None) -> str:
    if data.startswith(b"%PDF"):
        return "application/pdf"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[4:8] == b"ftyp":
        return "image/heic" if data[8:12] in (b"heic", b"heix") else "image/heif"
    guessed = mimetypes.guess_type(filename or "")[0]
    return guessed or "application/octet-stream"


def _parse_form(content_type: str, body: bytes) -> _Upload | None:
    """Parse a multipart/form-data or urlencoded body; return None if it is neither.

    The SDKs send an enqueue without a file (`url`) as application/x-www-form-urlencoded.
    """
    kind, params = _parse_header_value(content_type)
    if kind.lower() == "application/x-www-form-urlencoded":
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return _Upload(fields=fields)
    boundary = params.get("boundary")
    if kind.lower() != "multipart/form-data" or not boundary:
        return None
    upload = _Upload(fields={})
    delimiter = b"--" + boundary.encode("latin-1")
    for part in _split_parts(body, delimiter):
        head, _, content = part.partition(b"\r\n\r\n")
        part_headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            header, _, value = line.partition(":")
            part_headers[header.strip().lower()] = value.strip()
        _, disposition = _parse_header_value(part_headers.get("content-disposition", ""))
        name = disposition.get("name")
        if name is None:
            continue
        if "filename" in disposition or name == "file":
            upload.file_name = disposition.get("filename")
            upload.file_data = content
        else:
            upload.fields.setdefault(name, []).append(content.decode("utf-8", "replace"))
    return upload


def _split_parts(body: bytes, delimiter: bytes) -> Iterator[bytes]:
    chunks = body.split(delimiter)
    # chunks[0] is the preamble; the chunk starting with "--" is the epilogue.
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            return
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        if chunk.endswith(b"\r\n"):
            chunk = chunk[:-2]
        yield chunk


def _parse_header_value(value: str) -> tuple[str, dict[str, str]]:
    """Split `kind; a="x"; b=y` into ("kind", {"a": "x", "b": "y"}); RFC 2231 `*=` too."""
    kind, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in re.finditer(r'\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*;?', rest):
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if name.endswith("*"):
            charset, _, encoded = raw.partition("''")
            params[name[:-1]] = unquote(encoded, encoding=charset or "utf-8")
        else:
            # HTML5 multipart encoding (urllib3, httpx, browsers) percent-escapes only these.
            for escaped, char in (("%22", '"'), ("%0D", "\r"), ("%0A", "\n")):
                raw = raw.replace(escaped, char)
            params.setdefault(name, raw)
    return kind.strip(), params
