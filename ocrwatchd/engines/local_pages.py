"""Turn a document into pages of words: decode images, render PDFs, read PDF text layers.

Engine-independent: the OCR step is a callback given a greyscale page image and its
resolution. Boxes are relative to the page as displayed: EXIF orientation of photos and
the /Rotate of PDF pages are applied, as every viewer does.
"""

from __future__ import annotations

import ctypes
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from ocrwatchd.errors import FileRejected

logger = logging.getLogger(__name__)

RENDER_DPI = 300
HEIF_MISSING = "HEIC/HEIF needs the optional pillow-heif package: pip install 'ocrwatchd[heif]'"

_PILLOW_FORMATS = {
    "image/jpeg": ["JPEG"],
    "image/png": ["PNG"],
    "image/tiff": ["TIFF"],
    "image/webp": ["WEBP"],
    "image/heic": ["HEIF"],
    "image/heif": ["HEIF"],
}
# A page whose text layer is this short but which is mostly one picture is a scan with a
# stamped header or page number: OCR it rather than return the stamp alone.
_STAMP_CHARS = 50
_SCAN_COVERAGE = 0.5
# Device space for pdfium's page-to-device transform: integer output, so make it fine.
_DEVICE = 1_000_000


@dataclass(frozen=True)
class Word:
    """One word and its box (left, top, right, bottom), relative to the page (0..1)."""

    text: str
    box: tuple[float, float, float, float]


Line = list[Word]
Page = list[Line]
OcrPage = Callable[[Image.Image, float | None], Page]


@dataclass(frozen=True)
class Limits:
    """What one file may cost; each is the config key of the same name under `local:`."""

    # A0 at 300 dpi is 140 megapixels and needs about 1.5 GB to read; an ordinary page, 9.
    max_pixels_per_page: int = 100_000_000
    max_pages: int = 500
    max_seconds_per_file: float = 600.0


