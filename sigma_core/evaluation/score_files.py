"""The scorer's files in a run folder, written and read here only: scores.jsonl (a line per
image, append-only, each line synced, so an interrupted scoring keeps what it made), a part
file per process under ``accelerate launch`` that the main process appends to scores.jsonl in
the order one process writes them (:func:`scoring_order`), and scores.json (the models used,
the metrics skipped and why).

One rule for every reader: an image's **last** line wins. Re-scoring with other models
appends a new line rather than rewriting the file, so the scorer's resume and the report both
take the last line of each (item, arm, seed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sigma_core.errors import SigmaInputError
from sigma_core.evaluation.benchmark import FAMILIES
from sigma_core.evaluation.metrics import METRIC_NAMES
from sigma_core.evaluation.run_record import RunNames
from sigma_core.evaluation.runlog import MAX_LINE_BYTES, Generated, Key, LogWriter, key_of
from sigma_core.inputs.outfile import write_text_atomic
from sigma_core.inputs.records import (
    Int,
    Map,
    Maybe,
    Num,
    Obj,
    Seq,
    Str,
    read_json_lines,
    read_record,
)
from sigma_core.limits import MAX_SEED

SCORES = "scores.jsonl"
SUMMARY = "scores.json"
PART_GLOB = "scores.part*.jsonl"
SCORE_LINE = Obj(
    {
        "item": Str(),
        "arm": Str(),
        "seed": Int(0, MAX_SEED - 1),
        "family": Str(FAMILIES),
        **{name: Maybe(Num()) for name in METRIC_NAMES},  # null: not asked, skipped or no refs
        "per_reference": Map(Map(Num())),  # metric -> slot -> value
        "models": Map(Str()),  # metric -> the model it was scored with
    }
)
SUMMARY_RECORD = Obj(
    {"models": Map(Str()), "skipped": Map(Str()), "metrics": Seq(Str(METRIC_NAMES))}
)


def part_file(run: Path, rank: int) -> Path:
    """The scores file process ``rank`` appends to under accelerate (merged by rank 0)."""
    return run / f"scores.part{rank}.jsonl"


def last_lines(paths: Sequence[Path]) -> dict[Key, tuple[str, dict[str, Any]]]:
    """The last line of each image over ``paths`` in order, with where it is (file, line);
    a torn last line of a file (the scorer stopped mid-write) is passed over."""
    lines: dict[Key, tuple[str, dict[str, Any]]] = {}
    for path in paths:
        for number, line in read_json_lines(
            path, SCORE_LINE, what="scores file", max_line_bytes=MAX_LINE_BYTES, torn_tail=True
        ):
            key = key_of(line)
            lines.pop(key, None)  # the image moves to where its last line is
            lines[key] = (f"{path}, line {number}", line)
    return lines


def read_scores(run: Path, record: Mapping[str, Any], families: Mapping[str, str],
                *, parts: bool = False) -> dict[Key, dict[str, Any]]:  # fmt: skip
    """scores.jsonl's last line per image (and the part files' with ``parts``), each of an
    arm and item of run.json and of the item's family in the benchmark."""
    paths = [run / SCORES, *(sorted(run.glob(PART_GLOB)) if parts else [])]
    names = RunNames.of(record)
    out = {}
    for key, (where, line) in last_lines([p for p in paths if p.exists()]).items():
        names.check(where, line)
        if families.get(line["item"]) != line["family"]:
            raise SigmaInputError(
                f"{where}: family {line['family']!r} is not the benchmark's for this item"
            )
        out[key] = line
    return out


def scored(lines: Mapping[Key, dict[str, Any]], models: Mapping[str, str]) -> set[Key]:
    """The images whose last line was made with every model in ``models``."""
    return {
        key
        for key, line in lines.items()
        if all(line["models"].get(m) == model for m, model in models.items())
    }


def scoring_order(images: Sequence[Generated]) -> list[Generated]:
    """The order images are scored in, and so scores.jsonl's new lines, however many processes
    score them: item by item (as generated.jsonl first lists them), each item's images (its arms
    and seeds) in generated.jsonl's order; an item's references are embedded once (a process)."""
    first = {item: i for i, item in enumerate(dict.fromkeys(g.item for g in images))}
    return sorted(images, key=lambda g: first[g.item])


def merge_parts(run: Path, order: Sequence[Generated]) -> int:
    """Appends the part files' lines to scores.jsonl, in ``order`` (:func:`scoring_order`), and
    removes them; returns how many lines moved."""
    parts = sorted(run.glob(PART_GLOB))
    lines = [line for _, line in last_lines(parts).values()]
    rank = {image.key: i for i, image in enumerate(order)}
    LogWriter(run / SCORES).extend(sorted(lines, key=lambda s: rank.get(key_of(s), len(rank))))
    for path in parts:
        path.unlink()
    return len(lines)


def write_summary(
    run: Path, metrics: Sequence[str], models: Mapping[str, str], skipped: Mapping[str, str]
) -> None:
    """scores.json: the metrics asked, the model each was scored with, why any was not."""
    summary = {"models": dict(models), "skipped": dict(skipped), "metrics": list(metrics)}
    text = json.dumps(summary, indent=2) + "\n"
    write_text_atomic(run / SUMMARY, text)


def read_summary(run: Path) -> dict[str, Any]:
    """scores.json, checked against its schema."""
    return read_record(run / SUMMARY, SUMMARY_RECORD, what="scores file", error=SigmaInputError)
