"""HTTP client for the Mindee API v2 OCR utility: enqueue a file, poll its job, fetch the result.

The contract is `API.md` of the project. One `MindeeClient` per thread: it owns one urllib3
`PoolManager` (one kept-alive connection per host) and has no lock, so it is never shared.
It makes exactly one HTTP request per call and never retries: backoff, rate limits and job
deadlines belong to the caller.

Why urllib3 and not requests (the spec's choice): the daemon is CPU-bound under the GIL,
and requests adds about 0.55 ms of CPU per request on top of the ~0.15 ms of urllib3, which
it runs on anyway (measured: `Session.get` 0.82 ms against `PoolManager.request` 0.41 ms a
call, the in-process emulator's share included). At 4 requests per file that capped the
daemon near 125 files/s against a target of 200. What requests did for us is done here
once per client: the proxy from the environment (`*_proxy`, `no_proxy`), the CA bundle
(`REQUESTS_CA_BUNDLE`, `SSL_CERT_FILE`, `CURL_CA_BUNDLE`, else certifi's), the header set,
and the mapping of transport errors. ~/.netrc is no longer read at all, so it can never
replace the API key.

Every failure is raised as `ocrwatchd.errors.ApiError`:

- an error answer (4xx/5xx): `status`, `code`, `title`, `detail` come from the API's JSON
  error body; a body that is not one (an HTML page from a proxy, nothing, a truncated text)
  gives `HTTP 502 from the API (non-JSON body ...)`. `Retry-After` (seconds or an HTTP
  date) becomes `retry_after`.
- no usable answer: `status=None`, hence retryable. That covers network errors, timeouts,
  dropped connections, a proxy the environment names but that cannot be used, a file that
  shrinks while it is uploaded, unexpected 1xx/3xx answers and a 2xx whose body is not the
  JSON the contract promises (malformed, truncated, or missing keys): such a body says the
  request went wrong on the way, not that the file is bad.

The API key lives in a `Secret`, is revealed only into the `Authorization` header, and is
scrubbed from every message built from what the server or the network layer says.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import urllib3
from urllib3.exceptions import HTTPError
from urllib3.util import make_headers

from ocrwatchd import __version__
from ocrwatchd.engines.transport import MultipartBody, UnusableProxy, pool_manager, timed_out
from ocrwatchd.errors import ApiError
from ocrwatchd.secret import Secret

log = logging.getLogger(__name__)

USER_AGENT = f"ocrwatchd/{__version__} python-v{sys.version_info[0]}.{sys.version_info[1]} linux"

JOB_STATUSES = frozenset({"Processing", "Processed", "Failed"})
# The job keys this client reads. The API sends more; those are not required, so that a
# harmless change to them cannot stop all work.
_JOB_KEYS = ("id", "status", "alias", "filename", "polling_url", "result_url", "error")
_SNIPPET_LENGTH = 120
# Sent with every request, as requests did: compressed answers are welcome (urllib3
# decodes them), and any media type is accepted (the body is checked instead).
_BASE_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept-Encoding": make_headers(accept_encoding=True)["accept-encoding"],
    "Accept": "*/*",
}


@dataclass(frozen=True)
class Job:
    """A remote OCR job as the API last described it.

    `error` is set for Failed jobs only: the job's error object as an `ApiError`.
    """

    id: str
    status: str
    result_url: str | None
    polling_url: str | None
    alias: str | None
    filename: str | None
    error: ApiError | None


def result_problem(body: bytes) -> str | None:
    """What is wrong with an OCR result body (not JSON, not an object, no `inference`
    object), or None when it is a well-formed result."""
    document = _load_json(body)
    if not isinstance(document, dict):
        return "malformed JSON" if document is None else "JSON that is not an object"
    if not isinstance(document.get("inference"), dict):
        return "a JSON object without an inference object"
    return None


class MindeeClient:
    """Talks to one Mindee API v2 host with one API key.

    `base_url` is the host root without `/v2` (e.g. `https://api-v2.mindee.net`).
    `request_timeout` bounds each wait for the server's bytes (urllib3's read timeout),
    `connect_timeout` the TCP/TLS connect. The proxy and CA settings are read from the
    environment here, once; a proxy that cannot be used fails each request, not this.
    `check_result` validates a result body (default: `result_problem`, in this thread;
    the daemon runs it in a helper process).
    """

    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        *,
        request_timeout: float,
        connect_timeout: float = 10,
        check_result: Callable[[bytes], str | None] = result_problem,
    ) -> None:
        self._check_result = check_result
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._pool: urllib3.PoolManager | None = None
        self._pool_problem = ""
        timeout = urllib3.Timeout(connect=connect_timeout, read=request_timeout)
        try:
            self._pool = pool_manager(self._base_url, timeout)
        except UnusableProxy as exc:
            # Raising here would kill the worker thread that builds clients; like any
            # other network trouble, it is reported per request and retried.
            self._pool_problem = str(exc)

    def __repr__(self) -> str:
        return f"MindeeClient({self._base_url!r})"

    def __enter__(self) -> MindeeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection. The client stays usable: it would reconnect."""
        if self._pool is None:
            return
        # urllib3 2's clear() only forgets the pools; each closes its connections when it is
        # garbage, which waits as long as an answer refers to it (as one kept in an
        # ApiError's traceback does). So close them here, then forget them.
        pools = self._pool.pools
        for key in list(pools.keys()):
            pools[key].close()
        self._pool.clear()

    def enqueue(
        self,
        path: Path,
        *,
        model_id: str,
        alias: str,
        filename: str,
        webhook_ids: Sequence[str] = (),
    ) -> Job:
        """Upload the file at `path` for OCR and return the new job (normally Processing).

        The file is streamed from disk, not loaded into memory. Any 2xx answer is success.
        Raises OSError if the file cannot be opened, ApiError for everything else (a file
        that shrinks during the upload included: it may be complete on the next try).
        """
        fields = [("model_id", model_id), ("alias", alias), ("filename", filename)]
        fields += [("webhook_ids", webhook_id) for webhook_id in webhook_ids]
        with path.open("rb") as file:
            body = MultipartBody(fields, filename, file, os.fstat(file.fileno()).st_size)
            response = self._request(
                "POST",
                f"{self._base_url}/v2/products/ocr/enqueue",
                "enqueue",
                body=body,
                # An explicit length makes urllib3 send the body as it reads it, in blocks,
                # rather than chunked (which the API does not take).
                headers={"Content-Type": body.content_type, "Content-Length": str(len(body))},
            )
        self._check_status(response, "enqueue")
        return self._parse_job(self._json_object(response, "enqueue"), "enqueue")

    def get_job(self, job_id: str) -> Job:
        """Return the job `job_id` as the API describes it now.

        The 302 the API answers for a Processed job is not followed: its body is the job.
        A Processed job always has `result_url` (the body's, else the Location header).
        Raises ApiError.
        """
        what = f"job {job_id}"
        url = f"{self._base_url}/v2/jobs/{quote(job_id, safe='')}"
        response = self._request("GET", url, what)
        self._check_status(response, what, also_ok=(302,))
        job = self._parse_job(self._json_object(response, what), what)
        if job.id.lower() != job_id.lower():
            raise self._error(f"{what}: the API answered about job {job.id}", status=None)
        if job.status == "Processed" and job.result_url is None:
            location = response.headers.get("Location")
            if not location:
                raise self._error(f"{what}: Processed without a result_url", status=None)
            job = replace(job, result_url=urljoin(url, location))
        return job

    def get_result(self, result_url: str) -> bytes:
        """Fetch `result_url` and return the body exactly as received.

        The body is checked to be a JSON object with an `inference` object. With "delete
        extracted data when fetched", this is the only chance to get it: store it at once.
        Raises ApiError (404 once the result is gone or expired).
        """
        response = self._request("GET", result_url, "result")
        self._check_status(response, "result")
        problem = self._check_result(response.data)
        if problem is not None:
            raise self._error(
                f"result: HTTP {response.status} with {problem} in the body", status=None
            )
        return response.data

    # -- one request --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        body: MultipartBody | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Send one request and return the answer, its body read in full.

        Given the method, an absolute http(s) URL, `what` (names the call in messages), an
        optional body and extra headers. Raises ApiError(status=None) if no answer arrives.
        """
        if self._pool is None:
            raise self._error(f"{what}: request failed, {self._pool_problem}", status=None)
        if not url[:8].lower().startswith(("http://", "https://")):
            # urllib3 would take a URL without a scheme as http, with a warning.
            raise self._error(f"{what}: not an http(s) URL: {url!r}", status=None)
        started = time.monotonic()
        try:
            response = self._pool.urlopen(
                method,
                url,
                body=body,
                headers={
                    **_BASE_HEADERS,
                    "Authorization": self._api_key.reveal(),
                    **(headers or {}),
                },
                retries=False,  # the caller retries, with backoff
                redirect=False,  # a 302 from the job route carries the job
                preload_content=True,  # read the whole body, then reuse the connection
                enforce_content_length=True,  # a short body is an error, not an answer
            )
        except (HTTPError, OSError, ValueError) as exc:
            # HTTPError covers what the network does (refused, reset, timed out, a short or
            # garbled answer, TLS); OSError and ValueError what urllib3 lets through
            # unwrapped (a header value http.client refuses, ProxySchemeUnsupported). A
            # file that shrinks mid-upload arrives as ProtocolError('Connection aborted.').
            kind = "timed out" if timed_out(exc) else "failed"
            log.debug("%s %s %s after %.3f s", method, url, kind, time.monotonic() - started)
            # `from None` keeps the network layer's exception chain out of tracebacks.
            raise self._error(
                f"{what}: request {kind}, no answer from the API ({type(exc).__name__}: {exc})",
                status=None,
            ) from None
        log.debug(
            "%s %s: HTTP %d in %.3f s", method, url, response.status, time.monotonic() - started
        )
        return response

    def _check_status(
        self, response: urllib3.BaseHTTPResponse, what: str, also_ok: tuple[int, ...] = ()
    ) -> None:
        """Raise ApiError unless the answer is a 2xx or one of `also_ok`."""
        status = response.status
        if 200 <= status < 300 or status in also_ok:
            return
        if status < 400:
            raise self._error(f"{what}: unexpected HTTP {status} from the API", status=None)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        body = _load_json(response.data)
        if isinstance(body, dict) and ("detail" in body or "title" in body):
            raise self._error(
                f"{what}: HTTP {status}: {_describe_error(body)}",
                status=status,
                code=_text_or_none(body.get("code")),
                title=_text_or_none(body.get("title")),
                detail=_text_or_none(body.get("detail")),
                retry_after=retry_after,
            )
        kind = "non-JSON body" if body is None else "JSON body that is not an error object"
        snippet = _snippet(response.data)
        raise self._error(
            f"{what}: HTTP {status} from the API ({kind}{': ' + snippet if snippet else ''})",
            status=status,
            retry_after=retry_after,
        )

    def _json_object(self, response: urllib3.BaseHTTPResponse, what: str) -> dict[str, Any]:
        """Return the answer's body as a JSON object; raise a retryable ApiError if it is not."""
        body = _load_json(response.data)
        if not isinstance(body, dict):
            problem = "malformed JSON" if body is None else "JSON that is not an object"
            raise self._error(
                f"{what}: HTTP {response.status} with {problem} in the body", status=None
            )
        return body

    def _parse_job(self, payload: Mapping[str, Any], what: str) -> Job:
        """Turn a `{"job": {...}}` body into a Job; raise a retryable ApiError if malformed."""
        job = payload.get("job")
        if not isinstance(job, dict):
            raise self._error(f"{what}: the body has no job object", status=None)
        missing = [key for key in _JOB_KEYS if key not in job]
        if missing:
            raise self._error(f"{what}: the job lacks {', '.join(missing)}", status=None)
        job_id, status = job["id"], job["status"]
        if not isinstance(job_id, str) or not job_id:
            raise self._error(f"{what}: the job has no valid id", status=None)
        if status not in JOB_STATUSES:
            raise self._error(f"{what}: unknown job status {status!r}", status=None)
        return Job(
            id=job_id,
            status=status,
            result_url=_text_or_none(job["result_url"]),
            polling_url=_text_or_none(job["polling_url"]),
            alias=_text_or_none(job["alias"]),
            filename=_text_or_none(job["filename"]),
            error=self._job_error(job_id, job["error"]) if status == "Failed" else None,
        )

    def _job_error(self, job_id: str, error: Any) -> ApiError:
        """Build the ApiError of a Failed job from its error object."""
        if not isinstance(error, dict):
            # Nothing says the file is at fault, so another try is allowed.
            return self._error(f"job {job_id} failed without an error object", status=None)
        status = error.get("status")
        return self._error(
            f"job {job_id} failed: {_describe_error(error)}",
            status=status if isinstance(status, int) else None,
            code=_text_or_none(error.get("code")),
            title=_text_or_none(error.get("title")),
            detail=_text_or_none(error.get("detail")),
        )

    def _error(
        self,
        message: str,
        *,
        status: int | None,
        code: str | None = None,
        title: str | None = None,
        detail: str | None = None,
        retry_after: float | None = None,
    ) -> ApiError:
        """Build an ApiError whose texts cannot contain the API key."""
        return ApiError(
            self._scrub(message),
            status=status,
            code=code and self._scrub(code),
            title=title and self._scrub(title),
            detail=detail and self._scrub(detail),
            retry_after=retry_after,
        )

    def _scrub(self, text: str) -> str:
        key = self._api_key.reveal()
        return text.replace(key, "***") if key else text


