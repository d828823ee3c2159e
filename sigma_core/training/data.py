"""Training rows from SIGMA's parquet shards and the project's JSONL manifests, in a
deterministic, resumable order.

Sources (files, folders, globs) are indexed up front from metadata (parquet row counts, JSONL
line offsets), so the length is known without decoding an image. Each epoch's order is fixed by
``(seed, epoch)``; a :class:`DataPosition` says how far a stream has read, so a resumed run
reads on where it stopped. Parsing one row into a sample, and counting the rows that cannot be
used, is :mod:`sigma_core.training.rows`.
"""

from __future__ import annotations

import bisect
import glob
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sigma_core.errors import SigmaInputError
from sigma_core.inputs.images import DEFAULT_LIMITS, ImageLimits
from sigma_core.limits import MAX_COMPOSITION_BYTES
from sigma_core.training.rows import (
    BAD_PRESET,
    IMAGE_COLUMN,
    INSTRUCTION_COLUMN,
    UNREADABLE_SHARD,
    SkipCounter,
    TrainSample,
    sample_from_preset_line,
    sample_from_row,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPosition:
    """Where a data stream stands: ``cursor`` rows of epoch ``epoch``'s order are done (counted
    in the full order, whatever the rank, so every rank's position reads the same way)."""

    epoch: int = 0
    cursor: int = 0

    def __post_init__(self) -> None:
        for name in ("epoch", "cursor"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SigmaInputError(f"data position: {name} must be an integer >= 0")


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Shard:
    """One file of rows: a parquet shard, or a manifest with the byte offset and line number of
    each non-blank line."""

    path: Path
    kind: Literal["parquet", "jsonl"]
    rows: int
    offsets: np.ndarray | None = None
    lines: np.ndarray | None = None


_SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl"}
_GLOB_CHARS = frozenset("*?[")


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SigmaInputError(
            "reading parquet shards needs pyarrow: pip install 'sigma-studio[train]'"
        ) from None
    return pq


def _expand(source: str | os.PathLike) -> list[Path]:
    """The data files one source names: a file, a folder (searched recursively, hidden folders
    left out) or a glob; sorted, so the order never depends on the file system."""
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        return _folder_files(path, text)
    if path.is_file():
        if path.suffix not in _SUFFIXES:
            raise SigmaInputError(
                f"data: {text!r} is neither a .parquet shard nor a .jsonl manifest"
            )
        return [path]
    if _GLOB_CHARS & set(text):
        return _glob_files(text)
    raise SigmaInputError(f"data: {text!r} does not exist")


def _folder_files(folder: Path, text: str) -> list[Path]:
    """The data files under ``folder``, none inside a hidden folder (.git, .cache)."""
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in _SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not found:
        raise SigmaInputError(f"data: {text!r} is a folder with no .parquet or .jsonl files")
    return found


def _glob_files(pattern: str) -> list[Path]:
    """The data files a glob matches (``**`` recursive)."""
    matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
    found = [p for p in matches if p.suffix in _SUFFIXES and p.is_file()]
    if not found:
        raise SigmaInputError(f"data: {pattern!r} matches no .parquet or .jsonl file")
    return found


def _index(sources: Sequence[str | os.PathLike] | str | os.PathLike) -> tuple[_Shard, ...]:
    """Every file the sources name, each once (a folder and a glob over it may both name one),
    indexed from its metadata."""
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    if not sources:
        raise SigmaInputError("data: no sources given; name parquet shards, folders or a .jsonl")
    files: dict[Path, None] = {}
    for source in sources:
        for path in _expand(source):
            files.setdefault(path.resolve(), None)
    return tuple(
        _index_parquet(p) if _SUFFIXES[p.suffix] == "parquet" else _index_jsonl(p) for p in files
    )


def _check_rank(rank: int, world: int, rows: int) -> None:
    """Rank ``rank`` of ``world`` processes reads ``order[rank::world]``: at least one row."""
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int)):
        raise SigmaInputError(f"data: world must be an integer >= 1, got {world!r}")
    if not 0 <= rank < world:
        raise SigmaInputError(f"data: rank {rank} is outside 0..{world - 1}")
    if not range(rank, rows, world):
        raise SigmaInputError(
            f"data: {rows} rows cannot feed {world} processes; rank {rank} would get none"
        )


