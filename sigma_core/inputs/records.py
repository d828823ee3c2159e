"""Files SIGMA Studio wrote and reads back (a training checkpoint's JSON, the exported weights'
``sigma_training.json``, make-tiny's marker, an evaluation run's JSON and JSON Lines), each
checked against a declared schema.

A file the tool wrote can still be cut short, edited or swapped, so it is read as a stranger's
preset is: its size capped before a byte is read (a FIFO is never opened), its nesting measured
before parsing, numbers strict. Then every value is checked against the file's schema (types,
ranges, required keys, no key the writer never writes), and the first that breaks it is refused
as ``<file>: <field path>: <what is wrong>`` (``<file>, line N: ...`` in JSON Lines), a
:class:`CheckpointError` or the caller's error (exit 2), instead of a traceback halfway through
a resume.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from sigma_core.errors import CheckpointError, SigmaError, SigmaInputError
from sigma_core.inputs.bounded import read_bounded, regular_file_size, unreadable
from sigma_core.inputs.fields import (
    Problems,
    check_keys,
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

    def check(self, value: Any, path: str) -> None:
        """Raise :class:`_Refusal`, its message starting with ``path``, unless ``value`` fits."""


@dataclass(frozen=True)
class Int:
    """A whole number from ``lo`` to ``hi`` (not true or false: JSON's true is no count), so a
    step, a count or an RNG word read back is one the writer could have written."""

    lo: int = 0
    hi: int = MAX_INT

    def check(self, value: Any, path: str) -> None:
        """Refuse anything but an int in range; a huge one is described, not printed."""
        if not (is_int(value) and self.lo <= value <= self.hi):
            span = f">= {self.lo:,}" if self.hi == MAX_INT else f"from {self.lo:,} to {self.hi:,}"
            _refuse(path, f"{shown(value)} is not an integer {span}")


@dataclass(frozen=True)
class Num:
    """A finite number, at least ``lo`` when given."""

    lo: float | None = None

    def check(self, value: Any, path: str) -> None:
        """Refuse a non-number, NaN, an infinity, a bool, or one below ``lo``."""
        if not (is_number(value) and (self.lo is None or value >= self.lo)):
            at_least = "" if self.lo is None else f" >= {self.lo:g}"
            _refuse(path, f"{shown(value)} is not a finite number{at_least}")


@dataclass(frozen=True)
class Str:
    """A string, one of ``choices`` when there are any."""

    choices: tuple[str, ...] = ()

    def check(self, value: Any, path: str) -> None:
        """Refuse a non-string, or a string outside ``choices``, naming the choices."""
        if not isinstance(value, str):
            _refuse(path, f"expected a string, got {kind_of(value)}")
        if self.choices and value not in self.choices:
            _refuse(path, f"{shown(value)} is not one of {', '.join(self.choices)}")


@dataclass(frozen=True)
class Bool:
    """true or false, and nothing else: 0, 1 and "yes" are not read as a flag."""

    def check(self, value: Any, path: str) -> None:
        """Refuse anything but a bool."""
        if not isinstance(value, bool):
            _refuse(path, f"expected true or false, got {shown(value)}")


@dataclass(frozen=True)
class Maybe:
    """null, or what ``spec`` says."""

    spec: Spec

    def check(self, value: Any, path: str) -> None:
        """Let null through; check anything else as ``spec``."""
        if value is not None:
            self.spec.check(value, path)


@dataclass(frozen=True)
class Anything:
    """Any JSON value (its depth is bounded by the reader): a part nothing reads back."""

    def check(self, value: Any, path: str) -> None:
        """Refuse nothing: the reader already bounded its size and depth."""


@dataclass(frozen=True)
class Seq:
    """A list of ``item``, of exactly ``length`` items when given."""

    item: Spec
    length: int | None = None

    def check(self, value: Any, path: str) -> None:
        """Refuse a non-list or one of another length, then each item, by its index."""
        _check_list(value, path, self.length)
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]")


@dataclass(frozen=True)
class Fixed:
    """A list of as many values as ``items``, each what its item says (a tuple in JSON)."""

    items: tuple[Spec, ...]

    def check(self, value: Any, path: str) -> None:
        """Refuse a non-list or one of another length, then each item by its own spec."""
        _check_list(value, path, len(self.items))
        for i, (spec, item) in enumerate(zip(self.items, value, strict=True)):
            spec.check(item, f"{path}[{i}]")


@dataclass(frozen=True)
class Obj:
    """An object with exactly these ``fields`` (those in ``optional`` may be missing)."""

    fields: Mapping[str, Spec]
    optional: tuple[str, ...] = ()

    def check(self, value: Any, path: str) -> None:
        """Refuse a non-object, a key the writer never writes (the closest field suggested), a
        missing field not in ``optional``, then each field by its spec."""
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
        """Refuse a non-object, then each value, its key shown printable and cut."""
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


def read_record(
    path: Path,
    schema: Obj,
    *,
    what: str = "checkpoint file",
    error: type[SigmaError] = CheckpointError,
) -> dict[str, Any]:
    """The JSON object in ``path``, checked against ``schema``; an ``error`` naming the file and
    the first field that does not fit otherwise."""
    data = read_bounded(path, MAX_RECORD_BYTES, what=what, error=error)
    parsed = _parse(data, str(path), error)
    check_record(parsed, schema, str(path), error=error)
    return parsed


def check_record(value: Any, schema: Spec, where: str, *, error: type[SigmaError]) -> None:
    """Refuse ``value`` unless it fits ``schema``: ``error`` says ``where: field: problem``."""
    try:
        schema.check(value, "")
    except _Refusal as e:
        raise error(f"{where}: {e}") from None


def read_json_lines(
    path: Path,
    schema: Spec,
    *,
    what: str,
    max_line_bytes: int = MAX_RECORD_BYTES,
    max_file_bytes: int = MAX_INT,
    torn_tail: bool = False,
    error: type[SigmaError] = SigmaInputError,
) -> Iterator[tuple[int, Any]]:
    """Each non-blank line of a JSON Lines file with its line number, checked against
    ``schema``. The file is read a line at a time (a line over ``max_line_bytes`` is refused
    unread), so one with embedded images never sits in memory whole; every refusal names
    ``<file>, line N``. ``max_file_bytes`` caps the whole file; with ``torn_tail`` a last line
    without its newline is passed over, since an appending writer stopped mid-line (and cuts
    it off before its next line). A UTF-8 byte order mark is allowed before the first line."""
    size = regular_file_size(path, what, error)
    if size > max_file_bytes:
        raise error(f"{path}: a {what} is at most {max_file_bytes >> 20} MB")
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(iter(lambda: f.readline(max_line_bytes + 1), b""), 1):
                where = f"{path}, line {number}"
                if len(line) > max_line_bytes:
                    raise error(f"{where}: a line of the {what} is over {max_line_bytes:,} bytes")
                if torn_tail and not line.endswith(b"\n"):
                    return
                record = _line_record(line, number, where, schema, error)
                if record is not None:
                    yield number, record
    except OSError as e:
        raise unreadable(path, what, e, error) from None


def _line_record(
    line: bytes, number: int, where: str, schema: Spec, error: type[SigmaError]
) -> Any:
    """One line's value, checked (None for a blank line; a byte order mark may open line 1)."""
    if number == 1 and line.startswith(codecs.BOM_UTF8):
        line = line[len(codecs.BOM_UTF8) :]
    if not line.strip():
        return None
    record = _parse(line, where, error)
    check_record(record, schema, where, error=error)
    return record


def _parse(data: bytes, where: str, error: type[SigmaError]) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{where}: not UTF-8 text; this file is JSON") from None
    return parse_json(text, where, error=error, needs="SIGMA Studio's files nest at most 4")
