"""OCR engines: `mindee` (the Mindee API v2) and `local` (embedded Tesseract), both behind
the `Engine` interface of `engines.base`. The configuration names one; this module builds
it and asks it what keeps it from working, so the config itself imports no engine."""

from __future__ import annotations

from ocrwatchd.config import Config, format_problem
from ocrwatchd.engines.base import Engine


def engine_class(config: Config) -> type[Engine]:
    """The configured engine's class. Raises ImportError when its libraries are missing."""
    return engine_class_named(config.engine)


def engine_class_named(name: str) -> type[Engine]:
    """The class of the engine called `name` ("mindee" or "local")."""
    if name == "mindee":
        from ocrwatchd.engines.mindee_jobs import MindeeEngine

        return MindeeEngine
    from ocrwatchd.engines.local_jobs import LocalJobs

    return LocalJobs


def build(config: Config, *, daemon: bool = False) -> Engine:
    """The configured engine, ready to take files (`daemon`: for a long-running daemon)."""
    return engine_class(config).from_config(config, daemon=daemon)


def problems(config: Config) -> list[str]:
    """What keeps the configured engine from working at all, formatted like every config
    problem. The daemon, `once` and `ocr` refuse to start with any of them."""
    try:
        cls = engine_class(config)
    except ImportError as error:
        message = f"the {config.engine} engine cannot be loaded: {error}"
        return [format_problem(config.source, config.marks.get("engine"), "engine", message)]
    return cls.problems(config)
