"""HTTP plumbing for the Mindee client: the requests session set up once from the
environment, the streamed multipart upload body, bounded reads of an answer's body, the
origin rule for the API key, and what counts as a timeout.
"""

from __future__ import annotations

import mimetypes
import time
import uuid
from collections.abc import Sequence
from io import BytesIO
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

# Upload block size: urllib3's default, 16 KiB, takes four times the Python calls (and
# send() calls) to upload a large file.
_UPLOAD_BLOCK = 64 * 1024
# Body reads: one recv() at most per call, so the deadline is checked between them.
_READ_BLOCK = 256 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


class DeadlinePassed(TimeoutError):
    """The request's total deadline (`request_timeout`) passed while it was sent or read."""


class TooLarge(Exception):
    """An answer's body is longer than the limit the caller set; the message says so."""


class MultipartBody:
    """A multipart/form-data body that reads the file while it is being sent.

    Building the body in memory would hold the whole file there (twice, for a form
    encoder; requests' `files=` does); this object knows its length (sent as
    Content-Length) and has a `read()` that urllib3 calls once per block while it sends.
    Once `deadline` (a `time.monotonic()` value) has passed, `read()` raises
    DeadlinePassed, so a slow upload cannot outlast the request's total deadline.
    """

    def __init__(
        self,
        fields: Sequence[tuple[str, str]],
        filename: str,
        file: BinaryIO,
        size: int,
        *,
        deadline: float = float("inf"),
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
        self.deadline = deadline
        self._head = BytesIO(head)
        self._file = file
        self._file_left = size
        self._tail = BytesIO(f"\r\n--{boundary}--\r\n".encode("ascii"))
        self._length = len(head) + size + len(self._tail.getvalue())

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        """Return up to `size` bytes (all that is left if negative); b"" at the end.

        Raises OSError if the file is shorter than its size when the upload began,
        DeadlinePassed once the deadline has passed.
        """
        if time.monotonic() > self.deadline:
            raise DeadlinePassed("the upload took longer than request_timeout")
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


class _Adapter(HTTPAdapter):
    """requests' adapter with urllib3 sending uploads in 64 KiB blocks."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = _UPLOAD_BLOCK
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["blocksize"] = _UPLOAD_BLOCK
        return super().proxy_manager_for(proxy, **kwargs)


class ApiSession:
    """One `requests.Session` for the requests of one client to one base URL.

    The environment is read when it is made, once: the proxy for the base URL (`*_proxy`,
    `no_proxy`) and the CA bundle (`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`, else
    certifi's). The session then stops looking at it (`trust_env = False`): no proxy
    lookup per call, and ~/.netrc is never read, so it can never replace the API key.
    `proxies` and `verify` hold what was resolved; each request passes them explicitly,
    with `headers` (sent with every request).
    """

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self._session = requests.Session()
        self._adapter = _Adapter(max_retries=0)  # the caller retries, with backoff
        self._session.mount("https://", self._adapter)
        self._session.mount("http://", self._adapter)
        resolved = self._session.merge_environment_settings(base_url, {}, None, None, None)
        self._session.trust_env = False
        self._headers = headers
        self.proxies: dict[str, str] = dict(resolved["proxies"])
        verify = resolved["verify"]
        self.verify: bool | str = True if verify is None else verify

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: MultipartBody | None,
        timeout: tuple[float, float],
    ) -> requests.Response:
        """Send one request and return the answer with its body not read yet.

        Given the headers on top of the session's. The adapter is called directly, not
        `Session.send`: that reads the whole body of any redirect (the 302 of a Processed
        job) to prepare a next request, with no bound on its size or time, and this client
        never follows one. The request is prepared on its own, not merged with the
        session's settings: there are none to merge (no cookies, auth or params; the
        environment was read once), and the merge costs 0.15 ms of CPU a call.
        """
        prepared = requests.Request(
            method, url, headers={**self._headers, **headers}, data=body
        ).prepare()
        return self._adapter.send(
            prepared,
            stream=True,
            timeout=timeout,
            verify=self.verify,
            cert=None,
            proxies=self.proxies,
        )

    def close(self) -> None:
        """Close every pooled connection; the session stays usable (it reconnects)."""
        self._session.close()


def read_body(response: requests.Response, deadline: float, limit: int) -> bytes:
    """Return the whole (decoded) body of a streamed answer.

    Given the answer (sent with `stream=True`), a `time.monotonic()` deadline and the
    most bytes allowed. Each read waits at most until the deadline (the socket's
    timeout is set to what is left), so a server that sends its body one byte at a time
    cannot hold the call past it. Raises DeadlinePassed, TooLarge, or what urllib3
    raises for a broken connection; the connection is then closed, never reused.
    """
    raw = response.raw
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        response.close()
        raise TooLarge(f"the answer declares {int(declared)} bytes")
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlinePassed("the answer took longer than request_timeout")
            connection = raw.connection
            if connection is not None and connection.sock is not None:
                connection.sock.settimeout(left)
            chunk = raw.read1(_READ_BLOCK)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                raise TooLarge("the answer is longer than allowed")
            chunks.append(chunk)
    except BaseException:
        response.close()
        raise


def origin(url: str) -> tuple[str, str, int | None]:
    """Return the origin of an absolute URL: (scheme, host, port), the port made explicit.

    Raises ValueError for a port that is not a number.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def timed_out(exc: BaseException, depth: int = 0) -> bool:
    """Return whether `exc` (from requests or urllib3) means a timeout, not another failure.

    requests and urllib3 wrap the cause (a ConnectionError holds a MaxRetryError or a
    ProtocolError, which holds the socket's error), so the causes are looked at too.
    """
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        # A subclass of ConnectTimeoutError for history's sake: refused, unreachable, no DNS.
        return False
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return True
    causes = [*exc.args, getattr(exc, "reason", None)]
    return depth < 4 and any(
        timed_out(cause, depth + 1) for cause in causes if isinstance(cause, BaseException)
    )


def _part_header(boundary: str, disposition: str, *extra: str) -> bytes:
    lines = [f"--{boundary}", f"Content-Disposition: form-data; {disposition}", *extra, "", ""]
    return "\r\n".join(lines).encode("utf-8")


def _quote(value: str) -> str:
    # The HTML5 form encoding (also urllib3's): UTF-8 as is, only these three escaped.
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
