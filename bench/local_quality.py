"""Measure the local engine's accuracy on pages with known text.

Generates pages with Pillow's bundled scalable font (no download): clean at 300 dpi and
150 dpi, rotated by 90/180/270 degrees, noisy (grain, speckles, blur, a slight skew,
JPEG), and low resolution (72-100 dpi, blurred, no dpi in the file). OCRs each with
`ocrwatchd.engines.local.ocr_document` and prints the character error rate per set, then
the word recall on tests/data/mindee/default_sample.jpg against bench/data/default_sample.txt
(a transcription made by reading the image).

Targets (issue #4): CER <= 1 % on clean 300-dpi pages, <= 3 % on the rotated, noisy and
low-resolution sets; word recall >= 0.95 on the invoice.

    .venv/bin/python bench/local_quality.py [--pages N]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ocrwatchd.engines.local import ocr_document  # noqa: E402

SENTENCES = [
    "The quarterly report was sent to all members of the board on Monday morning.",
    "Please remit payment of $1,245.60 within thirty days of the invoice date.",
    "Shipping address: 221 Baker Street, London, NW1 6XE, United Kingdom.",
    "Our office is open Monday to Friday from 9:00 to 17:30, except public holidays.",
    "Questions about this statement may be sent to billing@example.com at any time.",
    "Every document in the archive was scanned, indexed and checked by two clerks.",
    "The committee approved a budget of 3,400 pounds for new equipment and training.",
    "Order number 48213 contains six items and will be delivered on 14 March 2025.",
    "A copy of the signed contract must be returned before the end of the month.",
    "The warehouse in Rotterdam reported a shortage of packing material last week.",
    "Interest is charged at 1.5% per month on balances that remain unpaid after 30 days.",
    "Tickets for the annual conference cost 85 euros and include lunch on both days.",
    "The new printer on the second floor is faster, quieter and uses less toner.",
    "Our records show that your account was credited with 250.00 on 2 February.",
    "Visitors must sign in at the front desk and wear a badge at all times.",
    "Maintenance of the heating system is scheduled for Saturday, 7 June, at 8 a.m.",
    "The survey received 1,032 responses, most of them from customers in the north.",
    "Kindly quote reference AB-7719 in all correspondence regarding this claim.",
    "The library will be closed for renovation from 1 July until 15 August.",
    "Total due: 4,870.25 including VAT at 20%; discount of 2% if paid within 10 days.",
    "He carefully folded the letter, placed it in an envelope and posted it at noon.",
    "Fresh bread, cheese and apples were sold at the market beside the old church.",
    "The train to Edinburgh leaves platform 4 at 10:42 and arrives at 15:07.",
    "Please find enclosed the revised drawings for the extension of building C.",
]

Page = tuple[Image.Image, str]


def text_page(
    seed: int, *, dpi: int = 300, lines: int = 12, point_size: float = 11.0, width_in: float = 8.27
) -> Page:
    """Return (greyscale page, its text): `lines` lines of `point_size` text at `dpi`."""
    chosen = random.Random(seed).sample(SENTENCES, lines)
    font = ImageFont.load_default(size=max(6, round(point_size * dpi / 72)))
    line_height = round(point_size * dpi / 72 * 1.6)
    margin = round(0.6 * dpi)
    image = Image.new("L", (round(width_in * dpi), 2 * margin + line_height * lines), 255)
    draw = ImageDraw.Draw(image)
    for number, line in enumerate(chosen):
        draw.text((margin, margin + number * line_height), line, font=font, fill=20)
    image.info["dpi"] = (dpi, dpi)
    return image, "\n".join(chosen)


def rotated(page: Page, degrees: int) -> Page:
    """Return the page turned `degrees` anticlockwise (as a scanner might feed it)."""
    image, text = page
    turned = image.rotate(degrees, expand=True, fillcolor=255)
    turned.info["dpi"] = image.info["dpi"]
    return turned, text


def noisy(page: Page, seed: int) -> Page:
    """Return the page with film grain, speckles, a slight blur and skew, JPEG-compressed."""
    image, text = page
    rng = random.Random(seed)
    image = image.rotate(rng.choice((-1.5, -0.8, 0.8, 1.5)), expand=True, fillcolor=255)
    grain = Image.effect_noise(image.size, 30)
    image = Image.blend(image, grain, 0.25).filter(ImageFilter.GaussianBlur(0.8))
    pixels = image.load()
    assert pixels is not None
    for _ in range(image.width * image.height // 400):  # 0.25 % speckles
        xy = (rng.randrange(image.width), rng.randrange(image.height))
        pixels[xy] = rng.choice((0, 255))
    return _jpeg(image, 70), text


def low_resolution(page: Page, dpi: int) -> Page:
    """Return a 300-dpi page downsampled to `dpi`, blurred like a cheap scan, as JPEG."""
    image, text = page
    scale = dpi / 300
    small = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.BOX
    )
    return _jpeg(small.filter(ImageFilter.GaussianBlur(0.5)), 80), text


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer)


def page_sets(count: int) -> dict[str, list[Page]]:
    """Return the named test sets, `count` pages each (rotated: one set per angle)."""
    return {
        "clean 300 dpi": [text_page(seed) for seed in range(count)],
        "clean 150 dpi": [text_page(seed, dpi=150) for seed in range(count)],
        "rotated 90": [rotated(text_page(seed, lines=8), 90) for seed in range(count)],
        "rotated 180": [rotated(text_page(seed, lines=8), 180) for seed in range(count)],
        "rotated 270": [rotated(text_page(seed, lines=8), 270) for seed in range(count)],
        "noisy 300 dpi": [noisy(text_page(seed), seed) for seed in range(count)],
        "low-res 100 dpi": [low_resolution(text_page(seed), 100) for seed in range(count)],
        "low-res 72 dpi": [low_resolution(text_page(seed), 72) for seed in range(count)],
    }


def levenshtein(first: str, second: str) -> int:
    """Return the edit distance between two strings (insertions, deletions, substitutions)."""
    if len(first) < len(second):
        first, second = second, first
    previous = list(range(len(second) + 1))
    for i, a in enumerate(first, 1):
        current = [i]
        for j, b in enumerate(second, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]


def character_error_rate(truth: str, read: str) -> float:
    """Edit distance over the truth's length, whitespace collapsed to single spaces."""
    expected, actual = " ".join(truth.split()), " ".join(read.split())
    return levenshtein(expected, actual) / max(1, len(expected))


