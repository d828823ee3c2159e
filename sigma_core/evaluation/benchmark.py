"""A benchmark: compositions to generate and score, each with what its scorers need to know.

A benchmark is a JSONL manifest (``benchmark.jsonl``, or a folder holding one): one item a line,
``{"id", "family", "preset", "references", "target"}`` (docs/evaluation.md). The manifest comes
from strangers as a preset does, so it is read the same way: its size capped before a byte is
read (a FIFO is never opened), each line parsed with bounded nesting and checked against a
declared schema, and a refusal names the line and the field. Image, preset and target paths
resolve only inside the manifest's folder (images also in the shipped assets/).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sigma_core.errors import PresetError, SigmaInputError
from sigma_core.inputs.composition import Composition, resolve_image_path
from sigma_core.inputs.images import is_data_uri, load_image, read_image_bytes
from sigma_core.inputs.outfile import write_atomic, write_text_atomic
from sigma_core.inputs.preset import load_preset, preset_from_dict, preset_to_dict
from sigma_core.inputs.records import Anything, Fixed, Map, Num, Obj, Str, read_json_lines
from sigma_core.limits import (
    MAX_BENCHMARK_BYTES,
    MAX_BENCHMARK_ITEMS,
    MAX_COMPOSITION_BYTES,
    MAX_ITEM_ID_CHARS,
)

MANIFEST = "benchmark.jsonl"
REFS = "refs"  # a copy's images, one file per content hash
FAMILIES = ("combine", "select", "stylize", "layout", "edit")
ROLES = ("wanted", "distractor")
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_REGION = Fixed((Num(0.0), Num(0.0), Num(0.0), Num(0.0)))
LINE = Obj(
    {
        "id": Str(),
        "family": Str(FAMILIES),
        "preset": Anything(),  # an object (a preset) or a string (a preset file): checked below
        "references": Map(Obj({"role": Str(ROLES), "region": _REGION}, optional=("region",))),
        "target": Str(),
    },
    optional=("references", "target"),
)


@dataclass(frozen=True)
class ReferenceRole:
    """What a scorer expects of one reference: to appear ("wanted") or not ("distractor", for
    CLIP-ES), and where it should land, as fractions (x0, y0, x1, y1) of the output image."""

    role: str = "wanted"
    region: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class BenchmarkItem:
    """One composition of a benchmark. ``references`` holds a role for every slot of the
    composition (a slot the line does not list is "wanted"); ``target`` is an image file."""

    id: str
    family: str
    composition: Composition
    references: Mapping[int, ReferenceRole]
    target: Path | None = None
    line: int = 0


@dataclass(frozen=True)
class Benchmark:
    """A manifest's items, in its order."""

    items: tuple[BenchmarkItem, ...]

    def item(self, item_id: str) -> BenchmarkItem:
        """The item ``item_id`` (ids are unique: the reader refuses a repeated one)."""
        return next(i for i in self.items if i.id == item_id)


def manifest_path(bench: str | os.PathLike) -> Path:
    """The manifest ``bench`` names: the file itself, or ``benchmark.jsonl`` in a folder."""
    path = Path(bench)
    if path.is_dir():
        path = path / MANIFEST
    if not path.exists():
        raise SigmaInputError(
            f"BENCH {os.fspath(bench)!r}: no such file, nor a folder with {MANIFEST}"
        )
    if path.suffix.lower() != ".jsonl":
        raise SigmaInputError(
            f"BENCH {os.fspath(bench)!r} is not a JSONL manifest; name a .jsonl file or a "
            f"folder holding {MANIFEST}"
        )
    return path


def load_benchmark(bench: str | os.PathLike) -> Benchmark:
    """Every item of the benchmark ``bench``, each checked (images opened) before any work.
    A run folder holds a copy of its benchmark, so ``load_benchmark(RUN)`` reads that."""
    path = manifest_path(bench)
    items: list[BenchmarkItem] = []
    seen: set[str] = set()
    for number, raw in read_json_lines(
        path, LINE, what="benchmark manifest", max_line_bytes=MAX_COMPOSITION_BYTES,
        max_file_bytes=MAX_BENCHMARK_BYTES,
    ):  # fmt: skip
        where = f"{path}, line {number}"
        if len(items) == MAX_BENCHMARK_ITEMS:
            raise SigmaInputError(f"{path}: more than {MAX_BENCHMARK_ITEMS:,} items")
        if raw["id"] in seen:
            raise SigmaInputError(f"{where}: id: {raw['id'][:40]!r} is used by an earlier line")
        items.append(_item(raw, path.parent, where, number))
        seen.add(raw["id"])
    if not items:
        raise SigmaInputError(f"{path}: no items; a benchmark has one JSON object per line")
    return Benchmark(tuple(items))


