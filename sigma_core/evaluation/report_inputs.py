"""A run folder read back for the report: run.json, benchmark.jsonl, generated.jsonl,
scores.jsonl and scores.json (their formats: docs/evaluation.md).

Every file is a stranger's: each is read through :mod:`sigma_core.inputs.records` (sizes
bounded, nesting measured, NaN and infinities refused, every field checked against the schemas
below), an image path must stay inside the run folder, and a refusal is one
:class:`SigmaInputError` (exit 2) naming the file and line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

from sigma_core.errors import PresetError, SigmaInputError
from sigma_core.inputs.composition import Reference, resolve_image_path
from sigma_core.inputs.png import find_png_text
from sigma_core.inputs.preset import PNG_NOTICE_KEY, preset_from_dict
from sigma_core.inputs.records import (
    Anything,
    Fixed,
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
from sigma_core.limits import MAX_COMPOSITION_BYTES, MAX_SEED

# name, header, True when higher is better; the paper's order (XVerseBench, then selection)
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("clip_t", "CLIP-T", True),
    ("clip_i", "CLIP-I", True),
    ("dino", "DINO", True),
    ("dreamsim", "DreamSim", True),
    ("clip_es", "CLIP-ES", False),
    ("aes", "AES", True),
)
METRIC_NAMES = tuple(m[0] for m in METRICS)
FAMILIES = ("combine", "select", "stylize", "layout", "edit")

_ARM = Obj({"name": Str(), "vary": Map(Anything())})
RUN_RECORD = Obj(
    {
        "version": Int(1, 1),
        "benchmark": Str(),
        "arms": Seq(_ARM),
        "seeds": Seq(Int(0, MAX_SEED - 1)),
        "items": Seq(Str()),
        "engine": Map(Anything()),
    }
)
_REFERENCE = Obj(
    {"role": Str(("wanted", "distractor")), "region": Fixed((Num(), Num(), Num(), Num()))},
    optional=("region",),
)
BENCHMARK_LINE = Obj(
    {
        "id": Str(),
        "family": Str(FAMILIES),
        "preset": Map(Anything()),
        "references": Map(_REFERENCE),
        "target": Anything(),
    },
    optional=("target",),
)
GENERATED_LINE = Obj(
    {
        "item": Str(),
        "arm": Str(),
        "seed": Int(0, MAX_SEED - 1),
        "file": Str(),
        "seconds": Num(0),
        "prompt": Str(),
    }
)
SCORES_LINE = Obj(
    {
        "item": Str(),
        "arm": Str(),
        "seed": Int(0, MAX_SEED - 1),
        "family": Str(FAMILIES),
        **{name: Maybe(Num()) for name in METRIC_NAMES},
        "per_reference": Map(Map(Maybe(Num()))),
    },
    optional=(*METRIC_NAMES, "per_reference"),
)
SCORES_RECORD = Obj(
    {"models": Map(Maybe(Str())), "skipped": Map(Str()), "metrics": Seq(Str(METRIC_NAMES))}
)
MAX_LINE_BYTES = 2**20  # a generated or scores line is a few hundred bytes


@dataclass(frozen=True)
class Image:
    """One generated image of generated.jsonl; ``path`` is checked to lie inside the run."""

    item: str
    arm: str
    seed: int
    path: Path
    seconds: float


@dataclass(frozen=True)
class Run:
    """A run folder as the report needs it; ``scores`` holds scores.jsonl's lines."""

    folder: Path
    info: dict[str, Any]
    families: dict[str, str]  # item id -> family
    images: tuple[Image, ...]
    scores: tuple[dict[str, Any], ...]
    scoring: dict[str, Any]  # scores.json
    notices: tuple[str, ...]  # the preview notices found in the images' PNG text

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def arms(self) -> list[str]:
        return [arm["name"] for arm in self.info["arms"]]

    @property
    def preview(self) -> bool:
        """True when the preview engine (random weights) made the images: run.json says so,
        or an image carries the preview notice."""
        checkpoint = self.info["engine"].get("checkpoint")
        return checkpoint in (None, "preview") or bool(self.notices)


