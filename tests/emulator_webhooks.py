"""Webhook deliveries of the Mindee emulator: when a job enqueued with `webhook_ids` ends,
POST its result, signed as Mindee signs it, to a receiver URL.

    with MindeeEmulator() as emu, WebhookSender(emu, "http://127.0.0.1:8787/", "s3cret") as hooks:
        emu.processing_seconds = 0.5
        ...
        hooks.wait_for(lambda h: len(h.deliveries) == 3)

`repeat` (1) sends each delivery that many times (a platform retrying, or a replay);
`delay` (0) adds seconds between a job's end and its delivery. A delivery that is not
answered 2xx is tried again (`attempts`, 3), like the platform does; a 2xx deletes the
result when the emulator's `delete_on_fetch` is on, as the real API does.
`deliveries` lists (job id, status or None, seconds the receiver took to answer).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit


def sign(secret: str, body: bytes) -> str:
    """The `X-Signature` of `body`: hex HMAC-SHA256 of the body without CR and LF bytes."""
    payload = body.replace(b"\r", b"").replace(b"\n", b"")
    return hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).hexdigest()


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 5.0) -> int:
    """POST `body` to `url`; return the status."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("POST", parts.path or "/", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


class WebhookSender:
    """Delivers the emulator's finished jobs to `url`, signed with `secret`."""

    def __init__(
        self,
        emulator: Any,
        url: str,
        secret: str,
        *,
        repeat: int = 1,
        delay: float = 0.0,
        attempts: int = 3,
    ) -> None:
        self.emulator, self.url, self.secret = emulator, url, secret
        self.repeat, self.delay, self.attempts = repeat, delay, attempts
        self.deliveries: list[tuple[str, int | None, float]] = []
        self._queue: list[tuple[float, int, str, int]] = []
        self._count = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)

    def __enter__(self) -> WebhookSender:
        self.emulator.webhooks = self
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.emulator.webhooks = None
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def schedule(self, job_id: str, ends_at: datetime) -> None:
        """Deliver the job's result when it ends (`ends_at`: naive UTC, as the emulator)."""
        seconds = (ends_at.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        self._push(time.monotonic() + max(0.0, seconds) + self.delay, job_id, self.attempts)

    def wait_for(self, predicate: Callable[[WebhookSender], bool], timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def _push(self, when: float, job_id: str, attempts: int) -> None:
        with self._cond:
            self._count += 1
            heapq.heappush(self._queue, (when, self._count, job_id, attempts))
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                    not self._queue or self._queue[0][0] > time.monotonic()
                ):
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(wait)
                if self._stopping:
                    return
                _, _, job_id, attempts = heapq.heappop(self._queue)
            self._deliver(job_id, attempts)

    def _deliver(self, job_id: str, attempts: int) -> None:
        body = self.emulator.complete(job_id)
        if body is None:
            return  # Failed (or deleted): the emulator delivers only results
        headers = {"Content-Type": "application/json", "X-Signature": sign(self.secret, body)}
        success = False
        for _ in range(self.repeat):
            started = time.monotonic()
            try:
                status: int | None = post(self.url, body, headers)
            except OSError:
                status = None
            with self._cond:
                self.deliveries.append((job_id, status, time.monotonic() - started))
                self._cond.notify_all()
            success = success or (status is not None and 200 <= status < 300)
        if success:
            self.emulator.delivered(job_id)
        elif attempts > 1:
            self._push(time.monotonic() + 0.2, job_id, attempts - 1)