def _item(raw: dict[str, Any], folder: Path, where: str, number: int) -> BenchmarkItem:
    _check_id(raw["id"], where)
    try:
        comp = _composition(raw["preset"], folder)
        target = _target(raw.get("target"), folder)
    except (PresetError, SigmaInputError) as e:
        raise SigmaInputError(f"{where}: {e}") from None
    return BenchmarkItem(
        raw["id"], raw["family"], comp, _roles(raw.get("references", {}), comp, where), target,
        number,
    )  # fmt: skip


def _check_id(item_id: str, where: str) -> None:
    if len(item_id) > MAX_ITEM_ID_CHARS or not _ID.fullmatch(item_id):
        raise SigmaInputError(
            f"{where}: id: {item_id[:40]!r} must be 1 to {MAX_ITEM_ID_CHARS} letters, digits, "
            "'.', '_' or '-' (it names the folder of the item's images)"
        )


def _composition(preset: Any, folder: Path) -> Composition:
    if isinstance(preset, dict):
        return preset_from_dict(preset, base_dir=folder.resolve())
    if isinstance(preset, str):
        return load_preset(resolve_image_path(preset, [folder], field_name="preset"))
    raise SigmaInputError("preset: expected a preset object or the path of a preset file")


def _target(rel: str | None, folder: Path) -> Path | None:
    if rel is None:
        return None
    path = resolve_image_path(rel, [folder], field_name="target")
    load_image(read_image_bytes(path, name="target"), name="target")
    return path


def _roles(raw: dict[str, Any], comp: Composition, where: str) -> dict[int, ReferenceRole]:
    slots = {r.slot for r in comp.references}
    roles = {slot: ReferenceRole() for slot in sorted(slots)}
    for key, value in raw.items():
        if not key.isdigit() or int(key) not in slots:
            have = ", ".join(map(str, sorted(slots))) or "none"
            raise SigmaInputError(
                f"{where}: references.{key[:20]}: the preset has no slot {key[:20]!r} "
                f"(slots: {have})"
            )
        roles[int(key)] = ReferenceRole(value["role"], _region(value.get("region"), key, where))
    return roles


def _region(
    region: list[float] | None, key: str, where: str
) -> tuple[float, float, float, float] | None:
    if region is None:
        return None
    x0, y0, x1, y1 = (float(v) for v in region)
    if not (x0 < x1 <= 1 and y0 < y1 <= 1):
        raise SigmaInputError(
            f"{where}: references.{key}.region: {region} must be [x0, y0, x1, y1], "
            "fractions of the output from 0 to 1 with x0 < x1 and y0 < y1"
        )
    return x0, y0, x1, y1


# ----------------------------------------------------------------------------- a copy


def item_line(item: BenchmarkItem, place: Callable[[Path], str]) -> dict[str, Any]:
    """The item as a manifest line, each image file given the name ``place`` returns for it."""
    refs = []
    for ref in item.composition.references:
        if isinstance(ref.image, str) and not is_data_uri(ref.image):
            ref = replace(ref, image=place(item.composition.resolve_path(ref.image)))
        refs.append(ref)
    line: dict[str, Any] = {
        "id": item.id,
        "family": item.family,
        "preset": preset_to_dict(replace(item.composition, references=tuple(refs))),
        "references": {
            str(slot): {"role": r.role, **({"region": list(r.region)} if r.region else {})}
            for slot, r in item.references.items()
        },
    }
    if item.target is not None:
        line["target"] = place(item.target)
    return line


def copy_text(bench: Benchmark, store: Callable[[str, bytes], object] | None = None) -> str:
    """The manifest of a self-contained copy of ``bench``: every image file it names is
    ``refs/<hash of its bytes>``, so one shared image is stored once; ``store(name, bytes)``
    is called for each. The copy is itself a benchmark, and scoring needs only it."""

    def place(path: Path) -> str:
        data = read_image_bytes(path)
        name = f"{REFS}/{hashlib.sha256(data).hexdigest()[:24]}{path.suffix.lower()}"
        if store is not None:
            store(name, data)
        return name

    return "".join(json.dumps(item_line(i, place), ensure_ascii=False) + "\n" for i in bench.items)


def write_copy(bench: Benchmark, folder: Path) -> Path:
    """Write :func:`copy_text`'s manifest and images into ``folder``."""

    def store(name: str, data: bytes) -> None:
        if not (folder / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / name, lambda f: f.write(data), overwrite=True)

    text = copy_text(bench, store)
    return write_text_atomic(folder / MANIFEST, text)
