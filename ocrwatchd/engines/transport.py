"""HTTP plumbing for the Mindee client: the urllib3 pool with the environment's proxy and
CA settings, the streamed multipart upload body, and what counts as a timeout.

requests did these for us; `mindee.py` says why the client runs on urllib3 instead.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import mimetypes
import os
import re
import urllib.request
import uuid
from collections.abc import Sequence
from io import BytesIO
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.util import make_headers, parse_url

# A `no_proxy` entry naming a port.
_HOST_PORT = re.compile(r"(.+):(\d+)")
# Upload block size: urllib3's default, 16 KiB, takes four times the Python calls (and
# send() calls) to upload a large file.
_UPLOAD_BLOCK = 64 * 1024


class MultipartBody:
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


class UnusableProxy(Exception):
    """The environment names a proxy for the API that cannot be used; the message says why."""


def pool_manager(base_url: str, timeout: urllib3.Timeout) -> urllib3.PoolManager:
    """Return the connection pool for requests to `base_url`, set up from the environment.

    Given the API's base URL and the timeouts. Returns a `PoolManager`, or a
    `ProxyManager` (a `SOCKSProxyManager` for socks URLs) when the environment names a
    proxy for that URL; the proxy is used for every URL the client fetches.
    Raises UnusableProxy if that proxy cannot be used (its password never in the message).
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
        raise UnusableProxy("the proxy URL in the environment is malformed") from None
    shown = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
    scheme = (url.scheme or "").lower()
    try:
        if scheme.startswith("socks"):
            if importlib.util.find_spec("socks") is None:
                raise UnusableProxy(f"the proxy {shown} needs PySocks, which is not installed")
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
        raise UnusableProxy(f"the proxy {shown} cannot be used ({type(exc).__name__})") from None


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


def timed_out(exc: Exception) -> bool:
    """Return whether `exc` (from urllib3) means a timeout rather than another failure."""
    if isinstance(exc, NewConnectionError):
        # A subclass of ConnectTimeoutError for history's sake: refused, unreachable, no DNS.
        return False
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return True
    # e.g. ProtocolError('Connection aborted.', TimeoutError('timed out')) while uploading.
    return any(isinstance(arg, TimeoutError) for arg in exc.args)


def _part_header(boundary: str, disposition: str, *extra: str) -> bytes:
    lines = [f"--{boundary}", f"Content-Disposition: form-data; {disposition}", *extra, "", ""]
    return "\r\n".join(lines).encode("utf-8")


def _quote(value: str) -> str:
    # The HTML5 form encoding (also urllib3's): UTF-8 as is, only these three escaped.
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
