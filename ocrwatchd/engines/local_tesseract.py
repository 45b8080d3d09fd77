"""One page image → lines of words, with Tesseract through tesserocr.

`Tesseract` holds one recognition instance (and, once needed, one orientation-detection
instance) for its lifetime: creating them loads the language models, which costs more
than reading a small page. Two corrections are made only when a page needs them, so an
ordinary page costs one plain Tesseract pass:

- small text (text lines under `MIN_LINE_PX` pixels high, as found by the layout analysis
  that recognition reuses) is upscaled towards `TARGET_LINE_PX`;
- a page read with a mean confidence under `OSD_BELOW_CONFIDENCE` is checked by
  orientation detection and, when it is rotated, read again upright; the boxes are
  mapped back onto the page as displayed.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ocrwatchd.engines.local_pages import Page, Word
from ocrwatchd.errors import EngineError

logger = logging.getLogger(__name__)

MIN_LINE_PX = 20
TARGET_LINE_PX = 32
MAX_UPSCALE = 4.0
MAX_UPSCALED_PIXELS = 60_000_000
OSD_BELOW_CONFIDENCE = 70.0
# Tesseract's own rule of thumb: an orientation confidence above 2 is to be trusted.
OSD_MIN_CONFIDENCE = 2.0
OSD_MIN_WORDS = 3
# Symbol-only "words" read with little confidence are rules, borders and scanner edges
# ("————", "=e=)"). Low confidence alone proves nothing: Sauvola-thresholded clean text
# can score under 15 and still be right.
SYMBOLS_BELOW_CONFIDENCE = 50.0
# A text line box spans ascenders to descenders: about 0.15 inch for 10-11 pt text.
_LINE_INCHES = 0.15
_DEFAULT_DPI = 300.0

_TRANSPOSE = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


class Tesseract:
    """A Tesseract instance for `languages` ("eng", "deu", ...) with data from `tessdata_dir`.

    `osd_dir` holds osd.traineddata; None disables orientation detection. Raises
    `EngineError` (not retryable) when Tesseract cannot load the language data. Not
    thread-safe: one per process (or per thread).
    """

    def __init__(self, languages: Sequence[str], tessdata_dir: Path, osd_dir: Path | None) -> None:
        # Imported here, not at module level, so that a worker process sets
        # OMP_THREAD_LIMIT before libtesseract (and any OpenMP runtime) is loaded.
        import tesserocr

        # Leptonica logs harmless complaints about boxes at page edges to stderr.
        tesserocr.set_leptonica_log_level(tesserocr.LeptLogLevel.NONE)
        self._tesserocr: Any = tesserocr
        self._osd_dir = osd_dir
        self._osd: Any = None
        self._deadline: float | None = None
        self._api: Any = self._create(tessdata_dir, "+".join(languages), tesserocr.PSM.AUTO)

    def _create(self, data_dir: Path, lang: str, psm: int) -> Any:
        """Return an initialised PyTessBaseAPI; raise `EngineError` when Tesseract refuses."""
        tesserocr = self._tesserocr
        # osd.traineddata is a legacy (non-LSTM) model; recognition uses the LSTM models.
        oem = tesserocr.OEM.TESSERACT_ONLY if lang == "osd" else tesserocr.OEM.LSTM_ONLY
        try:
            api = tesserocr.PyTessBaseAPI(path=f"{data_dir}/", lang=lang, psm=psm, oem=oem)
        except RuntimeError as error:
            raise EngineError(
                f"Tesseract cannot load {lang!r} from {data_dir}: {error}", retryable=False
            ) from error
        # Tesseract prints diagnostics ("Estimating resolution", "Empty page") to stderr.
        api.SetVariable("debug_file", "/dev/null")
        # Sauvola's local thresholds read photographed pages with uneven light far better
        # than the global Otsu default, for about 5 % more time.
        api.SetVariable("thresholding_method", "2")
        return api

    def close(self) -> None:
        """Free the Tesseract instances."""
        for api in (self._api, self._osd):
            if api is not None:
                api.End()
        self._osd = None

    def __enter__(self) -> Tesseract:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read(self, image: Image.Image, dpi: float | None, deadline: float | None = None) -> Page:
        """Recognise a greyscale page image whose resolution is `dpi` (None: unknown).

        Returns its lines of words, boxes relative to `image`, in reading order. With a
        `deadline` (on the `time.monotonic` clock), recognition stops there and raises
        `EngineError`.
        """
        self._deadline = deadline
        api = self._api
        api.SetImage(image)
        api.SetSourceResolution(round(dpi or _DEFAULT_DPI))
        heights = self._line_heights()
        scale = _upscale_factor(heights, image.size)
        if scale > 1:
            logger.debug("upscaling %dx%d by %.2f", image.width, image.height, scale)
            size = (round(image.width * scale), round(image.height * scale))
            image = image.resize(size, Image.Resampling.LANCZOS)
            api.SetImage(image)
        resolution = _resolution(dpi, heights, scale)
        api.SetSourceResolution(resolution)
        lines, confidence, words = self._recognise(image.size)
        if confidence < OSD_BELOW_CONFIDENCE and words >= OSD_MIN_WORDS:
            lines = self._read_upright(image, resolution, lines, confidence)
        return lines

    def _line_heights(self) -> list[int]:
        """Run layout analysis on the current image; return the text line heights in pixels."""
        iterator = self._api.AnalyseLayout()
        if iterator is None:
            return []
        level = self._tesserocr.RIL.TEXTLINE
        heights = []
        for line in self._tesserocr.iterate_level(iterator, level):
            box = line.BoundingBox(level)
            if box is not None and box[3] - box[1] >= 4:
                heights.append(box[3] - box[1])
        return heights

    def _recognise(self, size: tuple[int, int]) -> tuple[Page, float, int]:
        """Recognise the current image of `size` pixels.

        Returns (lines, mean word confidence 0..100, word count).
        """
        api, tesserocr = self._api, self._tesserocr
        if self._deadline is None:
            recognised = api.Recognize()
        else:
            # Tesseract checks its own clock as it goes: the one bound on a page's time.
            left = max(1, round((self._deadline - time.monotonic()) * 1000))
            recognised = api.Recognize(timeout=left)
        if not recognised:
            raise EngineError("Tesseract failed to recognise the page", retryable=False)
        iterator = api.GetIterator()
        lines: Page = []
        confidences: list[float] = []
        if iterator is None:
            return lines, 0.0, 0
        width, height = size
        word_level, line_level = tesserocr.RIL.WORD, tesserocr.RIL.TEXTLINE
        for word in tesserocr.iterate_level(iterator, word_level):
            if not lines or word.IsAtBeginningOf(line_level):
                lines.append([])
            try:
                text = word.GetUTF8Text(word_level).strip()
            except RuntimeError:  # tesserocr's way of saying "no word here" (a blank page)
                continue
            box = word.BoundingBox(word_level)
            if not text or box is None:
                continue
            confidence = word.Confidence(word_level)
            # Noise counts here: a page read sideways is mostly noise of low confidence.
            confidences.append(confidence)
            if _is_noise(text, confidence):
                continue
            left, top, right, bottom = box
            lines[-1].append(
                Word(text, (left / width, top / height, right / width, bottom / height))
            )
        lines = [line for line in lines if line]
        mean = statistics.fmean(confidences) if confidences else 0.0
        return lines, mean, len(confidences)

    def _read_upright(
        self, image: Image.Image, resolution: int, lines: Page, confidence: float
    ) -> Page:
        """Detect the page's orientation; if rotated, read it upright and keep the better read."""
        rotation = self._orientation(image, resolution)
        if rotation == 0:
            return lines
        turned = image.transpose(_TRANSPOSE[rotation])
        self._api.SetImage(turned)
        self._api.SetSourceResolution(resolution)
        upright, upright_confidence, _ = self._recognise(turned.size)
        logger.debug(
            "page turned by %d degrees: confidence %.0f -> %.0f",
            rotation,
            confidence,
            upright_confidence,
        )
        if upright_confidence <= confidence:
            return lines
        return [[_unrotate(word, rotation) for word in line] for line in upright]

    def _orientation(self, image: Image.Image, resolution: int) -> int:
        """Return how far (0, 90, 180, 270 degrees anticlockwise) to turn `image` upright."""
        if self._osd_dir is None:
            return 0
        if self._osd is None:
            self._osd = self._create(self._osd_dir, "osd", self._tesserocr.PSM.OSD_ONLY)
        self._osd.SetImage(image)
        self._osd.SetSourceResolution(resolution)
        try:
            result = self._osd.DetectOrientationScript()
        except RuntimeError:  # too few characters to decide
            return 0
        if not result or result["orient_conf"] < OSD_MIN_CONFIDENCE:
            return 0
        # orient_deg is the page's clockwise rotation: turning it back is anticlockwise.
        return int(result["orient_deg"]) % 360


