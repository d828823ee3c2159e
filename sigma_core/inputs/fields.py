"""Small checks shared by the settings and the preset parser: strict types, field-path messages."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Any, TypeGuard

from sigma_core.errors import PresetError


class Problems:
    """Collects "field.path: message" lines, so a preset reports every problem at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise PresetError("\n".join(self.items))


def is_int(v: Any) -> TypeGuard[int]:
    """An int that is not a bool (JSON's true is not a step count)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool; an int too large for a float is not one."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def shown(v: Any, width: int = 60) -> str:
    """A value as a message quotes it: its repr, shortened. Huge integers are described, not
    printed (their repr is slow and, past 4,300 digits, an error)."""
    if is_int(v) and abs(v).bit_length() > 100:
        return f"an integer of about {int(abs(v).bit_length() * 0.30103)} digits"
    return cut(repr(v), width)


def cut(text: str, width: int = 60) -> str:
    """``text``, shortened to ``width`` characters with "..." when longer."""
    return text if len(text) <= width else f"{text[: width - 3]}..."


def field_name(key: Any) -> str:
    """A key as a field path shows it: cut, and escaped when it holds a character that does not
    print (a newline in a key must not start a line of the message)."""
    text = str(key)
    return cut(text if text.isprintable() else repr(text)[1:-1])


def is_pair(v: Any, types: type | tuple[type, ...]) -> bool:
    """A 2-item list or tuple of ``types`` (bools excluded)."""
    return (
        isinstance(v, tuple | list)
        and len(v) == 2
        and all(isinstance(x, types) and not isinstance(x, bool) for x in v)
    )


def kind_of(v: Any) -> str:
    """How a JSON value reads in a message: 'an object', 'a list', 'null' ..."""
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false"}.get(
        type(v), "null" if v is None else type(v).__name__
    )


def did_you_mean(word: Any, options: Sequence[str]) -> str:
    """ "; did you mean 'x'?" for the closest option, or ""."""
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def check_keys(
    raw: dict[str, Any], allowed: Sequence[str], prefix: str, problems: Problems
) -> None:
    """Report every key of ``raw`` outside ``allowed``, with the closest allowed one."""
    for key in raw:
        if key not in allowed:
            problems.add(
                f"{prefix}{field_name(key)}",
                f"unknown field{did_you_mean(key, allowed)} (allowed: {', '.join(allowed)})",
            )
