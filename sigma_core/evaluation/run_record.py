"""``RUN/run.json``: what a run is (docs/evaluation.md, "Benchmarks and runs"), written by
``evaluate generate`` and read back by it (to resume), by the scorer and by the report, all
through this one schema.

The file may have been edited or swapped since, so it is read as a stranger's (bounded, every
field checked, no field the writer never writes); a refusal is a SigmaInputError (exit 2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sigma_core.errors import SigmaInputError
from sigma_core.evaluation.benchmark import BenchmarkItem, load_benchmark
from sigma_core.inputs.outfile import write_text_atomic
from sigma_core.inputs.records import Anything, Int, Map, Obj, Seq, Str, read_record
from sigma_core.limits import MAX_SEED

RECORD = "run.json"
RUN_VERSION = 1
SCHEMA = Obj(
    {
        "version": Int(RUN_VERSION, RUN_VERSION),
        "benchmark": Str(),
        "arms": Seq(Obj({"name": Str(), "vary": Map(Str())})),
        "seeds": Seq(Int(0, MAX_SEED - 1)),
        "items": Seq(Str()),
        "engine": Map(Anything()),  # the engine options (EngineChoice), as given
        "settings_overrides": Map(Str()),  # setting -> the flag's text (--steps, --size)
    }
)


@dataclass(frozen=True)
class RunFolder:
    """A run folder as the scorer and the report read it: run.json and the run's own copy of
    its benchmark (``items`` by id), every item run.json lists among them."""

    folder: Path
    record: dict[str, Any]
    items: dict[str, BenchmarkItem]

    @property
    def families(self) -> dict[str, str]:
        """Each item's task family, by id."""
        return {item_id: item.family for item_id, item in self.items.items()}


def open_run(given: str | Path) -> RunFolder:
    """The run folder ``given`` names, its run.json and benchmark copy checked (images opened)."""
    run = Path(given)
    if not run.is_dir():
        raise SigmaInputError(f"RUN: {given} is not a run folder (make one with evaluate generate)")
    record = read_run_record(run)
    items = {item.id: item for item in load_benchmark(run).items}
    missing = [i for i in record["items"] if i not in items]
    if missing:
        raise SigmaInputError(f"{run}: item {missing[0]!r} of run.json is not in the benchmark")
    return RunFolder(run, record, items)


def write_run_record(run: Path, record: Mapping[str, Any]) -> None:
    """Write run.json (replaced whole, never half-written)."""
    text = json.dumps(record, indent=2) + "\n"
    write_text_atomic(run / RECORD, text)


def read_run_record(run: Path) -> dict[str, Any]:
    """run.json, checked, including what its schema cannot say: arm and item names are
    unique and not empty, the checkpoint is text or null."""
    path = run / RECORD
    record = read_record(path, SCHEMA, what="run file", error=SigmaInputError)
    for field, names in (("arms", arm_names(record)), ("items", record["items"])):
        if not names or len(set(names)) < len(names):
            raise SigmaInputError(f"{path}: {field}: empty, or a name is there twice")
    checkpoint = record["engine"].get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise SigmaInputError(f"{path}: engine.checkpoint: expected a string or null")
    return record


def arm_names(record: Mapping[str, Any]) -> list[str]:
    """The arms' names in run.json's order (the report's rows)."""
    return [arm["name"] for arm in record["arms"]]


@dataclass(frozen=True)
class RunNames:
    """The arms and items run.json lists, to check the lines of generated.jsonl and
    scores.jsonl against: a line of another arm or item belongs to another run, and counting
    it would skew every mean."""

    arms: frozenset[str]
    items: frozenset[str]

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> RunNames:
        """The names ``record`` (a checked run.json) lists."""
        return cls(frozenset(arm_names(record)), frozenset(record["items"]))

    def check(self, where: str, line: Mapping[str, Any]) -> None:
        """Refuse a log or score line of an arm or item run.json does not list."""
        if line["arm"] not in self.arms:
            raise SigmaInputError(f"{where}: arm {line['arm']!r} is not one of run.json's arms")
        if line["item"] not in self.items:
            raise SigmaInputError(f"{where}: item {line['item']!r} is not one of run.json's items")
