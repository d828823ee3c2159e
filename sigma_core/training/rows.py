"""One training row, parsed: SIGMA's parquet rows and the project's JSONL manifest lines become
:class:`TrainSample` objects, and a row that cannot be used is counted in a :class:`SkipCounter`
(never raised), so one bad row never stops a run.

Two formats are read:

- SIGMA's dataset (BAGEL's "seedxedit_multi" parquet form): a row is ``instruction_list``
  (``[[text]]``, raw SIGMA syntax with ``<image_k>`` placeholders) and ``image_list`` (encoded
  images: references 1..n, then the target last).
- A JSONL manifest: one preset object per line (the schema :func:`preset_from_dict` reads; image
  paths relative to the manifest's folder, or data URIs) plus a ``"target"`` key.

The target is the image after the references: slot n + 1 of a row, the slot after the highest
reference slot of a manifest line. A prompt may place it (``<image_3>`` after two references):
SIGMA's SepPhotoTokenIterableDataset.parse_row then puts the generated block there instead of
last, and :func:`sigma_core.planning.build_plan` does the same with the sample's
``target_slot``.

Images go through the project's safe loader and its limits. Nothing is read with pickle. Where
the rows come from, and in which order, is :mod:`sigma_core.training.data`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from sigma_core.errors import ImageInputError, PresetError, SigmaInputError
from sigma_core.inputs.composition import Composition, Reference, resolve_image_path
from sigma_core.inputs.fields import is_int
from sigma_core.inputs.images import (
    DEFAULT_LIMITS,
    ImageLimits,
    is_data_uri,
    load_image,
    read_image_bytes,
)
from sigma_core.inputs.preset import parse_json, preset_from_dict
from sigma_core.inputs.prompt import placed_slots
from sigma_core.limits import MAX_ASPECT, MAX_REFERENCES

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
    image, no crop left to apply), the RGB target, where it came from for skip reports, and
    the target's slot (its prompt may place it)."""

    composition: Composition
    target: Image.Image
    source: str
    target_slot: int  # the slot a placeholder of the target carries, placed or not

    @property
    def images(self) -> dict[int, Image.Image]:
        """The reference images by slot."""
        out = {}
        for ref in self.composition.references:
            assert isinstance(ref.image, Image.Image), "a TrainSample's references are decoded"
            out[ref.slot] = ref.image
        return out


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
    """Every placeholder has an image (``available``: the target's slot included), and the
    project's parser takes the prompt."""
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
    encoded = _row_images(row.get(IMAGE_COLUMN), source, skipped)
    if encoded is None:
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
    if not _checked_prompt(comp, set(range(1, n + 2)), source, skipped):
        return None
    try:
        target = load_image(encoded[-1], limits=limits, name="target")
        _check_target(target, "target")
    except ImageInputError as e:
        skipped.skip(UNDECODABLE, source, str(e))
        return None
    decoded = _decoded(comp, limits, source, skipped)
    return None if decoded is None else TrainSample(decoded, target, source, n + 1)


def _row_images(images: Any, source: str, skipped: SkipCounter) -> list[bytes] | None:
    """The encoded images of a parquet row (references, then the target), or None after
    counting why not; nothing is decoded yet."""
    if not isinstance(images, list | tuple) or len(images) < 2:
        count = len(images) if isinstance(images, list | tuple) else 0
        skipped.skip(NO_TARGET, source, f"{count} image(s); a row needs references and a target")
        return None
    if len(images) - 1 > MAX_REFERENCES:
        skipped.skip(TOO_MANY_IMAGES, source, f"{len(images) - 1} references > {MAX_REFERENCES}")
        return None
    encoded = []
    for i, cell in enumerate(images):
        data = _image_bytes(cell)
        if data is None:
            kind = type(cell).__name__
            skipped.skip(UNDECODABLE, source, f"{IMAGE_COLUMN}[{i}] is {kind}, not image bytes")
            return None
        encoded.append(data)
    return encoded


