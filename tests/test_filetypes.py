"""Recognising files by content: every fixture, and each reason to refuse a file."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from ocrwatchd.errors import FileRejected
from ocrwatchd.filetypes import MAX_BYTES, FileKind, sniff
from tests.helpers import FIXTURES

FILE_TYPES = FIXTURES / "file_types"

ACCEPTED = {
    "blank.pdf": "application/pdf",
    "broken_fixable.pdf": "application/pdf",
    "broken_invoice.pdf": "application/pdf",
    # No %PDF header at all, but objects and an %%EOF: a PDF to the user; whether it can
    # be read is the engine's (or the API's) decision.
    "broken_unfixable.pdf": "application/pdf",
    "valid_exported.pdf": "application/pdf",
    "multipage.pdf": "application/pdf",
    "not_blank_image_only.pdf": "application/pdf",
    "receipt.heic": "image/heic",
    "receipt.jpg": "image/jpeg",
    "receipt.png": "image/png",
    "receipt.tif": "image/tiff",
    "receipt.webp": "image/webp",
}
REJECTED = {
    "receipt.txt": "not a supported file type (it looks like plain text)",
    "XfaForm_15p_encrypted.pdf": "password-protected (encrypted) PDF",
}


def test_every_fixture_is_either_accepted_or_rejected_with_its_reason() -> None:
    names = {path.name for path in FILE_TYPES.iterdir()}
    assert names == set(ACCEPTED) | set(REJECTED)


@pytest.mark.parametrize(("name", "mime_type"), sorted(ACCEPTED.items()))
def test_fixture_accepted(name: str, mime_type: str) -> None:
    assert sniff(FILE_TYPES / name) == FileKind(mime_type)


@pytest.mark.parametrize(("name", "reason"), sorted(REJECTED.items()))
def test_fixture_rejected(name: str, reason: str) -> None:
    with pytest.raises(FileRejected, match=reason.replace("(", r"\(").replace(")", r"\)")):
        sniff(FILE_TYPES / name)


def test_content_decides_not_the_extension(tmp_path: Path) -> None:
    disguised = tmp_path / "scan.pdf"
    disguised.write_bytes((FILE_TYPES / "receipt.jpg").read_bytes())
    assert sniff(disguised).mime_type == "image/jpeg"
    notes = tmp_path / "notes.png"
    notes.write_text("meeting notes\n", encoding="utf-8")
    with pytest.raises(FileRejected, match="plain text"):
        sniff(notes)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(FileRejected, match="empty"):
        sniff(path)


def test_file_over_100_mb_names_its_size(tmp_path: Path) -> None:
    path = tmp_path / "huge.pdf"
    with path.open("wb") as handle:
        handle.write(b"%PDF-1.7\n")
        handle.truncate(MAX_BYTES + 5 * 1024 * 1024)  # sparse: no disk space used
    with pytest.raises(FileRejected, match=r"105\.0 MB; the limit is 100 MB"):
        sniff(path)


def test_exactly_100_mb_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    with path.open("wb") as handle:
        handle.write(b"II*\x00")
        handle.truncate(MAX_BYTES)
    assert sniff(path).mime_type == "image/tiff"


def test_animated_png_is_refused_and_still_png_accepted(tmp_path: Path) -> None:
    frames = [Image.new("L", (8, 8), shade) for shade in (0, 255)]
    animated = tmp_path / "animated.png"
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    with pytest.raises(FileRejected, match="animated PNG"):
        sniff(animated)
    still = tmp_path / "still.png"
    frames[0].save(still)
    assert sniff(still).mime_type == "image/png"


@pytest.mark.parametrize(
    ("head", "looks_like"),
    [
        (b"PK\x03\x04\x14\x00\x06\x00", "ZIP archive"),
        (b"GIF89a\x01\x00\x01\x00", "GIF image"),
        (b"\x1f\x8b\x08\x00", "gzip archive"),
        (b"<!DOCTYPE html><html>", "HTML page"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "AVIF image"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", "MP4"),
        (bytes(range(256)), "not recognised"),
    ],
)
def test_unsupported_types_say_what_they_look_like(
    tmp_path: Path, head: bytes, looks_like: str
) -> None:
    path = tmp_path / "upload.jpg"
    path.write_bytes(head + bytes(64))
    with pytest.raises(FileRejected, match=looks_like) as caught:
        sniff(path)
    assert "supported: PDF, JPEG, PNG, TIFF, WebP, HEIC/HEIF" in str(caught.value)


def test_heif_brands(tmp_path: Path) -> None:
    heic_in_mif1 = b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic"
    plain_heif = b"\x00\x00\x00\x14ftypmif1\x00\x00\x00\x00mif1"
    for head, expected in ((heic_in_mif1, "image/heic"), (plain_heif, "image/heif")):
        path = tmp_path / "photo"
        path.write_bytes(head + bytes(32))
        assert sniff(path).mime_type == expected


def _pdf(trailer_extra: str = "", filler: int = 0, xref_stream: bool = False) -> bytes:
    """A small PDF with a `filler`-byte stream; `trailer_extra` goes into the trailer.

    With `xref_stream`, the trailer is a cross-reference stream whose own data (`filler`
    bytes) follows its dictionary: that dictionary is then neither near the start nor near
    the end of the file, and only following `startxref` finds it.
    """
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n")
    out.write(b"2 0 obj\n<< /Length %d >>\nstream\n" % filler + os.urandom(filler))
    out.write(b"\nendstream\nendobj\n")
    offset = out.tell()
    if xref_stream:
        out.write(f"3 0 obj\n<< /Type /XRef /Size 4 /Root 1 0 R {trailer_extra} ".encode())
        out.write(f"/Length {filler} >>\nstream\n".encode() + os.urandom(filler))
        out.write(b"\nendstream\nendobj\n")
    else:
        out.write(b"xref\n0 3\n0000000000 65535 f \n")
        out.write(f"trailer\n<< /Size 3 /Root 1 0 R {trailer_extra} >>\n".encode())
    out.write(f"startxref\n{offset}\n%%EOF\n".encode())
    return out.getvalue()


@pytest.mark.parametrize("xref_stream", [False, True], ids=["trailer", "xref-stream"])
def test_encrypted_pdf_found_cheaply(tmp_path: Path, xref_stream: bool) -> None:
    path = tmp_path / "locked.pdf"
    path.write_bytes(_pdf("/Encrypt 5 0 R", filler=200_000, xref_stream=xref_stream))
    with pytest.raises(FileRejected, match="password-protected"):
        sniff(path)
    path.write_bytes(_pdf("", filler=200_000, xref_stream=xref_stream))
    assert sniff(path).mime_type == "application/pdf"


def test_pdf_header_after_junk_is_still_a_pdf(tmp_path: Path) -> None:
    path = tmp_path / "from-a-mail-gateway.pdf"
    path.write_bytes(b"Content-Type: application/pdf\r\n\r\n" + _pdf())
    assert sniff(path).mime_type == "application/pdf"


def test_missing_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sniff(tmp_path / "gone.pdf")
