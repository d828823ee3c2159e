"""Training rows from SIGMA's parquet shards and the project's JSONL manifests, in a
deterministic, resumable order.

Two formats are read:

- SIGMA's dataset (BAGEL's "seedxedit_multi" parquet form): a row is ``instruction_list``
  (``[[text]]``, raw SIGMA syntax with ``<image_k>`` placeholders) and ``image_list`` (encoded
  images: references 1..n, then the target last).
- A JSONL manifest: one preset object per line (the schema :func:`preset_from_dict` reads; image
  paths relative to the manifest's folder, or data URIs) plus a ``"target"`` key.

Sources are indexed up front from metadata (parquet row counts, JSONL line offsets), so the
length is known without decoding an image. Images go through the project's safe loader and its
limits; a row that cannot be used is counted in a :class:`SkipCounter` and never stops a run.
Nothing is read with pickle.
"""

from __future__ import annotations

import bisect
import glob
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from sigma_core.errors import ImageInputError, PresetError, SigmaInputError
from sigma_core.inputs.composition import Composition, Reference, resolve_image_path
from sigma_core.inputs.images import (
    DEFAULT_LIMITS,
    ImageLimits,
    is_data_uri,
    load_image,
    read_image_bytes,
)
from sigma_core.inputs.preset import parse_json, preset_from_dict
from sigma_core.inputs.prompt import placed_slots
from sigma_core.limits import MAX_ASPECT, MAX_COMPOSITION_BYTES, MAX_REFERENCES

log = logging.getLogger(__name__)

# Skip reasons: short and stable, since they are keys in checkpoints and model cards.
NO_INSTRUCTION = "no instruction"
NO_TARGET = "no target"
TOO_MANY_IMAGES = "too many images"
UNDECODABLE = "undecodable image"
MISSING_PLACEHOLDER = "placeholder without an image"
BAD_PROMPT = "prompt refused"  # the same key the packer uses for build_plan refusals
BAD_PRESET = "bad preset"
UNREADABLE_SHARD = "unreadable shard"
OVER_BUDGET = "over the token budget"  # counted by the packer

INSTRUCTION_COLUMN = "instruction_list"
IMAGE_COLUMN = "image_list"
_DETAIL_CHARS = 500


# ----------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class TrainSample:
    """One decoded row: the composition (references in slots 1..n, each ``image`` an RGB PIL
    image, no crop left to apply), the RGB target, and where it came from for skip reports."""

    composition: Composition
    target: Image.Image
    source: str


class SkipCounter:
    """Rows left out, by reason, with the first example of each so a report can point at it.

    A row is counted once per reason however often it is read: the trainer re-reads the rows
    between its saved position and the next batch, and epochs repeat rows, but the number that
    matters is how many rows of the data are unusable.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._first: dict[str, str] = {}
        self._seen: set[tuple[str, str]] = set()

    def skip(self, reason: str, source: str, detail: str = "") -> None:
        """Count ``source`` under ``reason`` (a short, stable key); ``detail``: what is wrong."""
        if (reason, source) in self._seen:
            return
        self._seen.add((reason, source))
        self._counts[reason] = self._counts.get(reason, 0) + 1
        if reason not in self._first:
            text = " ".join(detail.split())
            if len(text) > _DETAIL_CHARS:
                text = text[: _DETAIL_CHARS - 3] + "..."
            self._first[reason] = f"{source}: {text}" if text else source
            log.warning("skipping a training row (%s): %s", reason, self._first[reason])

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def count(self, reason: str) -> int:
        return self._counts.get(reason, 0)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{reason: {"count": n, "first": "source: detail"}}``, JSON-ready, sorted by reason."""
        return {
            r: {"count": self._counts[r], "first": self._first[r]} for r in sorted(self._counts)
        }

    def summary(self) -> str:
        """One readable line, e.g. for the end of a run's log."""
        if not self._counts:
            return "no rows skipped"
        parts = [f"{n} {r} (first: {self._first[r]})" for r, n in sorted(self._counts.items())]
        return f"{self.total} rows skipped: " + "; ".join(parts)

    def __repr__(self) -> str:
        return f"SkipCounter({self.summary()})"


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


# ----------------------------------------------------------------------------- one row