def _index_parquet(path: Path) -> _Shard:
    pq = _pyarrow_parquet()
    try:
        meta = pq.read_metadata(path)
        names = set(meta.schema.to_arrow_schema().names)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError ... on a bad footer
        raise SigmaInputError(f"data: {path} is not a readable parquet file ({e})") from None
    missing = [c for c in (INSTRUCTION_COLUMN, IMAGE_COLUMN) if c not in names]
    if missing:
        raise SigmaInputError(
            f"data: {path} has no column {missing[0]!r} (it has {', '.join(sorted(names))}); "
            f"SIGMA's rows are {{{INSTRUCTION_COLUMN!r}: [[text]], {IMAGE_COLUMN!r}: [bytes...]}}"
        )
    return _Shard(path, "parquet", meta.num_rows)


def _index_jsonl(path: Path) -> _Shard:
    offsets, lines = [], []
    try:
        with open(path, "rb") as f:
            offset = 0
            for number, line in enumerate(f, start=1):
                if line.strip():
                    offsets.append(offset)
                    lines.append(number)
                offset += len(line)
    except OSError as e:
        raise SigmaInputError(f"data: cannot read {path} ({e.strerror or e})") from None
    return _Shard(
        path, "jsonl", len(offsets), np.asarray(offsets, np.int64), np.asarray(lines, np.int64)
    )


# ----------------------------------------------------------------------------- the dataset


