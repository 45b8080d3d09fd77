"""Reading the Mindee API's answers: jobs, JSON bodies, error objects, `Retry-After`.

Pure functions, no I/O; `mindee.py` builds its messages and `Job`s with them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from ocrwatchd.errors import ApiError

# A `Retry-After` longer than this is taken as this: a misconfigured proxy answering
# "come back in a week" must not park the work for a week.
RETRY_AFTER_CAP = 15 * 60.0
_SNIPPET_LENGTH = 120
JOB_STATUSES = frozenset({"Processing", "Processed", "Failed"})
# The job keys this client reads. The API sends more; those are not required, so that a
# harmless change to them cannot stop all work.
_JOB_KEYS = ("id", "status", "alias", "filename", "polling_url", "result_url", "error")


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
    # Seconds from created_at to completed_at by the API's own clock: how long the job
    # really took, whatever our polling schedule (None until it ended, or unreadable).
    duration: float | None = None


class ErrorMaker(Protocol):
    """Builds an ApiError whose texts are scrubbed of secrets (`MindeeClient._error`)."""

    def __call__(
        self,
        message: str,
        status: int | None,
        *,
        code: str | None = None,
        title: str | None = None,
        detail: str | None = None,
    ) -> ApiError: ...


def parse_job(payload: Mapping[str, Any], what: str, error: ErrorMaker) -> Job:
    """Turn a `{"job": {...}}` body into a Job; raise a retryable ApiError if malformed.

    `what` names the call in messages; `error` builds the ApiErrors.
    """
    job = payload.get("job")
    if not isinstance(job, dict):
        raise error(f"{what}: the body has no job object", None)
    missing = [key for key in _JOB_KEYS if key not in job]
    if missing:
        raise error(f"{what}: the job lacks {', '.join(missing)}", None)
    job_id, status = job["id"], job["status"]
    if not isinstance(job_id, str) or not job_id:
        raise error(f"{what}: the job has no valid id", None)
    if status not in JOB_STATUSES:
        raise error(f"{what}: unknown job status {status!r}", None)
    return Job(
        id=job_id,
        status=status,
        result_url=text_or_none(job["result_url"]),
        polling_url=text_or_none(job["polling_url"]),
        alias=text_or_none(job["alias"]),
        filename=text_or_none(job["filename"]),
        error=_job_error(job_id, job["error"], error) if status == "Failed" else None,
        duration=_duration(job.get("created_at"), job.get("completed_at")),
    )


def _duration(created: Any, completed: Any) -> float | None:
    """Seconds between two API timestamps (naive ones are UTC, as are those with Z)."""
    try:
        start, end = (_timestamp(value) for value in (created, completed))
    except (AttributeError, TypeError, ValueError):
        return None
    seconds = end - start
    return seconds if seconds >= 0 else None


def _timestamp(value: str) -> float:
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _job_error(job_id: str, body: Any, error: ErrorMaker) -> ApiError:
    """Build the ApiError of a Failed job from its error object."""
    if not isinstance(body, dict):
        # Nothing says the file is at fault, so another try is allowed.
        return error(f"job {job_id} failed without an error object", None)
    status = body.get("status")
    return error(
        f"job {job_id} failed: {describe_error(body)}",
        status if isinstance(status, int) else None,
        code=text_or_none(body.get("code")),
        title=text_or_none(body.get("title")),
        detail=text_or_none(body.get("detail")),
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return the seconds a `Retry-After` header value asks to wait, or None.

    Takes delay-seconds or an HTTP date (compared with `now`, default the current time);
    returns at least 0 and at most RETRY_AFTER_CAP (15 minutes); None for a missing or
    unreadable value.
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
    if math.isnan(seconds):
        return None
    return min(RETRY_AFTER_CAP, max(0.0, seconds))


def result_problem(body: bytes) -> str | None:
    """What is wrong with an OCR result body (not JSON, not an object, no `inference`
    object), or None when it is a well-formed result."""
    document = load_json(body)
    if not isinstance(document, dict):
        return "malformed JSON" if document is None else "JSON that is not an object"
    if not isinstance(document.get("inference"), dict):
        return "a JSON object without an inference object"
    return None


def describe_error(error: Mapping[str, Any]) -> str:
    """Render an API error object: `Title [code]: detail (#/pointer: detail; ...)`."""
    title = text_or_none(error.get("title")) or "API error"
    code = text_or_none(error.get("code"))
    text = f"{title} [{code}]" if code else title
    detail = text_or_none(error.get("detail"))
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


def load_json(raw: bytes) -> Any:
    """Return the decoded JSON value of `raw`, or None if it is not JSON."""
    try:
        return json.loads(raw)
    except ValueError:  # also covers UnicodeDecodeError
        return None


def text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def snippet(raw: bytes) -> str:
    """The start of a body, whitespace squeezed, quoted; "" for an empty body."""
    text = " ".join(raw.decode("utf-8", "replace").split())
    if len(text) > _SNIPPET_LENGTH:
        text = text[:_SNIPPET_LENGTH] + "..."
    return repr(text) if text else ""