def sample_from_preset_line(
    text: str,
    folder: Path,
    source: str,
    skipped: SkipCounter,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> TrainSample | None:
    """A sample from one manifest line (a preset plus ``"target"``), or None after counting."""
    parsed = _manifest_line(text, source, skipped)
    if parsed is None:
        return None
    data, target_field = parsed
    target_slot = _target_slot(data.get("references"))
    try:
        comp = preset_from_dict(
            data, base_dir=folder, asset_dirs=(), check_images=False, target_slot=target_slot
        )
    except ValueError as e:  # PresetError, or a placeholder too long to read as a number
        slot = _unfilled_slot(data, target_slot)
        reason = MISSING_PLACEHOLDER if slot is not None else BAD_PRESET
        skipped.skip(reason, source, str(e))
        return None
    available = {r.slot for r in comp.references if r.image is not None} | {target_slot}
    if not _checked_prompt(comp, available, source, skipped):
        return None
    try:
        target = _manifest_target(target_field, folder, limits)
    except ImageInputError as e:
        skipped.skip(UNDECODABLE, source, str(e))
        return None
    except PresetError as e:
        skipped.skip(BAD_PRESET, source, str(e))
        return None
    decoded = _decoded(comp, limits, source, skipped)
    return None if decoded is None else TrainSample(decoded, target, source, target_slot)


def _manifest_line(
    text: str, source: str, skipped: SkipCounter
) -> tuple[dict[str, Any], str] | None:
    """The preset object of a manifest line and its ``"target"`` (taken out of it), or None
    after counting why not."""
    try:
        data = parse_json(text, source)
    except PresetError as e:
        skipped.skip(BAD_PRESET, source, str(e))
        return None
    if not isinstance(data, dict):
        skipped.skip(BAD_PRESET, source, f"expected a JSON object, got {type(data).__name__}")
        return None
    data = dict(data)
    target = data.pop("target", None)
    if not isinstance(target, str) or not target.strip():
        skipped.skip(NO_TARGET, source, '"target" must be a relative image path or a data URI')
        return None
    return data, target


def _manifest_target(field: str, folder: Path, limits: ImageLimits) -> Image.Image:
    """A manifest's ``"target"``: a data URI, or an image path inside the manifest's folder.
    Raises ImageInputError (unreadable, too large, too elongated) or PresetError (outside)."""
    if is_data_uri(field):
        target = load_image(field, limits=limits, name="target")
    else:
        path = resolve_image_path(field, [folder], field_name="target")
        raw = read_image_bytes(path, limits=limits, name="target")
        target = load_image(raw, limits=limits, name="target")
    _check_target(target, "target")
    return target


def _target_slot(refs: Any) -> int:
    """The slot of a manifest line's target: the one after its highest reference slot (read
    from the raw references, entries of any shape), as a row's target follows its references."""
    slots = [r.get("slot") for r in refs if isinstance(r, dict)] if isinstance(refs, list) else []
    return max((s for s in slots if is_int(s)), default=0) + 1


def _unfilled_slot(data: Mapping[str, Any], target_slot: int) -> int | None:
    """A slot the preset's prompt places that neither a reference with an image nor the target
    fills, if any; read from the raw dict, since the preset reader refuses such a preset before
    building it."""
    prompt, refs = data.get("prompt"), data.get("references", [])
    if not isinstance(prompt, str) or not isinstance(refs, list) or len(prompt) > 100_000:
        return None
    filled = _filled_slots(refs) | {target_slot}
    try:
        return next((k for k in placed_slots(prompt) if k not in filled), None)
    except ValueError:
        return None


def _filled_slots(refs: list[Any]) -> set[int]:
    """The slots of a raw preset's references that have an image (entries of any shape)."""
    return {
        r["slot"]
        for r in refs
        if isinstance(r, dict) and isinstance(r.get("slot"), int) and r.get("image") is not None
    }
