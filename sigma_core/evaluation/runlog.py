"""A run's log of finished images, ``RUN/generated.jsonl``: what makes a run resumable.

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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sigma_core.errors import SigmaInputError
from sigma_core.inputs.outfile import write_atomic
from sigma_core.inputs.preset import parse_json
from sigma_core.inputs.records import Int, Num, Obj, Str, check_record, read_bounded
from sigma_core.limits import MAX_BENCHMARK_BYTES

LOG = "generated.jsonl"
RANK_LOGS = "generated.rank-*.jsonl"
Key = tuple[str, str, int]  # (item, arm, seed)
_LINE = Obj(
    {
        "item": Str(),
        "arm": Str(),
        "seed": Int(),
        "file": Str(),
        "seconds": Num(0.0),
        "prompt": Str(),
    }
)


def image_file(key: Key) -> str:
    """Where the image of ``key`` goes, relative to RUN."""
    item, arm, seed = key
    return f"images/{arm}/{item}/{seed}.png"


def log_name(rank: int, world: int) -> str:
    """The log a process appends to: ``generated.jsonl`` alone, a rank's own under accelerate."""
    return LOG if world == 1 else f"generated.rank-{rank}.jsonl"


def _complete(path: Path) -> bytes:
    """The file's bytes up to its last newline (a partial last line dropped)."""
    data = read_bounded(path, MAX_BENCHMARK_BYTES, what="run log", error=SigmaInputError)
    return data[: data.rfind(b"\n") + 1]


def read_log(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a log, each checked (a line naming another file is refused)."""
    if not path.exists():
        return []
    try:
        text = _complete(path).decode("utf-8")
    except UnicodeDecodeError:
        raise SigmaInputError(f"{path}: not UTF-8 text; a run log is JSON lines") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path} line {number}"
        raw = parse_json(line, where, error=SigmaInputError, needs="a log line nests 1")
        check_record(raw, _LINE, where, error=SigmaInputError)
        if raw["file"] != image_file(key_of(raw)):
            raise SigmaInputError(f"{where}: file: {raw['file'][:80]!r} is not this key's image")
        lines.append(raw)
    return lines


def key_of(line: dict[str, Any]) -> Key:
    return line["item"], line["arm"], line["seed"]


def finished(run: Path) -> dict[Key, dict[str, Any]]:
    """Every image a log lists whose file is there (the latest line of a key wins)."""
    done = {}
    for path in [run / LOG, *sorted(run.glob(RANK_LOGS))]:
        for line in read_log(path):
            if (run / line["file"]).is_file():
                done[key_of(line)] = line
    return done


class LogWriter:
    """Appends lines to one log, each synced to disk before the next image starts."""

    def __init__(self, path: Path) -> None:
        if path.exists():  # cut a partial last line, so the next line starts on its own
            os.truncate(path, len(_complete(path)))
        self.path = path

    def append(self, line: dict[str, Any]) -> None:
        with open(self.path, "ab") as f:
            f.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())


def merge(run: Path, order: Iterable[Key]) -> int:
    """Rewrite ``generated.jsonl`` from every log in the work ``order`` (one line a key), and
    remove the ranks' logs; returns the number of lines."""
    done = finished(run)
    lines = [done[key] for key in order if key in done]
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    write_atomic(run / LOG, lambda f: f.write(text.encode("utf-8")), overwrite=True)
    for path in run.glob(RANK_LOGS):
        path.unlink()
    return len(lines)