class TrainDataset:
    """Rows from parquet shards and JSONL manifests, in an order fixed by ``(seed, epoch)``.

    Each epoch shuffles the order of the files, then the rows within each file, so reading in
    order keeps one parquet shard in memory at a time (one is cached). ``sample`` decodes a row;
    ``iterate`` streams good samples from a :class:`DataPosition`, endlessly.

    The same file named twice (a folder and a glob over it) is read once.
    """

    def __init__(
        self,
        sources: Sequence[str | os.PathLike] | str | os.PathLike,
        *,
        seed: int = 0,
        skipped: SkipCounter | None = None,
        limits: ImageLimits = DEFAULT_LIMITS,
    ) -> None:
        self.seed = int(seed)
        self.skipped = skipped if skipped is not None else SkipCounter()
        self.limits = limits
        self.shards = _index(sources)
        self._starts = [0]
        for shard in self.shards:
            self._starts.append(self._starts[-1] + shard.rows)
        if self._starts[-1] == 0:
            names = ", ".join(str(s.path) for s in self.shards)
            raise SigmaInputError(f"data: no rows in {names}")
        self._table: tuple[int, Any] | None = None  # (shard, pyarrow table or the read error)
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._last: tuple[int, TrainSample | None] | None = None

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(s.path for s in self.shards)

    # -- order

    def _order_array(self, epoch: int) -> np.ndarray:
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed % 2**64, epoch]))
        parts = [
            self._starts[s] + rng.permutation(self.shards[s].rows)
            for s in rng.permutation(len(self.shards))
        ]
        order = np.concatenate(parts).astype(np.int64)
        self._order_cache = (epoch, order)
        return order

    def order(self, epoch: int) -> list[int]:
        """Row indices of ``epoch`` in reading order: files shuffled, then rows in each file."""
        return self._order_array(epoch).tolist()

    # -- rows

    def _where(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} is outside the data's {len(self)} rows")
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, int(index - self._starts[shard])

    def locate(self, index: int) -> tuple[Path, int]:
        """The file and row (0-based) of a global row index."""
        shard, row = self._where(index)
        return self.shards[shard].path, row

    def source(self, index: int) -> str:
        """How reports name a row: ``shard.parquet row 12`` or ``train.jsonl line 3``."""
        shard_id, row = self._where(index)
        shard = self.shards[shard_id]
        if shard.kind == "jsonl" and shard.lines is not None:
            return f"{shard.path.name} line {int(shard.lines[row])}"
        return f"{shard.path.name} row {row}"

    def sample(self, index: int) -> TrainSample | None:
        """Row ``index`` decoded, or None when it cannot be used (counted in ``skipped``)."""
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        shard_id, row = self._where(index)
        shard = self.shards[shard_id]
        source = self.source(index)
        if shard.kind == "parquet":
            result = self._parquet_sample(shard_id, row, source)
        else:
            result = self._jsonl_sample(shard, row, source)
        self._last = (index, result)
        return result

    def _parquet_sample(self, shard_id: int, row: int, source: str) -> TrainSample | None:
        if self._table is None or self._table[0] != shard_id:
            self._table = None  # free the previous shard before reading the next
            path = self.shards[shard_id].path
            try:
                table = _pyarrow_parquet().read_table(
                    path, columns=[INSTRUCTION_COLUMN, IMAGE_COLUMN]
                )
            except SigmaInputError:
                raise
            except Exception as e:  # a shard damaged after indexing, or gone
                table = e
            self._table = (shard_id, table)
        table = self._table[1]
        if isinstance(table, Exception):
            self.skipped.skip(UNREADABLE_SHARD, source, str(table))
            return None
        if row >= table.num_rows:
            self.skipped.skip(UNREADABLE_SHARD, source, "the shard is shorter than when indexed")
            return None
        try:
            record = table.slice(row, 1).to_pylist()[0]
        except Exception as e:
            self.skipped.skip(UNREADABLE_SHARD, source, str(e))
            return None
        return sample_from_row(record, source, self.skipped, limits=self.limits)

    def _jsonl_sample(self, shard: _Shard, row: int, source: str) -> TrainSample | None:
        assert shard.offsets is not None  # a manifest is indexed with its line offsets
        try:
            with open(shard.path, "rb") as f:
                f.seek(int(shard.offsets[row]))
                raw = f.readline(MAX_COMPOSITION_BYTES + 1)
        except OSError as e:
            self.skipped.skip(UNREADABLE_SHARD, source, str(e.strerror or e))
            return None
        if len(raw) > MAX_COMPOSITION_BYTES:
            self.skipped.skip(BAD_PRESET, source, "the line is over the preset size limit")
            return None
        try:
            text = raw.decode("utf-8-sig" if row == 0 else "utf-8")
        except UnicodeDecodeError:
            self.skipped.skip(BAD_PRESET, source, "the line is not UTF-8 text")
            return None
        return sample_from_preset_line(
            text, shard.path.parent, source, self.skipped, limits=self.limits
        )

    # -- streaming

    def iterate(
        self, position: DataPosition | None = None, *, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[DataPosition, TrainSample]]:
        """Good samples from ``position`` on, over epochs without end, each with the position
        after it: resuming from that position continues with the next row. Rank ``rank`` of
        ``world`` reads rows ``order[rank::world]``; the cursor counts rows of the full order."""
        n = len(self)
        _check_rank(rank, world, n)
        position = position if position is not None else DataPosition()
        epoch, cursor = position.epoch, position.cursor
        if cursor > n:
            log.warning("data position %s is past the data's %d rows; starting the next epoch",
                        position, n)  # fmt: skip
            epoch, cursor = epoch + 1, 0
        misses = 0
        while True:
            order = self._order_array(epoch)
            for p in range(cursor + (rank - cursor) % world, n, world):
                sample = self.sample(int(order[p]))
                if sample is None:
                    misses += 1
                    if misses >= n:  # as many bad rows in a row as the data has: none is usable
                        raise SigmaInputError(
                            f"data: the last {misses} rows read could not be used; "
                            f"{self.skipped.summary()}"
                        )
                    continue
                misses = 0
                after = DataPosition(epoch, p + 1) if p + 1 < n else DataPosition(epoch + 1, 0)
                yield after, sample
            epoch, cursor = epoch + 1, 0
