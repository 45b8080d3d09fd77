"""Exit codes and the exception tree.

Only `ocrwatchd.cli.main` turns exceptions into exit codes; everything else raises.
Exceptions that concern one file (`FileRejected`) end that file as failed and never stop
the daemon. `EngineError.retryable` tells the workers whether trying again can help.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """sysexits(3) values used by the command line."""

    OK = 0
    FAILURES = 1
    USAGE = 64
    UNAVAILABLE = 69
    SOFTWARE = 70
    CANTCREAT = 73
    TEMPFAIL = 75
    CONFIG = 78
    INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class OcrwatchdError(Exception):
    """Base of every error ocrwatchd raises on purpose."""

    exit_code: ExitCode = ExitCode.SOFTWARE


class ConfigError(OcrwatchdError):
    """The config has problems; `problems` holds every one as `FILE:LINE:COL: key: message`."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StateError(OcrwatchdError):
    """The state directory, ledger or an outbox cannot be created or written."""

    exit_code = ExitCode.CANTCREAT


class FileRejected(OcrwatchdError):
    """This file can never be OCR'd as it is (too large, unsupported type, encrypted, broken).

    The message is the reason shown to the user; the file ends `failed`.
    """

    exit_code = ExitCode.FAILURES


class EngineError(OcrwatchdError):
    """An OCR engine could not finish a file this time.

    `retryable` is true when the same request may succeed later (network trouble, 429, 5xx,
    a crashed worker); false when only a changed file or config can help.
    """

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ApiError(EngineError):
    """An error answer (or no answer) from the Mindee API.

    `status` is the HTTP status (None for network errors), `code` the API's `NNN-NNN` code,
    `detail` its human sentence. `pauses_work` marks 401/402/403: the account, not the file,
    is the problem, so work stops until the config changes.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        code: str | None = None,
        title: str | None = None,
        detail: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        retryable = status is None or status == 429 or status >= 500
        super().__init__(message, retryable=retryable)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.retry_after = retry_after

    @property
    def pauses_work(self) -> bool:
        return self.status in (401, 402, 403)
