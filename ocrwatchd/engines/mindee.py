"""HTTP client for the Mindee API v2 OCR utility: enqueue a file, poll its job, fetch the result.

The contract is `API.md` of the project. One `MindeeClient` per thread: it owns one
`requests.Session` and has no lock. It makes exactly one HTTP request per call and never
retries: backoff, rate limits and job deadlines belong to the caller.

Every failure is raised as `ocrwatchd.errors.ApiError`:

- an error answer (4xx/5xx): `status`, `code`, `title`, `detail` come from the API's JSON
  error body; a body that is not one (an HTML page from a proxy, nothing, a truncated text)
  gives `HTTP 502 from the API (non-JSON body ...)`. `Retry-After` (seconds or an HTTP
  date) becomes `retry_after`.
- no usable answer: `status=None`, hence retryable. That covers network errors, timeouts,
  dropped connections, unexpected 1xx/3xx answers and a 2xx whose body is not the JSON the
  contract promises (malformed, truncated, or missing keys): such a body says the request
  went wrong on the way, not that the file is bad.

The API key lives in a `Secret`, is revealed only into the `Authorization` header, and is
scrubbed from every message built from what the server or the network layer says.
"""

from __future__ import annotations

import json
import logging
import math
import mimetypes
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin

import requests
import requests.auth

from ocrwatchd import __version__
from ocrwatchd.errors import ApiError
from ocrwatchd.secret import Secret

log = logging.getLogger(__name__)

USER_AGENT = f"ocrwatchd/{__version__} python-v{sys.version_info[0]}.{sys.version_info[1]} linux"

JOB_STATUSES = frozenset({"Processing", "Processed", "Failed"})
# The job keys this client reads. The API sends more; those are not required, so that a
# harmless change to them cannot stop all work.
_JOB_KEYS = ("id", "status", "alias", "filename", "polling_url", "result_url", "error")
_SNIPPET_LENGTH = 120


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