# -- helpers ------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return the seconds a `Retry-After` header value asks to wait, or None.

    Takes delay-seconds or an HTTP date (compared with `now`, default the current time);
    returns at least 0; None for a missing or unreadable value.
    """
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(value.strip())
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _describe_error(error: Mapping[str, Any]) -> str:
    """Render an API error object: `Title [code]: detail (#/pointer: detail; ...)`."""
    title = _text_or_none(error.get("title")) or "API error"
    code = _text_or_none(error.get("code"))
    text = f"{title} [{code}]" if code else title
    detail = _text_or_none(error.get("detail"))
    if detail:
        text += f": {detail}"
    items = error.get("errors")
    if isinstance(items, list):
        details = [
            f"{item.get('pointer')}: {item.get('detail')}"
            if item.get("pointer")
            else str(item.get("detail"))
            for item in items
            if isinstance(item, dict)
        ]
        if details:
            text += f" ({'; '.join(details)})"
    return text


def _load_json(raw: bytes) -> Any:
    """Return the decoded JSON value of `raw`, or None if it is not JSON."""
    try:
        return json.loads(raw)
    except ValueError:  # also covers UnicodeDecodeError
        return None


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _snippet(raw: bytes) -> str:
    text = " ".join(raw.decode("utf-8", "replace").split())
    if len(text) > _SNIPPET_LENGTH:
        text = text[:_SNIPPET_LENGTH] + "..."
    return repr(text) if text else ""