def _is_noise(text: str, confidence: float) -> bool:
    """True for what Tesseract reads into page edges, rules and specks, not for words."""
    return confidence < SYMBOLS_BELOW_CONFIDENCE and not any(char.isalnum() for char in text)


def _upscale_factor(heights: list[int], size: tuple[int, int]) -> float:
    """Given text line heights and the image size, return the factor to upscale by (>= 1)."""
    if not heights:
        return 1.0
    median = statistics.median(heights)
    if median >= MIN_LINE_PX:
        return 1.0
    width, height = size
    bound = (MAX_UPSCALED_PIXELS / (width * height)) ** 0.5
    return max(1.0, min(TARGET_LINE_PX / median, MAX_UPSCALE, bound))


def _resolution(dpi: float | None, heights: list[int], scale: float) -> int:
    """Return the resolution to tell Tesseract: the file's, else one guessed from line heights."""
    if dpi is not None:
        return round(dpi * scale)
    if heights:
        return round(min(1200.0, max(70.0, statistics.median(heights) * scale / _LINE_INCHES)))
    return round(_DEFAULT_DPI * scale)


def _unrotate(word: Word, rotation: int) -> Word:
    """Map a word boxed on the page turned `rotation` degrees anticlockwise back onto the page."""
    left, top, right, bottom = word.box
    if rotation == 90:
        box = (1 - bottom, left, 1 - top, right)
    elif rotation == 180:
        box = (1 - right, 1 - bottom, 1 - left, 1 - top)
    else:
        box = (top, 1 - right, bottom, 1 - left)
    return Word(word.text, box)
