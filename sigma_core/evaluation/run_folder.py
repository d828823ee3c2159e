"""What the scorer reads from a run folder (docs/evaluation.md): run.json, benchmark.jsonl (the
items, their presets and which references are wanted or distractors) and generated.jsonl (one
line per finished image). Every file is read as a stranger's: regular files only, lines of
bounded size, JSON parsed safely, each line checked against its schema (keys the scorer does not
read are passed over), image paths kept inside the run folder. A problem is a SigmaInputError
naming the file, the line and the field.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sigma_core.errors import PresetError, SigmaInputError
from sigma_core.evaluation.embedders import RefView
from sigma_core.inputs.composition import Composition, resolve_image_path
from sigma_core.inputs.images import load_image
from sigma_core.inputs.preset import parse_json, preset_from_dict
from sigma_core.inputs.records import (
    MAX_RECORD_BYTES,
    Anything,
    Fixed,
    Int,
    Map,
    Maybe,
    Num,
    Obj,
    Str,
    check_record,
    read_bounded,
)
from sigma_core.limits import MAX_COMPOSITION_BYTES

FAMILIES = ("combine", "select", "stylize", "layout", "edit")
ROLES = ("wanted", "distractor")
MAX_LINE_BYTES = MAX_COMPOSITION_BYTES  # a benchmark line holds a preset, images embedded
Region = tuple[float, float, float, float]

RUN_FILE = Obj({"version": Int(1, 1)})
BENCHMARK_LINE = Obj(
    {
        "id": Str(),
        "family": Str(FAMILIES),
        "preset": Anything(),  # checked by the preset reader
        "references": Map(Obj({"role": Str(ROLES), "region": Fixed((Num(0),) * 4)}, ("region",))),
        "target": Maybe(Str()),
    },
    optional=("references", "target"),
)
GENERATED_LINE = Obj({"item": Str(), "arm": Str(), "seed": Int(), "file": Str()})


@dataclass(frozen=True)
class Item:
    """One benchmark item: its composition (images relative to the run folder) and each
    reference's role and region, by slot ("1")."""

    id: str
    family: str
    composition: Composition
    roles: dict[str, str]
    regions: dict[str, Region | None]

    def views(self) -> dict[str, list[RefView]]:
        """The references with images, by role: {"wanted": [...], "distractor": [...]}."""
        out: dict[str, list[RefView]] = {role: [] for role in ROLES}
        for ref in self.composition.references:
            if ref.image is not None:
                key = str(ref.slot)
                image = self.composition.load_image(ref)
                out[self.roles.get(key, "wanted")].append(
                    RefView(key, image, self.regions.get(key))
                )
        return out


@dataclass(frozen=True)
class Generated:
    """One finished image of the run: ``file`` as generated.jsonl gives it (relative to the run
    folder), ``path`` the file it names, checked to lie inside the folder."""

    item: str
    arm: str
    seed: int
    file: str
    path: Path

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.item, self.arm, self.seed)


def run_folder(given: str) -> Path:
    """The run folder ``given`` names, with its run.json of version 1."""
    run = Path(given)
    if not run.is_dir():
        raise SigmaInputError(f"RUN: {given} is not a run folder (make one with evaluate generate)")
    data = read_bounded(run / "run.json", MAX_RECORD_BYTES, what="run file", error=SigmaInputError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SigmaInputError(f"{run / 'run.json'}: not UTF-8 text; this file is JSON") from None
    where = str(run / "run.json")
    parsed = parse_json(text, where, error=SigmaInputError, needs="a run file nests at most 4")
    check_record(_known(parsed, RUN_FILE), RUN_FILE, where, error=SigmaInputError)
    return run


def _known(value: Any, schema: Obj) -> Any:
    """An object's keys that ``schema`` declares (the writers may add others)."""
    return (
        {k: v for k, v in value.items() if k in schema.fields} if isinstance(value, dict) else value
    )


def read_jsonl(path: Path, schema: Obj, *, torn_tail: bool = False) -> Iterator[dict[str, Any]]:
    """The lines of a JSONL file, each checked. ``torn_tail``: a last line without its newline
    that does not read (a writer stopped mid-line) is passed over instead of refused."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError as e:
        raise SigmaInputError(f"{path}: cannot read it ({e.strerror})") from None
    if not regular:
        raise SigmaInputError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        for number, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            if line.strip():
                try:
                    yield _line(line, f"{path}:{number}", schema)
                except SigmaInputError:
                    if torn_tail and not line.endswith(b"\n"):
                        return
                    raise


def _line(line: bytes, where: str, schema: Obj) -> dict[str, Any]:
    if len(line) > MAX_LINE_BYTES:
        raise SigmaInputError(f"{where}: a line is at most {MAX_LINE_BYTES >> 20} MB")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise SigmaInputError(f"{where}: not UTF-8 text; each line is JSON") from None
    value = parse_json(text, where, error=SigmaInputError, needs="a line nests at most 8")
    check_record(_known(value, schema), schema, where, error=SigmaInputError)
    return dict(value)


def read_items(run: Path) -> dict[str, Item]:
    """benchmark.jsonl's items by id, each preset read with the run folder as its base."""
    items: dict[str, Item] = {}
    for line in read_jsonl(run / "benchmark.jsonl", BENCHMARK_LINE):
        where = f"{run / 'benchmark.jsonl'}: item {line['id']!r}"
        if line["id"] in items:
            raise SigmaInputError(f"{where} appears twice")
        try:
            comp = preset_from_dict(line["preset"], base_dir=run, check_images=False)
        except PresetError as e:
            raise SigmaInputError(f"{where}: preset: {e}") from None
        refs = line.get("references", {})
        slots = {str(r.slot) for r in comp.references}
        for key, spec in refs.items():
            if key not in slots:
                raise SigmaInputError(f"{where}: references.{key}: the preset has no slot {key}")
            _check_region(spec.get("region"), f"{where}: references.{key}.region")
        roles = {k: spec["role"] for k, spec in refs.items()}
        regions = {k: _region(refs.get(k, {}).get("region")) for k in slots}
        items[line["id"]] = Item(line["id"], line["family"], comp, roles, regions)
    return items


def _check_region(region: Any, where: str) -> None:
    if region is not None and not (region[0] < region[2] <= 1 and region[1] < region[3] <= 1):
        raise SigmaInputError(f"{where}: {region} is not [x0, y0, x1, y1], 0 <= x0 < x1 <= 1")


def _region(region: Any) -> Region | None:
    return None if region is None else (region[0], region[1], region[2], region[3])


def read_generated(run: Path, items: dict[str, Item]) -> list[Generated]:
    """generated.jsonl's images in order, each once (the last line of an image wins), each of
    an item in the benchmark, each file inside the run folder (no '..', no absolute path, no
    link out of it). A torn last line (generation stopped mid-write) is passed over."""
    found: dict[tuple[str, str, int], Generated] = {}
    where = run / "generated.jsonl"
    for line in read_jsonl(where, GENERATED_LINE, torn_tail=True):
        if line["item"] not in items:
            raise SigmaInputError(f"{where}: item {line['item']!r} is not in benchmark.jsonl")
        name = f"{where}: {line['item']}, {line['arm']}, seed {line['seed']}: file"
        path = resolve_image_path(line["file"], [run], field_name=name)
        image = Generated(line["item"], line["arm"], line["seed"], line["file"], path)
        found[image.key] = image
    return list(found.values())


def load_generated(image: Generated) -> Image.Image:
    name = f"generated.jsonl: {image.item}, {image.arm}, seed {image.seed}: file"
    return load_image(image.path, name=name)