def _first_text(value: Any, depth: int = 0) -> str | None:
    """The first non-blank string in a (nested) list: SIGMA writes ``[[text]]``."""
    if isinstance(value, str):
        return value if value.strip() else None
    if depth < 4 and isinstance(value, list | tuple):
        for item in value:
            text = _first_text(item, depth + 1)
            if text is not None:
                return text
    return None


def _image_bytes(value: Any) -> bytes | None:
    """Encoded bytes from a parquet cell: raw binary, or Hugging Face's ``{"bytes": ...}``."""
    if isinstance(value, Mapping):
        value = value.get("bytes")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return None


def _check_target(img: Image.Image, name: str) -> None:
    w, h = img.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageInputError(
            f"{name}: {w}x{h} is more than {MAX_ASPECT}:1, which the model's position table "
            "cannot hold"
        )


def _checked_prompt(
    comp: Composition, available: set[int], source: str, skipped: SkipCounter
) -> bool:
    """Every placeholder has an image, and the project's parser takes the prompt."""
    missing = sorted({k for k in comp.referenced_slots() if k not in available})
    if missing:
        have = ", ".join(map(str, sorted(available))) or "none"
        skipped.skip(MISSING_PLACEHOLDER, source, f"places slot {missing[0]}; images: {have}")
        return False
    try:
        comp.raw_prompt()
    except SigmaInputError as e:
        skipped.skip(BAD_PROMPT, source, str(e))
        return False
    return True


def _decoded(
    comp: Composition, limits: ImageLimits, source: str, skipped: SkipCounter
) -> Composition | None:
    """The composition with every reference decoded to RGB (crop applied, then dropped)."""
    refs = []
    for ref in comp.references:
        if ref.image is None:
            continue
        try:
            image = comp.load_image(ref, limits=limits)
        except ImageInputError as e:
            skipped.skip(UNDECODABLE, source, str(e))
            return None
        except PresetError as e:  # a path that does not resolve inside the manifest's folder
            skipped.skip(BAD_PRESET, source, str(e))
            return None
        refs.append(replace(ref, image=image, crop=None))
    return replace(comp, references=tuple(refs))


