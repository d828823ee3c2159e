"""The scorer's files in a run folder: scores.jsonl (a line per image, append-only, each line
flushed, so an interrupted scoring keeps what it made), a part file per process under
``accelerate launch`` that the main process appends to scores.jsonl in generated.jsonl's order,
and scores.json (the models used, the metrics skipped and why).

An image is scored again only when no line of it was made with the models asked now; when it
is, the new line comes later, and readers take an image's last line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from sigma_core.evaluation.run_folder import Generated, read_jsonl
from sigma_core.inputs.records import Int, Map, Obj, Str

SCORES = "scores.jsonl"
SUMMARY = "scores.json"
PART_GLOB = "scores.part*.jsonl"
SCORE_LINE = Obj({"item": Str(), "arm": Str(), "seed": Int(), "models": Map(Str())})


def part_file(run: Path, rank: int) -> Path:
    return run / f"scores.part{rank}.jsonl"


def _score_files(run: Path) -> list[Path]:
    return [p for p in [run / SCORES, *sorted(run.glob(PART_GLOB))] if p.exists()]


def scored(run: Path, models: Mapping[str, str]) -> set[tuple[str, str, int]]:
    """The images (item, arm, seed) that have a line made with every model in ``models``."""
    done = set()
    for path in _score_files(run):
        for line in read_jsonl(path, SCORE_LINE, torn_tail=True):
            if all(line["models"].get(m) == model for m, model in models.items()):
                done.add((line["item"], line["arm"], line["seed"]))
    return done


def open_for_append(path: Path) -> TextIO:
    """``path`` opened to append lines, a torn last line (no newline) cut off first."""
    if path.exists():
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a", encoding="utf-8")


def append_lines(out: TextIO, lines: Iterable[dict[str, Any]]) -> None:
    for line in lines:
        out.write(json.dumps(line, allow_nan=False) + "\n")
        out.flush()


def merge_parts(run: Path, order: list[Generated]) -> int:
    """Appends the part files' lines to scores.jsonl, in ``order`` (generated.jsonl's), and
    removes them; returns how many lines moved."""
    parts = sorted(run.glob(PART_GLOB))
    lines: dict[tuple[str, str, int], dict[str, Any]] = {}
    for path in parts:
        for line in read_jsonl(path, SCORE_LINE, torn_tail=True):
            lines[(line["item"], line["arm"], line["seed"])] = line
    rank = {image.key: i for i, image in enumerate(order)}
    with open_for_append(run / SCORES) as out:
        append_lines(out, sorted(lines.values(), key=lambda s: rank.get(_key(s), len(rank))))
        out.flush()
        os.fsync(out.fileno())
    for path in parts:
        path.unlink()
    return len(lines)


def _key(line: dict[str, Any]) -> tuple[str, str, int]:
    return (line["item"], line["arm"], line["seed"])


def write_summary(
    run: Path, metrics: tuple[str, ...], models: Mapping[str, str], skipped: Mapping[str, str]
) -> None:
    """scores.json: the metrics asked, the model each was scored with, why any was not."""
    summary = {"models": dict(models), "skipped": dict(skipped), "metrics": list(metrics)}
    tmp = run / f".{SUMMARY}.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run / SUMMARY)
