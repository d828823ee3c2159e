"""A run's log of finished images, ``RUN/generated.jsonl``: what makes a run resumable, its
writer and the one reader of it that ``evaluate generate``, the scorer and the report share.

A line is appended (flushed and synced) only once its PNG is in place, so a line always means
an image: a run killed at any point loses at most the image it was making. On resume, a key
(item, arm, seed) whose line is there and whose file exists is skipped; a partial last line (the
kill came mid-write) is ignored and cut off before the next append; an image without its line is
made again (same seed, same image). Under ``accelerate launch`` each process appends to
``generated.rank-<k>.jsonl``, and the main process merges every log into ``generated.jsonl``
in the work list's order, so the file is the same however many processes made it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sigma_core.errors import PresetError, SigmaInputError
from sigma_core.evaluation.run_record import RunNames
from sigma_core.inputs.composition import resolve_image_path
from sigma_core.inputs.images import load_image, read_image_bytes
from sigma_core.inputs.outfile import write_text_atomic
from sigma_core.inputs.records import Int, Num, Obj, Str, read_json_lines
from sigma_core.limits import MAX_SEED

LOG = "generated.jsonl"
RANK_LOGS = "generated.rank-*.jsonl"
MAX_LINE_BYTES = 2**20  # a line of generated.jsonl or scores.jsonl: a few hundred bytes
Key = tuple[str, str, int]  # (item, arm, seed)
LINE = Obj(
    {
        "item": Str(),
        "arm": Str(),
        "seed": Int(0, MAX_SEED - 1),
        "file": Str(),
        "seconds": Num(0.0),
        "prompt": Str(),  # the raw SIGMA prompt the model read (tokens, <image_k>)
    }
)


@dataclass(frozen=True)
class Generated:
    """One finished image of a run, as its line in generated.jsonl gives it; ``path`` is the
    file, checked to lie inside the run folder."""

    item: str
    arm: str
    seed: int
    file: str
    seconds: float
    prompt: str
    path: Path

    @property
    def key(self) -> Key:
        return self.item, self.arm, self.seed

    def load(self) -> Image.Image:
        """The image, its limits checked before it is decoded."""
        name = f"{LOG}: {self.item}, {self.arm}, seed {self.seed}: file"
        return load_image(read_image_bytes(self.path, name=name), name=name)


def image_file(key: Key) -> str:
    """Where the image of ``key`` goes, relative to RUN."""
    item, arm, seed = key
    return f"images/{arm}/{item}/{seed}.png"


def log_name(rank: int, world: int) -> str:
    """The log a process appends to: ``generated.jsonl`` alone, a rank's own under accelerate."""
    return LOG if world == 1 else f"generated.rank-{rank}.jsonl"


def _lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A log's complete lines, each checked against LINE (a torn last line passed over)."""
    for number, line in read_json_lines(
        path, LINE, what="run log", max_line_bytes=MAX_LINE_BYTES, torn_tail=True
    ):
        yield f"{path}, line {number}", line


def _check_file(where: str, line: dict[str, Any]) -> None:
    if line["file"] != image_file(key_of(line)):
        raise SigmaInputError(f"{where}: file: {line['file'][:80]!r} is not this key's image")


def read_log(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a log, each checked (a line naming another file is refused)."""
    if not path.exists():
        return []
    lines = []
    for where, line in _lines(path):
        _check_file(where, line)
        lines.append(line)
    return lines


def read_images(run: Path, record: dict[str, Any]) -> list[Generated]:
    """generated.jsonl's images, each once (the last line of a key wins), each of an arm and
    item of run.json, each file inside the run folder (no '..', no absolute path, no link out)."""
    found: dict[Key, Generated] = {}
    names = RunNames.of(record)
    for where, line in _lines(run / LOG):
        names.check(where, line)
        try:
            path = resolve_image_path(line["file"], [run], field_name="file")
        except PresetError as e:
            raise SigmaInputError(f"{where}: {e}") from None
        _check_file(where, line)
        image = Generated(**line, path=path)
        found[image.key] = image
    return list(found.values())


def key_of(line: dict[str, Any]) -> Key:
    """A line's (item, arm, seed): one image of the run."""
    return line["item"], line["arm"], line["seed"]


def finished(run: Path) -> dict[Key, dict[str, Any]]:
    """Every image a log lists whose file is there (the latest line of a key wins)."""
    done = {}
    for path in [run / LOG, *sorted(run.glob(RANK_LOGS))]:
        for line in read_log(path):
            if (run / line["file"]).is_file():
                done[key_of(line)] = line
    return done


def cut_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a writer stopped mid-line) off ``path``, so the
    next line appended starts on its own; reads only the file's tail."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        cut = end
        while cut > 0:
            step = min(cut, 2**16)
            f.seek(cut - step)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                cut = cut - step + newline + 1
                break
            cut -= step
        if cut < end:
            f.truncate(cut)


class LogWriter:
    """Appends JSON lines to one file (generated.jsonl, scores.jsonl), each flushed and synced
    to disk before the next, so a line always means finished work."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            cut_torn_tail(path)
        self.path = path

    def append(self, line: dict[str, Any]) -> None:
        """Append one line (see :meth:`extend`)."""
        self.extend([line])

    def extend(self, lines: Iterable[dict[str, Any]]) -> None:
        """Append ``lines``, each flushed and synced before the next: a kill leaves at most the
        last one torn."""
        with open(self.path, "ab") as f:
            for line in lines:
                f.write((json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n").encode())
                f.flush()
                os.fsync(f.fileno())


def merge(run: Path, order: Iterable[Key]) -> int:
    """Rewrite ``generated.jsonl`` from every log in the work ``order`` (one line a key), and
    remove the ranks' logs; returns the number of lines."""
    done = finished(run)
    lines = [done[key] for key in order if key in done]
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    write_text_atomic(run / LOG, text)
    for path in run.glob(RANK_LOGS):
        path.unlink()
    return len(lines)
