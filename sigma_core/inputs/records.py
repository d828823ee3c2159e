"""Files SIGMA Studio wrote and reads back (a training checkpoint's JSON, the exported weights'
``sigma_training.json``, make-tiny's marker), each checked against a declared schema.

A file the tool wrote can still be cut short, edited or swapped, so it is read as a stranger's
preset is: its size capped before a byte is read (a FIFO is never opened), its nesting measured
before parsing, numbers strict. Then every value is checked against the file's schema (types,
ranges, required keys, no key the writer never writes), and the first that breaks it is refused
as ``<file>: <field path>: <what is wrong>``, a :class:`CheckpointError` (exit 2), instead of a
traceback halfway through a resume.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from sigma_core.errors import CheckpointError, SigmaError
from sigma_core.inputs.fields import (
    Problems,
    check_keys,
    cut,
    field_name,
    is_int,
    is_number,
    kind_of,
    shown,
)
from sigma_core.inputs.preset import parse_json

MAX_RECORD_BYTES = 16 * 2**20  # a full 7B run's state.json is about 100 kB
MAX_INT = 2**63 - 1


class _Refusal(Exception):
    """A value that breaks its schema; the message is ``field.path: what is wrong``."""


def _refuse(path: str, message: str) -> NoReturn:
    raise _Refusal(f"{path}: {message}" if path else message)


class Spec(Protocol):
    """One declared value: ``check`` raises :class:`_Refusal` when ``value`` (at ``path``)
    does not fit."""

    def check(self, value: Any, path: str) -> None: ...


@dataclass(frozen=True)
class Int:
    lo: int = 0
    hi: int = MAX_INT

    def check(self, value: Any, path: str) -> None:
        if not (is_int(value) and self.lo <= value <= self.hi):
            span = f">= {self.lo:,}" if self.hi == MAX_INT else f"from {self.lo:,} to {self.hi:,}"
            _refuse(path, f"{shown(value)} is not an integer {span}")


@dataclass(frozen=True)
class Num:
    """A finite number, at least ``lo`` when given."""

    lo: float | None = None

    def check(self, value: Any, path: str) -> None:
        if not (is_number(value) and (self.lo is None or value >= self.lo)):
            at_least = "" if self.lo is None else f" >= {self.lo:g}"
            _refuse(path, f"{shown(value)} is not a finite number{at_least}")


@dataclass(frozen=True)
class Str:
    """A string, one of ``choices`` when there are any."""

    choices: tuple[str, ...] = ()

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, str):
            _refuse(path, f"expected a string, got {kind_of(value)}")
        if self.choices and value not in self.choices:
            _refuse(path, f"{shown(value)} is not one of {', '.join(self.choices)}")


@dataclass(frozen=True)
class Bool:
    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, bool):
            _refuse(path, f"expected true or false, got {shown(value)}")


@dataclass(frozen=True)
class Maybe:
    """null, or what ``spec`` says."""

    spec: Spec

    def check(self, value: Any, path: str) -> None:
        if value is not None:
            self.spec.check(value, path)


@dataclass(frozen=True)
class Anything:
    """Any JSON value (its depth is bounded by the reader): a part nothing reads back."""

    def check(self, value: Any, path: str) -> None:
        pass


@dataclass(frozen=True)
class Seq:
    """A list of ``item``, of exactly ``length`` items when given."""

    item: Spec
    length: int | None = None

    def check(self, value: Any, path: str) -> None:
        _check_list(value, path, self.length)
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]")


@dataclass(frozen=True)
class Fixed:
    """A list of as many values as ``items``, each what its item says (a tuple in JSON)."""

    items: tuple[Spec, ...]

    def check(self, value: Any, path: str) -> None:
        _check_list(value, path, len(self.items))
        for i, (spec, item) in enumerate(zip(self.items, value, strict=True)):
            spec.check(item, f"{path}[{i}]")


@dataclass(frozen=True)
class Obj:
    """An object with exactly these ``fields`` (those in ``optional`` may be missing)."""

    fields: Mapping[str, Spec]
    optional: tuple[str, ...] = ()

    def check(self, value: Any, path: str) -> None:
        _check_object(value, path)
        prefix = f"{path}." if path else ""
        problems = Problems()
        check_keys(value, tuple(self.fields), prefix, problems)
        if problems.items:
            raise _Refusal(problems.items[0])
        for key, spec in self.fields.items():
            if key in value:
                spec.check(value[key], prefix + key)
            elif key not in self.optional:
                _refuse(prefix + key, "missing")


@dataclass(frozen=True)
class Map:
    """An object whose keys are any names, every value what ``value`` says."""

    value: Spec

    def check(self, value: Any, path: str) -> None:
        _check_object(value, path)
        for key, item in value.items():
            self.value.check(item, f"{path}.{field_name(key)}")


def _check_list(value: Any, path: str, length: int | None) -> None:
    if not isinstance(value, list):
        _refuse(path, f"expected a list, got {kind_of(value)}")
    if length is not None and len(value) != length:
        _refuse(path, f"expected a list of {length:,} items, got {len(value):,}")


def _check_object(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        _refuse(path, f"expected an object, got {kind_of(value)}")


# ----------------------------------------------------------------------------- reading


def read_bounded(path: Path, max_bytes: int, *, what: str, error: type[SigmaError]) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (whole MB), its kind and size checked
    before it is opened: a FIFO or a device is never opened (it could block for ever). One byte
    more than the limit is read, to see a file that grew since. ``error`` names the file."""
    try:
        st = os.stat(path)
        regular = stat.S_ISREG(st.st_mode)
        data = b"" if not regular or st.st_size > max_bytes else _head(path, max_bytes + 1)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        reason = e.strerror if isinstance(e, OSError) and e.strerror else cut(str(e), 80)
        raise error(f"{path}: cannot read the {what} ({reason})") from None
    if not regular:
        raise error(f"{path}: not a regular file; a {what} is one")
    if st.st_size > max_bytes or len(data) > max_bytes:
        raise error(f"{path}: a {what} is at most {max_bytes >> 20} MB")
    return data


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def check_value(value: Any, schema: Spec, where: str, error: type[SigmaError]) -> None:
    """Raise ``error`` as ``<where>: <field path>: <what is wrong>`` when ``value`` breaks
    ``schema`` (a line of a JSONL file is checked with it, ``where`` naming the line)."""
    try:
        schema.check(value, "")
    except _Refusal as e:
        raise error(f"{where}: {e}") from None


def read_record(path: Path, schema: Obj, *, what: str = "checkpoint file") -> dict[str, Any]:
    """The JSON object in ``path`` (a ``what``), checked against ``schema``; a CheckpointError
    naming the file and the first field that does not fit otherwise."""
    data = read_bounded(path, MAX_RECORD_BYTES, what=what, error=CheckpointError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text; this file is JSON") from None
    parsed = parse_json(
        text, str(path), error=CheckpointError, needs="SIGMA Studio's files nest at most 4"
    )
    check_value(parsed, schema, str(path), CheckpointError)
    return parsed