def sample_from_row(
    row: Mapping[str, Any],
    source: str,
    skipped: SkipCounter,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> TrainSample | None:
    """A sample from one row of SIGMA's parquet format, or None after counting why not.

    Checks run cheapest first, so a row with a bad prompt costs no image decoding.
    """
    prompt = _first_text(row.get(INSTRUCTION_COLUMN))
    if prompt is None:
        skipped.skip(NO_INSTRUCTION, source, f"{INSTRUCTION_COLUMN} holds no text")
        return None
    images = row.get(IMAGE_COLUMN)
    if not isinstance(images, list | tuple) or len(images) < 2:
        count = len(images) if isinstance(images, list | tuple) else 0
        skipped.skip(NO_TARGET, source, f"{count} image(s); a row needs references and a target")
        return None
    if len(images) - 1 > MAX_REFERENCES:
        skipped.skip(TOO_MANY_IMAGES, source, f"{len(images) - 1} references > {MAX_REFERENCES}")
        return None
    encoded = [_image_bytes(x) for x in images]
    bad = next((i for i, b in enumerate(encoded) if b is None), None)
    if bad is not None:
        kind = type(images[bad]).__name__
        skipped.skip(UNDECODABLE, source, f"{IMAGE_COLUMN}[{bad}] is {kind}, not image bytes")
        return None
    n = len(encoded) - 1
    try:
        comp = Composition(
            prompt=prompt,
            references=tuple(Reference(k, encoded[k - 1]) for k in range(1, n + 1)),
            asset_dirs=(),
        )
    except ValueError as e:  # SigmaInputError, or int() on a placeholder of 4,300+ digits
        skipped.skip(BAD_PROMPT, source, str(e))
        return None
    if not _checked_prompt(comp, set(range(1, n + 1)), source, skipped):
        return None
    try:
        target = load_image(encoded[-1], limits=limits, name="target")
        _check_target(target, "target")
    except ImageInputError as e:
        skipped.skip(UNDECODABLE, source, str(e))
        return None
    comp = _decoded(comp, limits, source, skipped)
    return None if comp is None else TrainSample(comp, target, source)


def sample_from_preset_line(
    text: str,
    folder: Path,
    source: str,
    skipped: SkipCounter,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> TrainSample | None:
    """A sample from one manifest line (a preset plus ``"target"``), or None after counting."""
    try:
        data = parse_json(text, source)
    except PresetError as e:
        skipped.skip(BAD_PRESET, source, str(e))
        return None
    if not isinstance(data, dict):
        skipped.skip(BAD_PRESET, source, f"expected a JSON object, got {type(data).__name__}")
        return None
    data = dict(data)
    target_field = data.pop("target", None)
    if not isinstance(target_field, str) or not target_field.strip():
        skipped.skip(NO_TARGET, source, '"target" must be a relative image path or a data URI')
        return None
    try:
        comp = preset_from_dict(data, base_dir=folder, asset_dirs=(), check_images=False)
    except ValueError as e:  # PresetError, or a placeholder too long to read as a number
        slot = _unfilled_slot(data)
        reason = MISSING_PLACEHOLDER if slot is not None else BAD_PRESET
        skipped.skip(reason, source, str(e))
        return None
    available = {r.slot for r in comp.references if r.image is not None}
    if not _checked_prompt(comp, available, source, skipped):
        return None
    try:
        if is_data_uri(target_field):
            target = load_image(target_field, limits=limits, name="target")
        else:
            path = resolve_image_path(target_field, [folder], field_name="target")
            raw = read_image_bytes(path, limits=limits, name="target")
            target = load_image(raw, limits=limits, name="target")
        _check_target(target, "target")
    except ImageInputError as e:
        skipped.skip(UNDECODABLE, source, str(e))
        return None
    except PresetError as e:
        skipped.skip(BAD_PRESET, source, str(e))
        return None
    decoded = _decoded(comp, limits, source, skipped)
    return None if decoded is None else TrainSample(decoded, target, source)


def _unfilled_slot(data: Mapping[str, Any]) -> int | None:
    """A slot the preset's prompt places that no reference with an image fills, if any; read
    from the raw dict, since the preset reader refuses such a preset before building it."""
    prompt, refs = data.get("prompt"), data.get("references", [])
    if not isinstance(prompt, str) or not isinstance(refs, list) or len(prompt) > 100_000:
        return None
    filled = {
        r["slot"]
        for r in refs
        if isinstance(r, dict) and isinstance(r.get("slot"), int) and r.get("image") is not None
    }
    try:
        return next((k for k in placed_slots(prompt) if k not in filled), None)
    except ValueError:
        return None


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
        found = sorted(
            p
            for p in path.rglob("*")
            if p.suffix in _SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not found:
            raise SigmaInputError(f"data: {text!r} is a folder with no .parquet or .jsonl files")
        return found
    if path.is_file():
        if path.suffix not in _SUFFIXES:
            raise SigmaInputError(
                f"data: {text!r} is neither a .parquet shard nor a .jsonl manifest"
            )
        return [path]
    if _GLOB_CHARS & set(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
        found = [p for p in matches if p.suffix in _SUFFIXES and p.is_file()]
        if not found:
            raise SigmaInputError(f"data: {text!r} matches no .parquet or .jsonl file")
        return found
    raise SigmaInputError(f"data: {text!r} does not exist")


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
        if isinstance(sources, str | os.PathLike):
            sources = [sources]
        if not sources:
            raise SigmaInputError(
                "data: no sources given; name parquet shards, folders or a .jsonl"
            )
        self.seed = int(seed)
        self.skipped = skipped if skipped is not None else SkipCounter()
        self.limits = limits
        files: dict[Path, None] = {}
        for source in sources:
            for path in _expand(source):
                files.setdefault(path.resolve(), None)
        self.shards: tuple[_Shard, ...] = tuple(
            _index_parquet(p) if _SUFFIXES[p.suffix] == "parquet" else _index_jsonl(p)
            for p in files
        )
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
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int)):
            raise SigmaInputError(f"data: world must be an integer >= 1, got {world!r}")
        if not 0 <= rank < world:
            raise SigmaInputError(f"data: rank {rank} is outside 0..{world - 1}")
        n = len(self)
        per_epoch = len(range(rank, n, world))
        if per_epoch == 0:
            raise SigmaInputError(
                f"data: {n} rows cannot feed {world} processes; rank {rank} would get none"
            )
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
