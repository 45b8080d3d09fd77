"""HTTP client for the Mindee API v2 OCR utility: enqueue a file, poll its job, fetch the result.

One `MindeeClient` per thread (one `requests.Session`, no lock). One HTTP request per
call, never retried: backoff, rate limits and job deadlines belong to the caller. The
environment (proxy, CA bundle) is read once; then never again (nor ~/.netrc).

The API key goes to the base URL's origin (scheme, host, port) only. A job whose
`result_url` (or `Location`) names another origin gets the base URL's own results path
instead, and a request to another origin is refused before anything is sent. Redirects
are never followed: the 302 of a Processed job carries the job in its body.

Every request has a total deadline, `request_timeout`: the upload, the wait and the body
read together (the body is read in pieces, each wait bounded by what is left). Bodies are
bounded: a result over 64 MB fails the file ("result larger than 64 MB"), a job body over
1 MB is no usable answer, an error body is read up to 1 MB.

Every failure is raised as `ocrwatchd.errors.ApiError`:

- an error answer (4xx/5xx): `status`, `code`, `title`, `detail` come from the API's JSON
  error body; a body that is not one (an HTML page from a proxy, nothing, a truncated text)
  gives `HTTP 502 from the API (non-JSON body ...)`. `Retry-After` (seconds or an HTTP
  date, at most 15 minutes) becomes `retry_after`.
- no usable answer: `status=None`, hence retryable. That covers network errors, timeouts,
  dropped connections, a proxy that cannot be used, a file that shrinks while it is
  uploaded, unexpected 1xx/3xx answers and a 2xx whose body is not the JSON the contract
  promises (malformed, truncated, or missing keys): such a body says the request went
  wrong on the way, not that the file is bad.

The API key (a `Secret`) is revealed only into the `Authorization` header, and scrubbed
(with any proxy password) from every message built from what the server or network says.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests
import urllib3

from ocrwatchd import __version__
from ocrwatchd.engines.mindee_answers import (
    Job,
    describe_error,
    load_json,
    parse_job,
    parse_retry_after,
    result_problem,
    snippet,
    text_or_none,
)
from ocrwatchd.engines.transport import (
    ApiSession,
    MultipartBody,
    TooLarge,
    origin,
    read_body,
    timed_out,
)
from ocrwatchd.errors import ApiError
from ocrwatchd.secret import Secret

__all__ = ["USER_AGENT", "Job", "MindeeClient", "parse_retry_after", "result_problem"]

log = logging.getLogger(__name__)

USER_AGENT = f"ocrwatchd/{__version__} python-v{sys.version_info[0]}.{sys.version_info[1]} linux"

RESULT_LIMIT = 64 * 1024 * 1024
SMALL_LIMIT = 1024 * 1024  # job and error bodies are a few kB
# requests wraps what the network does (refused, reset, timed out, a proxy or TLS failure);
# urllib3's own errors come from reading the body here; OSError and ValueError are what
# slips through unwrapped (a header value http.client refuses, the upload's deadline).
_NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError)
_BASE_HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate", "Accept": "*/*"}


class _Answer(NamedTuple):
    status: int
    headers: Mapping[str, str]
    body: bytes


class MindeeClient:
    """Talks to one Mindee API v2 host with one API key.

    `base_url` is the host root without `/v2` (e.g. `https://api-v2.mindee.net`).
    `request_timeout` is each request's total deadline, `connect_timeout` the TCP/TLS
    connect's within it. `check_result` validates a result body (default: `result_problem`,
    in this thread; the daemon runs it in a helper process).
    """

    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        *,
        request_timeout: float,
        connect_timeout: float = 10,
        check_result: Callable[[bytes], str | None] = result_problem,
        on_request: Callable[[str, int | str, float], None] | None = None,
    ) -> None:
        self._check_result = check_result
        self._on_request = on_request
        self._base_url = base_url.rstrip("/")
        self._origin = origin(self._base_url)
        self._api_key = api_key
        self._timeout = request_timeout
        self._timeouts = (min(connect_timeout, request_timeout), request_timeout)
        self._session = ApiSession(self._base_url, _BASE_HEADERS)
        # Proxy passwords are secrets too: requests and urllib3 may echo a proxy URL.
        self._secrets = [api_key.reveal()] + [
            word
            for proxy in self._session.proxies.values()
            for password in [urlsplit(proxy).password]
            if password
            for word in {password, unquote(password)}
        ]
        self._warned_origin = False

    def __repr__(self) -> str:
        return f"MindeeClient({self._base_url!r})"

    def __enter__(self) -> MindeeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:  # the client stays usable: it would reconnect
        self._session.close()

    def enqueue(
        self,
        path: Path,
        *,
        model_id: str,
        alias: str,
        filename: str,
        webhook_ids: Sequence[str] = (),
        file: BinaryIO | None = None,
    ) -> Job:
        """Upload the file at `path` (or the open `file`, read from where it stands) for
        OCR and return the new job (normally Processing).

        The file is streamed from disk, not loaded into memory. Any 2xx answer is success.
        Raises OSError if the file cannot be opened, ApiError for everything else (a file
        that shrinks during the upload included: it may be complete on the next try).
        """
        fields = [("model_id", model_id), ("alias", alias), ("filename", filename)]
        fields += [("webhook_ids", webhook_id) for webhook_id in webhook_ids]
        with contextlib.ExitStack() as stack:
            if file is None:
                file = stack.enter_context(path.open("rb"))
            body = MultipartBody(fields, filename, file, os.fstat(file.fileno()).st_size)
            answer = self._request(
                "POST",
                f"{self._base_url}/v2/products/ocr/enqueue",
                "enqueue",
                body=body,
                # With a length, the body goes out as it is read, in blocks, rather than
                # chunked (which the API does not take).
                headers={"Content-Type": body.content_type, "Content-Length": str(len(body))},
            )
        self._check_status(answer, "enqueue")
        return parse_job(self._json_object(answer, "enqueue"), "enqueue", self._error)

    def get_job(self, job_id: str) -> Job:
        """Return the job `job_id` as the API describes it now.

        The 302 the API answers for a Processed job is not followed: its body is the job.
        A Processed job always has `result_url` (the body's, else the Location header), on
        the base URL's origin (the own results path when the API names another origin).
        Raises ApiError.
        """
        what = f"job {job_id}"
        url = f"{self._base_url}/v2/jobs/{quote(job_id, safe='')}"
        answer = self._request("GET", url, what)
        self._check_status(answer, what, also_ok=(302,))
        job = parse_job(self._json_object(answer, what), what, self._error)
        if job.id.lower() != job_id.lower():
            raise self._error(f"{what}: the API answered about job {job.id}", status=None)
        if job.status == "Processed":
            result_url = job.result_url
            if result_url is None:
                location = answer.headers.get("Location")
                if not location:
                    raise self._error(f"{what}: Processed without a result_url", status=None)
                result_url = urljoin(url, location)
            job = replace(job, result_url=self._own_result_url(job.id, result_url))
        return job

    def get_result(self, result_url: str) -> bytes:
        """Fetch `result_url` (on the base URL's origin) and return the body as received.

        The body is checked to be a JSON object with an `inference` object. With "delete
        extracted data when fetched", this is the only chance to get it: store it at once.
        Raises ApiError (404 once the result is gone or expired; a URL on another origin
        or a result over 64 MB, not retryable).
        """
        answer = self._request("GET", result_url, "result", limit=RESULT_LIMIT)
        self._check_status(answer, "result")
        problem = self._check_result(answer.body)
        if problem is not None:
            raise self._error(f"result: HTTP {answer.status} with {problem} in the body", None)
        return answer.body

    def get_result_for(self, job: Job) -> bytes:
        """Fetch the result of a Processed `job`: its `result_url` when that is on the base
        URL's origin, else the base URL's own results path. Raises as `get_result`."""
        return self.get_result(self._own_result_url(job.id, job.result_url))

    def check_key(self) -> None:
        """Check, without uploading anything, that the API takes the key.

        Asks for a job that cannot exist: 404 means the key was accepted. Raises ApiError:
        `pauses_work` for a refused key or account, else the base URL does not answer as
        the API does.
        """
        job_id = str(uuid.uuid4())
        answer = self._request("GET", f"{self._base_url}/v2/jobs/{job_id}", "key check")
        if answer.status == 404 and isinstance(load_json(answer.body), dict):
            return
        self._check_status(answer, "key check")
        raise self._error(f"key check: HTTP {answer.status} for a job that cannot exist", None)

    def _own_result_url(self, job_id: str, url: str | None) -> str:
        """`url` if it is on the base URL's origin, else the base URL's results path."""
        if url is not None and self._same_origin(url):
            return url
        if url is not None and not self._warned_origin:
            self._warned_origin = True
            log.warning(
                "the API names results on another origin (%s); they are fetched from %s "
                "instead, so that the API key goes nowhere else",
                urlsplit(url).netloc.rpartition("@")[2] or url[:40],
                self._base_url,
            )
        return f"{self._base_url}/v2/products/ocr/results/{quote(job_id, safe='')}"

    def _same_origin(self, url: str) -> bool:
        try:
            return origin(url) == self._origin
        except ValueError:  # a port that is no number
            return False

    # -- one request --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        body: MultipartBody | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = SMALL_LIMIT,
    ) -> _Answer:
        """Send one request and return the answer, its body read in full.

        Given the method, an absolute http(s) URL on the base URL's origin, `what` (names
        the call in messages), an optional body, extra headers and the most bytes a 2xx
        body may have. Raises ApiError(status=None) if no answer arrives in time.
        """
        if not url[:8].lower().startswith(("http://", "https://")):
            raise self._error(f"{what}: not an http(s) URL: {url!r}", status=None)
        if not self._same_origin(url):
            raise self._error(
                f"{what}: {url} is not on the API's origin; the API key is not sent there",
                status=None,
                retryable=False,
            )
        started = time.monotonic()
        deadline = started + self._timeout
        if body is not None:
            body.deadline = deadline
        try:
            # Redirects are not followed (a 302 from the job route carries the job), and
            # the body is read below, in pieces, against the deadline and the limit.
            response = self._session.send(
                method,
                url,
                headers={"Authorization": self._api_key.reveal(), **(headers or {})},
                body=body,
                timeout=self._timeouts,
            )
            ok = 200 <= response.status_code < 300
            data = read_body(response, deadline, limit if ok else SMALL_LIMIT)
        except TooLarge:
            if ok and limit == RESULT_LIMIT:
                raise self._error(
                    f"result larger than {RESULT_LIMIT // 2**20} MB, more than any OCR result",
                    status=None,
                    retryable=False,
                ) from None
            if ok:
                raise self._error(
                    f"{what}: answer larger than {SMALL_LIMIT // 2**20} MB", status=None
                ) from None
            data = b""  # an error answer: its status is enough
        except _NETWORK_ERRORS as exc:
            kind = "timed out" if timed_out(exc) else "failed"
            self._observe(what, "error", started)
            log.debug("%s %s %s after %.3f s", method, url, kind, time.monotonic() - started)
            # `from None` keeps the network layer's exception chain out of tracebacks.
            raise self._error(
                f"{what}: request {kind}, no answer from the API ({type(exc).__name__}: {exc})",
                status=None,
            ) from None
        self._observe(what, response.status_code, started)
        log.debug(
            "%s %s: HTTP %d in %.3f s",
            method,
            url,
            response.status_code,
            time.monotonic() - started,
        )
        return _Answer(response.status_code, response.headers, data)

    def _observe(self, what: str, status: int | str, started: float) -> None:  # metrics
        if self._on_request is not None:
            endpoint = what.split()[0] if what.startswith(("job", "enqueue", "result")) else what
            self._on_request(endpoint, status, time.monotonic() - started)

    def _check_status(self, answer: _Answer, what: str, also_ok: tuple[int, ...] = ()) -> None:
        """Raise ApiError unless the answer is a 2xx or one of `also_ok`."""
        status = answer.status
        if 200 <= status < 300 or status in also_ok:
            return
        if status < 400:
            raise self._error(f"{what}: unexpected HTTP {status} from the API", status=None)
        retry_after = parse_retry_after(answer.headers.get("Retry-After"))
        body = load_json(answer.body)
        if isinstance(body, dict) and ("detail" in body or "title" in body):
            raise self._error(
                f"{what}: HTTP {status}: {describe_error(body)}",
                status=status,
                code=text_or_none(body.get("code")),
                title=text_or_none(body.get("title")),
                detail=text_or_none(body.get("detail")),
                retry_after=retry_after,
            )
        kind = "non-JSON body" if body is None else "JSON body that is not an error object"
        shown = snippet(answer.body)
        raise self._error(
            f"{what}: HTTP {status} from the API ({kind}{': ' + shown if shown else ''})",
            status=status,
            retry_after=retry_after,
        )

    def _json_object(self, answer: _Answer, what: str) -> dict[str, Any]:
        """Return the answer's body as a JSON object; raise a retryable ApiError if it is not."""
        body = load_json(answer.body)
        if not isinstance(body, dict):
            problem = "malformed JSON" if body is None else "JSON that is not an object"
            raise self._error(f"{what}: HTTP {answer.status} with {problem} in the body", None)
        return body

    def _error(
        self,
        message: str,
        status: int | None,
        *,
        code: str | None = None,
        title: str | None = None,
        detail: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> ApiError:
        """Build an ApiError whose texts cannot contain a secret.

        `retryable` overrides what the status says, for the answers that would be the
        same on every try (a result too large, a URL on another origin).
        """
        error = ApiError(
            self._scrub(message),
            status=status,
            code=code and self._scrub(code),
            title=title and self._scrub(title),
            detail=detail and self._scrub(detail),
            retry_after=retry_after,
        )
        if retryable is not None:
            error.retryable = retryable
        return error

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text
