"""Recognise a file's type from its content, before any upload or OCR.

`sniff` reads a few kilobytes (plus, for PDFs, the tail and the cross-reference section)
and either names one of the types the Mindee API accepts or raises `FileRejected` with a
sentence a user understands. It never trusts the file name's extension: a scanner that
writes `scan.pdf` full of JPEG data still works, and `notes.txt.pdf` is refused early.
"""

from __future__ import annotations

import codecs
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ocrwatchd.errors import FileRejected

logger = logging.getLogger(__name__)

MAX_BYTES = 100 * 1024 * 1024

SUPPORTED = "PDF, JPEG, PNG, TIFF, WebP, HEIC/HEIF"

# Acrobat accepts a PDF header anywhere in the first 1024 bytes; pdfium does the same.
_PDF_HEADER_WINDOW = 1024
# The trailer (or the start of a cross-reference stream) sits within this many bytes of
# the end in every writer we know; `startxref` points at it when it does not.
_PDF_TAIL = 64 * 1024
_PDF_XREF_WINDOW = 16 * 1024
_ENCRYPT = re.compile(rb"/Encrypt[\s\x00]*(?:\d+[\s\x00]+\d+[\s\x00]+R|<<)")
_STARTXREF = re.compile(rb"startxref[\s\x00]+(\d+)")
_PDF_OBJECT = re.compile(rb"(?:^|[\r\n])\d+[ \t]+\d+[ \t]+obj\b")

_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_HEIF_BRANDS = {b"mif1", b"msf1", b"heif", b"mif2"}

# Types the API refuses, named so that the user learns what the file looks like.
_LOOKALIKES: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office document"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 image"),
    (b"%!PS", "a PostScript file"),
    (b"{\\rtf", "an RTF document"),
    (b"\x7fELF", "a program (ELF executable)"),
    (b"ID3", "an MP3 audio file"),
    (b"8BPS", "a Photoshop document"),
)


@dataclass(frozen=True)
class FileKind:
    """What `sniff` recognised: the MIME type the Mindee API expects for this file."""

    mime_type: str


def sniff(path: Path) -> FileKind:
    """Recognise the type of the file at `path` by its content.

    Given: a path to a regular file. Returns: its `FileKind`. Raises `FileRejected` when the
    file is empty, larger than `MAX_BYTES`, of a type the API does not take, an animated
    PNG, or a password-protected PDF; `OSError` when it cannot be read at all.
    """
    size = path.stat().st_size
    if size == 0:
        raise FileRejected(f"{path.name} is empty (0 bytes)")
    if size > MAX_BYTES:
        raise FileRejected(
            f"{path.name} is {size / 1024 / 1024:.1f} MB; the limit is "
            f"{MAX_BYTES // 1024 // 1024} MB per file"
        )
    with path.open("rb") as handle:
        head = handle.read(4096)
        kind = _image_kind(head)
        if kind == "image/png" and _png_is_animated(handle):
            raise FileRejected(f"{path.name} is an animated PNG, which the OCR API does not accept")
        if kind is None and _looks_like_pdf(head, handle, size):
            if _pdf_is_encrypted(head, handle, size):
                raise FileRejected(
                    f"{path.name} is a password-protected (encrypted) PDF; "
                    "save an unprotected copy to OCR it"
                )
            kind = "application/pdf"
    if kind is None:
        raise FileRejected(
            f"{path.name} is not a supported file type ({_describe(head)}); supported: {SUPPORTED}"
        )
    logger.debug("sniffed %s as %s", path, kind)
    return FileKind(kind)


def _image_kind(head: bytes) -> str | None:
    """Given the first bytes of a file, return the MIME type of a supported image, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    # Classic TIFF (42) and BigTIFF (43), both byte orders.
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image/tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return _heif_kind(head)
    return None


def _heif_kind(head: bytes) -> str | None:
    """Given bytes starting with an ISO-BMFF `ftyp` box, return image/heic, image/heif or None."""
    box_size = struct.unpack(">I", head[:4])[0]
    major = head[8:12]
    compatible = {head[i : i + 4] for i in range(16, min(box_size, len(head)) - 3, 4)}
    brands = {major} | compatible
    if b"avif" in brands or b"avis" in brands:
        return None  # AVIF shares the container but is not HEIF as the API means it.
    if major in _HEIC_BRANDS or (major in _HEIF_BRANDS and brands & _HEIC_BRANDS):
        return "image/heic"
    if major in _HEIF_BRANDS:
        return "image/heif"
    return None


def _png_is_animated(handle: BinaryIO) -> bool:
    """Walk PNG chunk headers (seeking over their data) until IDAT; True if acTL came first."""
    handle.seek(8)
    while True:
        header = handle.read(8)
        if len(header) < 8:
            return False
        length, chunk_type = struct.unpack(">I4s", header)
        if chunk_type == b"acTL":
            return True
        if chunk_type in (b"IDAT", b"IEND"):
            return False
        handle.seek(length + 4, 1)  # data and CRC


def _looks_like_pdf(head: bytes, handle: BinaryIO, size: int) -> bool:
    """True for a PDF header near the start, or a headerless file with PDF objects and an EOF.

    Files whose header is damaged or missing are still PDFs as far as the user is
    concerned: the engine decides whether they can be read and says why not.
    """
    if b"%PDF-" in head[:_PDF_HEADER_WINDOW]:
        return True
    if not _PDF_OBJECT.search(head[:_PDF_HEADER_WINDOW]):
        return False
    handle.seek(max(0, size - 1024))
    return b"%%EOF" in handle.read()


def _pdf_is_encrypted(head: bytes, handle: BinaryIO, size: int) -> bool:
    """Look for an /Encrypt entry in the trailers and cross-reference streams.

    Reads at most the first 4 KB (the first-page trailer of a linearised file), the last
    64 KB (the final trailer) and 16 KB where the last `startxref` points (a cross-reference
    stream whose data pushes its dictionary away from the end).
    """
    if _ENCRYPT.search(head):
        return True
    tail_start = max(0, size - _PDF_TAIL)
    handle.seek(tail_start)
    tail = handle.read()
    if _ENCRYPT.search(tail):
        return True
    offsets = _STARTXREF.findall(tail)
    if not offsets:
        return False
    offset = int(offsets[-1])
    if offset >= tail_start or offset >= size:
        return False  # already scanned, or a damaged pointer
    handle.seek(offset)
    return _ENCRYPT.search(handle.read(_PDF_XREF_WINDOW)) is not None


def _describe(head: bytes) -> str:
    """Given the first bytes of an unsupported file, say in a few words what it looks like."""
    for magic, description in _LOOKALIKES:
        if head.startswith(magic):
            return f"it looks like {description}"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace").strip()
        if brand in ("avif", "avis"):
            return "it looks like an AVIF image"
        return f"it looks like an MP4/QuickTime media file (brand {brand!r})"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<?xml", b"<svg")) and b"<svg" in stripped:
        return "it looks like an SVG drawing"
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "it looks like an HTML page"
    if stripped.startswith(b"<?xml"):
        return "it looks like an XML document"
    if _is_text(head):
        return "it looks like plain text"
    return "its content is not recognised"


def _is_text(head: bytes) -> bool:
    """True if the bytes decode as UTF-8 without control characters other than whitespace."""
    try:
        # Incremental: a multi-byte character cut at the end of the sample is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\t\r\n\f" for char in text)
