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

import importlib.util
import ipaddress
import json
import logging
import math
import mimetypes
import os
import re
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.util import make_headers, parse_url

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
# Sent with every request, as requests did: compressed answers are welcome (urllib3
# decodes them), and any media type is accepted (the body is checked instead).
_BASE_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept-Encoding": make_headers(accept_encoding=True)["accept-encoding"],
    "Accept": "*/*",
}
# A `no_proxy` entry naming a port.
_HOST_PORT = re.compile(r"(.+):(\d+)")
# Upload block size: urllib3's default, 16 KiB, takes four times the Python calls (and
# send() calls) to upload a large file.
_UPLOAD_BLOCK = 64 * 1024


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
            self._pool = _pool_manager(self._base_url, timeout)
        except _UnusableProxy as exc:
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
            body = _MultipartBody(fields, filename, file, os.fstat(file.fileno()).st_size)
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
        body: _MultipartBody | None = None,
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
            kind = "timed out" if _timed_out(exc) else "failed"
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


class _MultipartBody:
    """A multipart/form-data body that reads the file while it is being sent.

    Building the body in memory would hold the whole file there (twice, for a form
    encoder); this object knows its length (sent as Content-Length) and has a `read()`
    that urllib3 calls once per block while it sends.
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


# -- the connection pool ----------------------------------------------------------------------


class _UnusableProxy(Exception):
    """The environment names a proxy for the API that cannot be used; the message says why."""


def _pool_manager(base_url: str, timeout: urllib3.Timeout) -> urllib3.PoolManager:
    """Return the connection pool for requests to `base_url`, set up from the environment.

    Given the API's base URL and the timeouts. Returns a `PoolManager`, or a
    `ProxyManager` (a `SOCKSProxyManager` for socks URLs) when the environment names a
    proxy for that URL; the proxy is used for every URL the client fetches.
    Raises _UnusableProxy if that proxy cannot be used (its password never in the message).
    """
    settings: dict[str, Any] = {
        "timeout": timeout,
        "retries": False,
        "cert_reqs": "CERT_REQUIRED",
        "blocksize": _UPLOAD_BLOCK,
        **_ca_settings(),
    }
    proxy = _proxy_for(base_url)
    if proxy is None:
        return urllib3.PoolManager(**settings)
    try:
        url = parse_url(proxy)
    except HTTPError:
        raise _UnusableProxy("the proxy URL in the environment is malformed") from None
    shown = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
    scheme = (url.scheme or "").lower()
    try:
        if scheme.startswith("socks"):
            if importlib.util.find_spec("socks") is None:
                raise _UnusableProxy(f"the proxy {shown} needs PySocks, which is not installed")
            from urllib3.contrib.socks import SOCKSProxyManager

            return SOCKSProxyManager(proxy, **settings)  # takes the credentials from the URL
        proxy_headers: dict[str, str] = {}
        if url.auth:
            # As requests did: the URL's user and password, percent-decoded, in Basic auth.
            user, _, password = url.auth.partition(":")
            proxy_headers = make_headers(proxy_basic_auth=f"{unquote(user)}:{unquote(password)}")
        return urllib3.ProxyManager(proxy, proxy_headers=proxy_headers, **settings)
    except (HTTPError, ValueError) as exc:
        # Not str(exc): urllib3 puts the whole URL, password included, in some messages.
        raise _UnusableProxy(f"the proxy {shown} cannot be used ({type(exc).__name__})") from None


def _ca_settings() -> dict[str, str]:
    """Return the urllib3 keywords naming the CA certificates that verify the API's TLS.

    The first of $REQUESTS_CA_BUNDLE, $SSL_CERT_FILE, $CURL_CA_BUNDLE that is set (a file,
    or a directory of hashed certificates), else certifi's bundle, else nothing: the
    system's default store.
    """
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        value = os.environ.get(name)
        if value:
            return {"ca_cert_dir": value} if os.path.isdir(value) else {"ca_certs": value}
    try:
        import certifi
    except ImportError:
        return {}
    return {"ca_certs": certifi.where()}


def _proxy_for(url: str) -> str | None:
    """Return the proxy URL the environment sets for `url`, or None for a direct connection.

    Reads `<scheme>_proxy`, then `all_proxy` (either case; the lower-case one wins), unless
    `no_proxy` excludes the URL's host. A proxy given without a scheme is taken as http.
    """
    proxies = urllib.request.getproxies()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return None
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:  # not a port: the requests will fail on their own
        port = None
    if _excluded_from_proxy(parts.hostname or "", port, proxies.get("no", "")):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _excluded_from_proxy(host: str, port: int | None, no_proxy: str) -> bool:
    """Return whether the comma-separated `no_proxy` list excludes `host` (on `port`).

    Entries, as curl, requests and urllib take them: `*` (every host); a domain, with or
    without a leading dot, matching itself and its subdomains; an IP address or CIDR
    network; any of these but `*` followed by `:port` to exclude that port only.
    """
    host = host.lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.lower().split(","):
        entry = entry.strip()
        if entry == "*":
            return True
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            pass
        else:
            if address is not None and address in network:
                return True
            continue
        name, entry_port = entry, None
        if match := _HOST_PORT.fullmatch(entry):
            name, entry_port = match[1], int(match[2])
        if entry_port is not None and entry_port != port:
            continue
        name = name.strip("[]").lstrip(".")
        if address is not None:
            try:
                if ipaddress.ip_address(name) == address:
                    return True
            except ValueError:
                pass
        elif host == name or host.endswith(f".{name}"):
            return True
    return False


def _timed_out(exc: Exception) -> bool:
    """Return whether `exc` (from urllib3) means a timeout rather than another failure."""
    if isinstance(exc, NewConnectionError):
        # A subclass of ConnectTimeoutError for history's sake: refused, unreachable, no DNS.
        return False
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return True
    # e.g. ProtocolError('Connection aborted.', TimeoutError('timed out')) while uploading.
    return any(isinstance(arg, TimeoutError) for arg in exc.args)


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