def read_run(folder: Path) -> Run:
    """The run in ``folder``, every file checked; scores.jsonl must exist (the report reports
    scores: a run not yet scored is refused with the command that scores it)."""
    if not folder.is_dir():
        raise SigmaInputError(f"{folder}: not a run folder (no such folder)")
    if not (folder / "run.json").exists():
        raise SigmaInputError(f"{folder}: not a run folder (no run.json)")
    info = read_record(folder / "run.json", RUN_RECORD, what="run file", error=SigmaInputError)
    _check_info(folder / "run.json", info)
    if not (folder / "scores.jsonl").exists() or not (folder / "scores.json").exists():
        raise SigmaInputError(
            f"{folder} has no scores yet; run `python -m sigma_core evaluate score {folder}` first"
        )
    families = {line["id"]: line["family"] for _, line in benchmark_lines(folder)}
    missing = sorted(set(info["items"]) - set(families))
    if missing:
        raise SigmaInputError(f"{folder}: item {missing[0]!r} of run.json is not in the benchmark")
    images = tuple(_images(folder, info))
    scores = _scores(folder, info, families)
    scoring = read_record(
        folder / "scores.json", SCORES_RECORD, what="scores file", error=SigmaInputError
    )
    notices = tuple(n for image in images if (n := _notice(image.path)))
    return Run(folder, info, families, images, scores, scoring, notices)


def _check_info(path: Path, info: dict[str, Any]) -> None:
    """What run.json's schema cannot say: names are unique, the checkpoint is text or null."""
    for field, names in (("arms", _arm_names(info)), ("items", info["items"])):
        if not names or len(set(names)) < len(names):
            raise SigmaInputError(f"{path}: {field}: empty, or a name is there twice")
    checkpoint = info["engine"].get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise SigmaInputError(f"{path}: engine.checkpoint: expected a string or null")


def benchmark_lines(folder: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """benchmark.jsonl's lines, one at a time (a line may embed its images)."""
    return read_json_lines(
        folder / "benchmark.jsonl",
        BENCHMARK_LINE,
        what="benchmark",
        max_line_bytes=MAX_COMPOSITION_BYTES,
    )


def reference_images(
    folder: Path, line: dict[str, Any], number: int
) -> list[tuple[Reference, PILImage.Image]]:
    """A benchmark line's references with their images, by slot: read through the preset
    reader, so a path resolves inside the run folder only and every image is checked before
    it is decoded. Empty slots are left out."""
    try:
        comp = preset_from_dict(line["preset"], base_dir=folder, asset_dirs=(), check_images=False)
        refs = sorted((r for r in comp.references if r.image is not None), key=lambda r: r.slot)
        return [(ref, comp.load_image(ref)) for ref in refs]
    except SigmaInputError as e:
        raise SigmaInputError(f"{folder / 'benchmark.jsonl'}, line {number}: preset: {e}") from None


def _images(folder: Path, info: dict[str, Any]) -> Iterator[Image]:
    path = folder / "generated.jsonl"
    check = _LineCheck(set(_arm_names(info)), set(info["items"]))
    for number, line in read_json_lines(
        path, GENERATED_LINE, what="list of images", max_line_bytes=MAX_LINE_BYTES
    ):
        where = f"{path}, line {number}"
        check(where, line)
        try:
            real = resolve_image_path(line["file"], [folder], field_name="file")
        except PresetError as e:
            raise SigmaInputError(f"{where}: {e}") from None
        yield Image(line["item"], line["arm"], line["seed"], real, line["seconds"])


def _scores(
    folder: Path, info: dict[str, Any], families: dict[str, str]
) -> tuple[dict[str, Any], ...]:
    path = folder / "scores.jsonl"
    check = _LineCheck(set(_arm_names(info)), set(info["items"]))
    out = []
    for number, line in read_json_lines(
        path, SCORES_LINE, what="scores", max_line_bytes=MAX_LINE_BYTES
    ):
        where = f"{path}, line {number}"
        check(where, line)
        if families.get(line["item"]) != line["family"]:
            raise SigmaInputError(
                f"{where}: family {line['family']!r} is not the benchmark's for this item"
            )
        out.append(line)
    return tuple(out)


def _arm_names(info: dict[str, Any]) -> list[str]:
    return [arm["name"] for arm in info["arms"]]


class _LineCheck:
    """Refuses a line whose arm or item run.json does not list, or a second line for the same
    image (item, arm, seed): a count that is off would skew every mean."""

    def __init__(self, arms: set[str], items: set[str]) -> None:
        self.arms, self.items = arms, items
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(self, where: str, line: dict[str, Any]) -> None:
        if line["arm"] not in self.arms:
            raise SigmaInputError(f"{where}: arm {line['arm']!r} is not one of run.json's arms")
        if line["item"] not in self.items:
            raise SigmaInputError(f"{where}: item {line['item']!r} is not one of run.json's items")
        key = (line["item"], line["arm"], line["seed"])
        if key in self.seen:
            raise SigmaInputError(f"{where}: a second line for item, arm and seed {key}")
        self.seen.add(key)


def _notice(path: Path) -> str | None:
    """The preview notice a generated PNG carries in its text chunks, if any (a file that is
    not a PNG is a PresetError, which is a SigmaInputError)."""
    return find_png_text(path, PNG_NOTICE_KEY, max_bytes=4096)