def word_recall(truth: str, read: str) -> float:
    """Fraction of the truth's words (with multiplicity) found among the words read."""
    expected, found = Counter(truth.split()), Counter(read.split())
    return sum(min(n, found[word]) for word, n in expected.items()) / sum(expected.values())


def read_text(path: Path) -> str:
    """OCR the file at `path` with the local engine; return all pages' content."""
    body = ocr_document(path, alias=str(path), languages=["eng"], tessdata_dir=None)
    return "\n".join(page["content"] for page in json.loads(body)["inference"]["result"]["pages"])


def measure(pages: list[Page], folder: Path, score: Callable[[str, str], float]) -> list[float]:
    """Save each page as PNG (JPEG-degraded pages keep their artefacts) and score the OCR."""
    scores = []
    for number, (image, truth) in enumerate(pages):
        path = folder / f"page{number}.png"
        image.save(path, **({"dpi": image.info["dpi"]} if "dpi" in image.info else {}))
        scores.append(score(truth, read_text(path)))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=4, help="pages per set (default 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        print(f"{'set':<18} {'pages':>5} {'mean CER':>9} {'worst':>7} {'s/page':>7}")
        for name, pages in page_sets(args.pages).items():
            started = time.perf_counter()
            rates = measure(pages, folder, character_error_rate)
            per_page = (time.perf_counter() - started) / len(pages)
            mean = sum(rates) / len(rates)
            print(f"{name:<18} {len(pages):>5} {mean:>8.2%} {max(rates):>7.2%} {per_page:>7.2f}")
    invoice = ROOT / "tests" / "data" / "mindee" / "default_sample.jpg"
    truth = (ROOT / "bench" / "data" / "default_sample.txt").read_text(encoding="utf-8")
    read = read_text(invoice)
    recall = word_recall(truth, read)
    missed = sorted((Counter(truth.split()) - Counter(read.split())).elements())
    print(f"invoice word recall {recall:.3f} ({len(truth.split())} words); missed: {missed}")


if __name__ == "__main__":
    main()