class Budget:
    """The limits of one file being read, and the deadline that started with its reading.

    Every refusal names the file, the limit and its config key, so that a user can tell a
    broken file from a limit set too low.
    """

    def __init__(
        self, path: Path, limits: Limits, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.limits = limits
        self._clock = clock
        self._deadline = clock() + limits.max_seconds_per_file

    def seconds_left(self) -> float:
        """Return the time left to read this file (negative once it has run out)."""
        return self._deadline - self._clock()

    def check_time(self) -> None:
        """Raise the time refusal once the file has taken its `max_seconds_per_file`."""
        if self.seconds_left() <= 0:
            raise self.overtime()

    def overtime(self) -> FileRejected:
        """Return the refusal of a file that took longer than `max_seconds_per_file`."""
        seconds = self.limits.max_seconds_per_file
        return FileRejected(
            f"{self.path.name} took more than {seconds:g} s to read, "
            f"over local.max_seconds_per_file ({seconds:g})"
        )

    def check_pages(self, count: int) -> None:
        """Raise `FileRejected` when a document of `count` pages is over `max_pages`."""
        if count > self.limits.max_pages:
            raise FileRejected(
                f"{self.path.name} has {count} pages, "
                f"over local.max_pages ({self.limits.max_pages})"
            )

    def check_pixels(self, size: tuple[int, int], what: str = "per page") -> None:
        """Raise `FileRejected` when an image of `size` pixels is over `max_pixels_per_page`."""
        width, height = size
        if width * height > self.limits.max_pixels_per_page:
            raise FileRejected(
                f"{self.path.name} is {width}\u00d7{height} = {width * height / 1e6:.0f} Mpx "
                f"{what}, over local.max_pixels_per_page ({self.limits.max_pixels_per_page})"
            )


def read_pages(
    path: Path, mime_type: str, ocr: OcrPage, budget: Budget | None = None
) -> list[Page]:
    """Read every page of the document at `path` (of type `mime_type`, as sniffed).

    Given `ocr`, called with a greyscale image and its resolution in dpi (None when the
    file does not say), for each page that needs OCR, and the file's `budget` (default
    limits when None). Returns one `Page` per page. Raises `FileRejected` when the
    document cannot be decoded or is over a limit; sizes and page counts are checked
    before anything is decoded, the time between pages.
    """
    budget = budget or Budget(path, Limits())
    if mime_type == "application/pdf":
        return _pdf_pages(path, ocr, budget)
    pages = []
    for image, dpi in _image_pages(path, mime_type, budget):
        pages.append(ocr(image, dpi))
        budget.check_time()
    return pages


def _image_pages(
    path: Path, mime_type: str, budget: Budget
) -> Iterator[tuple[Image.Image, float | None]]:
    """Yield (greyscale image, dpi or None) for each page: every frame of a TIFF, else one."""
    if mime_type in ("image/heic", "image/heif"):
        _register_heif()
    try:
        with warnings.catch_warnings():
            # The size is checked below against our own bound, with a clearer message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=_PILLOW_FORMATS[mime_type])
        with image:
            budget.check_pages(getattr(image, "n_frames", 1))
            frames = ImageSequence.Iterator(image) if mime_type == "image/tiff" else [image]
            for frame in frames:
                # Opening read only the header: nothing is decoded before this check.
                budget.check_pixels(frame.size)
                upright = ImageOps.exif_transpose(frame)
                yield _greyscale(upright), _plausible_dpi(frame.info.get("dpi"))
    except Image.DecompressionBombError as error:
        raise FileRejected(
            f"{path.name} is too large to decode safely ({error}); the limit is "
            f"local.max_pixels_per_page ({budget.limits.max_pixels_per_page})"
        ) from error
    except (FileNotFoundError, PermissionError):
        raise  # about the file's place, not its content: the caller decides
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        # Pillow reports truncated and corrupt data as OSError, SyntaxError or ValueError.
        raise FileRejected(f"{path.name} cannot be decoded as {mime_type}: {error}") from error


def _register_heif() -> None:
    """Make Pillow open HEIC/HEIF; raise `FileRejected` when pillow-heif is not installed."""
    try:
        import pillow_heif  # type: ignore[import-not-found,unused-ignore]
    except ImportError as error:
        raise FileRejected(HEIF_MISSING) from error
    if "HEIF" not in Image.OPEN:
        pillow_heif.register_heif_opener()


def _greyscale(image: Image.Image) -> Image.Image:
    """Return `image` as 8-bit greyscale, transparency flattened onto white."""
    if image.mode == "L":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # convert("L") clips 16-bit samples at 255: scale them down instead.
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return image.convert("L")


def _plausible_dpi(dpi: object) -> float | None:
    """Given Pillow's `info["dpi"]`, return the horizontal resolution if it is believable."""
    if isinstance(dpi, tuple) and dpi and isinstance(dpi[0], int | float):
        value = float(dpi[0])
        if 50 <= value <= 2400:
            return value
    return None


def _pdf_pages(path: Path, ocr: OcrPage, budget: Budget) -> list[Page]:
    """Read each page of a PDF from its text layer when it has one, else by OCR."""
    try:
        pdf = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as error:
        reason = str(error).removesuffix(".")
        if error.err_code == pdfium_c.FPDF_ERR_FILE:
            path.stat()  # raises FileNotFoundError when the file has gone
            raise OSError(f"{path}: {reason}") from error
        if error.err_code == pdfium_c.FPDF_ERR_PASSWORD:
            raise FileRejected(f"{path.name} is a password-protected PDF ({reason})") from error
        raise FileRejected(f"{path.name} cannot be read as a PDF: {reason}") from error
    try:
        budget.check_pages(len(pdf))
        pages = []
        for index in range(len(pdf)):
            page = pdf[index]
            try:
                pages.append(_pdf_page(page, ocr, budget))
            finally:
                page.close()
            logger.debug("%s page %d: %d lines", path.name, index + 1, len(pages[-1]))
            budget.check_time()
        return pages
    except pdfium.PdfiumError as error:
        raise FileRejected(f"{path.name}: a page cannot be read: {error}") from error
    finally:
        pdf.close()


def _pdf_page(page: pdfium.PdfPage, ocr: OcrPage, budget: Budget) -> Page:
    """Return the lines of one PDF page: from its text layer, or by rendering it for OCR."""
    if (
        pdfium_c.FPDFPage_CountObjects(page.raw) == 0
        and pdfium_c.FPDFPage_GetAnnotCount(page.raw) == 0
    ):
        return []  # nothing is drawn on it: no need to render a white page and OCR it
    textpage = page.get_textpage()
    try:
        lines = _text_layer(page, textpage)
    finally:
        textpage.close()
    if lines is not None:
        logger.debug("reading a PDF page from its text layer")
        return lines
    # pdfium decodes a picture whole to draw it, whatever size the page is rendered at.
    for picture in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=2):
        assert isinstance(picture, pdfium.PdfImage)
        try:
            size = picture.get_px_size()
        except pdfium.PdfiumError:
            continue  # a picture pdfium cannot size is one it will not draw either
        budget.check_pixels(size, "in a picture")
    width, height = page.get_size()
    scale = RENDER_DPI / 72
    # The resolution is ours to choose: huge page sizes (posters, broken MediaBoxes) are
    # rendered at a lower one rather than refused.
    most = budget.limits.max_pixels_per_page
    if width * height * scale * scale > most:
        scale = (most / (width * height)) ** 0.5
    bitmap = page.render(scale=scale, grayscale=True, may_draw_forms=True)
    try:
        image = bitmap.to_pil().convert("L")
    finally:
        bitmap.close()
    return ocr(image, scale * 72)


