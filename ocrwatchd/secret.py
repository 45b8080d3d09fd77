"""A wrapper that keeps secrets out of reprs, logs, tracebacks and JSON."""

from __future__ import annotations

from typing import NoReturn


class Secret:
    """Holds a secret string; only `reveal()` gives it back.

    `str()`, `repr()` and f-strings show `'***'`, so a secret that reaches a log line,
    an exception message or `status` output by accident stays hidden.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret is not to be pickled")