class MindeeClient:
    """Talks to one Mindee API v2 host with one API key.

    `base_url` is the host root without `/v2` (e.g. `https://api-v2.mindee.net`).
    `request_timeout` bounds each wait for the server's bytes (requests' read timeout),
    `connect_timeout` the TCP/TLS connect. A `session` passed in is used but not closed.
    """

    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        *,
        request_timeout: float,
        connect_timeout: float = 10,
        session: requests.Session | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._auth = _ApiKeyAuth(api_key)
        self._timeout = (connect_timeout, request_timeout)
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()

    def __repr__(self) -> str:
        return f"MindeeClient({self._base_url!r})"

    def __enter__(self) -> MindeeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session:
            self._session.close()

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
        Raises OSError if the file cannot be opened, ApiError for everything else.
        """
        fields = [("model_id", model_id), ("alias", alias), ("filename", filename)]
        fields += [("webhook_ids", webhook_id) for webhook_id in webhook_ids]
        with path.open("rb") as file:
            body = _MultipartBody(fields, filename, file, os.fstat(file.fileno()).st_size)
            response = self._request(
                "POST",
                f"{self._base_url}/v2/products/ocr/enqueue",
                "enqueue",
                data=body,
                headers={"Content-Type": body.content_type},
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
        response = self._request("GET", f"{self._base_url}/v2/jobs/{quote(job_id, safe='')}", what)
        self._check_status(response, what, also_ok=(302,))
        job = self._parse_job(self._json_object(response, what), what)
        if job.id.lower() != job_id.lower():
            raise self._error(f"{what}: the API answered about job {job.id}", status=None)
        if job.status == "Processed" and job.result_url is None:
            location = response.headers.get("Location")
            if not location:
                raise self._error(f"{what}: Processed without a result_url", status=None)
            job = replace(job, result_url=urljoin(response.url, location))
        return job

    def get_result(self, result_url: str) -> bytes:
        """Fetch `result_url` and return the body exactly as received.

        The body is checked to be a JSON object with an `inference` object. With "delete
        extracted data when fetched", this is the only chance to get it: store it at once.
        Raises ApiError (404 once the result is gone or expired).
        """
        response = self._request("GET", result_url, "result")
        self._check_status(response, "result")
        if not isinstance(self._json_object(response, "result").get("inference"), dict):
            raise self._error("result: the body has no inference object", status=None)
        return response.content

    # -- one request --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send one request; raise ApiError(status=None) if no answer arrives."""
        started = time.monotonic()
        try:
            response = self._session.request(
                method,
                url,
                data=data,
                headers={"User-Agent": USER_AGENT, **(headers or {})},
                auth=self._auth,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            kind = "timed out" if isinstance(exc, requests.Timeout) else "failed"
            log.debug("%s %s %s after %.3f s", method, url, kind, time.monotonic() - started)
            # `from None` keeps requests' exception, which holds the prepared request and so
            # the Authorization header, out of tracebacks.
            raise self._error(
                f"{what}: request {kind}, no answer from the API ({type(exc).__name__}: {exc})",
                status=None,
            ) from None
        log.debug(
            "%s %s: HTTP %d in %.3f s",
            method,
            url,
            response.status_code,
            time.monotonic() - started,
        )
        return response

    def _check_status(
        self, response: requests.Response, what: str, also_ok: tuple[int, ...] = ()
    ) -> None:
        """Raise ApiError unless the answer is a 2xx or one of `also_ok`."""
        status = response.status_code
        if 200 <= status < 300 or status in also_ok:
            return
        if status < 400:
            raise self._error(f"{what}: unexpected HTTP {status} from the API", status=None)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        body = _load_json(response.content)
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
        snippet = _snippet(response.content)
        raise self._error(
            f"{what}: HTTP {status} from the API ({kind}{': ' + snippet if snippet else ''})",
            status=status,
            retry_after=retry_after,
        )

    def _json_object(self, response: requests.Response, what: str) -> dict[str, Any]:
        """Return the answer's body as a JSON object; raise a retryable ApiError if it is not."""
        body = _load_json(response.content)
        if not isinstance(body, dict):
            problem = "malformed JSON" if body is None else "JSON that is not an object"
            raise self._error(
                f"{what}: HTTP {response.status_code} with {problem} in the body", status=None
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


class _ApiKeyAuth(requests.auth.AuthBase):
    """Puts the raw key in `Authorization` (no scheme), as the API wants.

    Being the request's `auth` also stops requests from replacing the header with
    credentials from ~/.netrc.
    """

    def __init__(self, api_key: Secret) -> None:
        self._api_key = api_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._api_key.reveal()
        return request


class _MultipartBody:
    """A multipart/form-data body that reads the file while it is being sent.

    requests' `files=` would hold the whole file in memory twice; this object has a length
    (so the request carries Content-Length) and a `read()` that urllib3 calls per block.
    """

    def __init__(
        self, fields: Sequence[tuple[str, str]], filename: str, file: BinaryIO, size: int
    ) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = b"".join(
            _part_header(boundary, f'name="{_quote(name)}"') + value.encode("utf-8") + b"\r\n"
            for name, value in fields
        )
        file_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        head += _part_header(
            boundary, f'name="file"; filename="{_quote(filename)}"', f"Content-Type: {file_type}"
        )
        self._head = BytesIO(head)
        self._file = file
        self._file_left = size
        self._tail = BytesIO(f"\r\n--{boundary}--\r\n".encode("ascii"))
        self._length = len(head) + size + len(self._tail.getvalue())

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        """Return up to `size` bytes (all that is left if negative); b"" at the end.

        Raises OSError if the file is shorter than its size when the upload began.
        """
        if size < 0:
            size = self._length
        out = bytearray(self._head.read(size))
        if len(out) < size and self._file_left:
            chunk = self._file.read(min(size - len(out), self._file_left))
            if not chunk:
                raise OSError("the file shrank while it was being uploaded")
            self._file_left -= len(chunk)
            out += chunk
        if len(out) < size and not self._file_left:
            out += self._tail.read(size - len(out))
        return bytes(out)


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


def _part_header(boundary: str, disposition: str, *extra: str) -> bytes:
    lines = [f"--{boundary}", f"Content-Disposition: form-data; {disposition}", *extra, "", ""]
    return "\r\n".join(lines).encode("utf-8")


def _quote(value: str) -> str:
    # The HTML5 form encoding (also urllib3's): UTF-8 as is, only these three escaped.
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


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