def _text_layer(page: pdfium.PdfPage, textpage: pdfium.PdfTextPage) -> Page | None:
    """Return the page's lines from its text layer, or None when the page needs OCR.

    None for: no text; text whose characters mostly lack a Unicode mapping (it would be
    garbage); a short text on a page mostly covered by one image (a stamped scan).
    """
    raw = textpage.raw
    count = textpage.count_chars()
    visible = [i for i in range(count) if not chr(pdfium_c.FPDFText_GetUnicode(raw, i)).isspace()]
    if not visible:
        return None
    unmapped = sum(
        1
        for i in visible
        if pdfium_c.FPDFText_HasUnicodeMapError(raw, i) == 1
        or pdfium_c.FPDFText_GetUnicode(raw, i) in (0, 0xFFFD, 0xFFFE)
    )
    if unmapped > 0.1 * len(visible):
        return None
    if len(visible) < _STAMP_CHARS and _image_coverage(page) >= _SCAN_COVERAGE:
        return None
    return _group_words(page, textpage, count)


def _image_coverage(page: pdfium.PdfPage) -> float:
    """Return the largest fraction of the page area covered by one image object."""
    width, height = page.get_size()
    largest = 0.0
    for image in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=2):
        left, bottom, right, top = image.get_bounds()
        largest = max(largest, (right - left) * (top - bottom) / (width * height))
    return min(largest, 1.0)


def _group_words(page: pdfium.PdfPage, textpage: pdfium.PdfTextPage, count: int) -> Page:
    """Group the text page's characters into words (at whitespace) and lines (at newlines).

    pdfium inserts generated spaces and line breaks where the layout implies them, so its
    character stream already carries the reading order the line grouping needs.
    """
    raw = textpage.raw
    lines: Page = []
    line: Line = []
    chars: list[str] = []
    box: list[float] = []  # left, bottom, right, top of the word so far, in PDF points
    rect = pdfium_c.FS_RECTF()
    for index in range(count):
        char = chr(pdfium_c.FPDFText_GetUnicode(raw, index))
        ends_line = char in "\r\n"
        if ends_line or char.isspace() or char == "\x00":
            if chars:
                line.append(Word("".join(chars), _relative_box(page, box)))
                chars, box = [], []
            if ends_line and line:
                lines.append(line)
                line = []
        elif pdfium_c.FPDFText_GetLooseCharBox(raw, index, rect):
            chars.append(char)
            if box:
                box = [
                    min(box[0], rect.left),
                    min(box[1], rect.bottom),
                    max(box[2], rect.right),
                    max(box[3], rect.top),
                ]
            else:
                box = [rect.left, rect.bottom, rect.right, rect.top]
    if chars:
        line.append(Word("".join(chars), _relative_box(page, box)))
    if line:
        lines.append(line)
    return lines


def _relative_box(page: pdfium.PdfPage, box: list[float]) -> tuple[float, float, float, float]:
    """Map a (left, bottom, right, top) box in PDF user space to a displayed relative box."""
    left, bottom, right, top = box
    xs, ys = [], []
    for x, y in ((left, bottom), (right, top)):
        device_x, device_y = ctypes.c_int(), ctypes.c_int()
        # Applies the crop box offset and the page's /Rotate, as rendering does.
        pdfium_c.FPDF_PageToDevice(page.raw, 0, 0, _DEVICE, _DEVICE, 0, x, y, device_x, device_y)
        xs.append(device_x.value / _DEVICE)
        ys.append(device_y.value / _DEVICE)
    return (min(xs), min(ys), max(xs), max(ys))
