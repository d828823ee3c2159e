"""The preset format: a composition as versioned JSON, in files and in PNG metadata.

A preset is the unit users save, share and reload, so the format is strict: unknown fields,
wrong types and bad values are refused with a message that names the field and the fix. Saving
is canonical (save, load, save gives the same bytes). Older versions are migrated on load.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sigma_core.errors import ImageInputError, PresetError, SigmaError
from sigma_core.inputs.attributes import UnknownAttributeError, normalize_attribute
from sigma_core.inputs.bounded import read_bounded
from sigma_core.inputs.composition import PROJECT_ASSETS, Composition, Reference
from sigma_core.inputs.fields import Problems, check_keys, is_int, kind_of
from sigma_core.inputs.images import embeddable_bytes, encode_data_uri, is_data_uri, size_text
from sigma_core.inputs.outfile import write_atomic
from sigma_core.inputs.png import find_png_text, save_png_with_text
from sigma_core.inputs.settings import AUTO_LAYOUT, Settings
from sigma_core.limits import MAX_COMPOSITION_BYTES, MAX_JSON_DEPTH

PRESET_FORMAT = "sigma-studio/preset"
PRESET_VERSION = 2
PNG_METADATA_KEY = "sigma-studio"
PNG_NOTICE_KEY = "sigma-studio-notice"

_TOP_KEYS = ("format", "version", "name", "prompt", "references", "settings")
_REF_KEYS = ("slot", "image", "attributes", "entity", "crop")


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added settings.layout. A version-1 preset was written when the only layout was
    SIGMA's released inferencer; "auto" gives exactly that on every checkpoint that existed then
    (SIGMA's weights, and weights trained here, whose cards said "inference")."""
    out = {**data, "version": 2}
    if isinstance(data.get("settings"), dict) and "layout" not in data["settings"]:
        out["settings"] = {**data["settings"], "layout": AUTO_LAYOUT}
    return out


# version n -> function turning a version-n dict into a version n+1 dict
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


# ----------------------------------------------------------------------------- writing


def preset_to_dict(composition: Composition, *, embed_images: bool = False) -> dict[str, Any]:
    """The preset as a JSON-ready dict; references sorted by slot."""
    return {
        "format": PRESET_FORMAT,
        "version": PRESET_VERSION,
        "name": composition.name,
        "prompt": composition.prompt,
        "references": [
            {
                "slot": r.slot,
                "image": _image_field(composition, r, embed_images),
                "attributes": list(r.attributes),
                "entity": r.entity,
                "crop": list(r.crop) if r.crop is not None else None,
            }
            for r in sorted(composition.references, key=lambda r: r.slot)
        ],
        "settings": composition.settings.to_dict(),
    }


def dumps_preset(composition: Composition, *, embed_images: bool = False) -> str:
    """Canonical JSON: the same composition always gives the same bytes."""
    data = preset_to_dict(composition, embed_images=embed_images)
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def save_preset(
    composition: Composition,
    path: str | os.PathLike,
    *,
    embed_images: bool = False,
    max_bytes: int = MAX_COMPOSITION_BYTES,
) -> Path:
    """Write a preset, atomically: a failed save never destroys the previous preset.

    Without embedding, image paths are rewritten relative to the new folder (or to assets/), so
    the preset still loads after it moves; an image outside both is an error. A preset over
    ``max_bytes`` is refused, since loading it would be.
    """
    path = Path(path)
    comp = composition
    if not embed_images:
        comp = _rebase(composition, path.resolve().parent)
    data = dumps_preset(comp, embed_images=embed_images).encode("utf-8")
    if len(data) > max_bytes:
        raise PresetError(
            f"{path}: the preset would be {size_text(len(data))}, larger than the "
            f"{size_text(max_bytes)} limit; embed fewer or smaller images"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PresetError(f"{path}: cannot create its folder ({e.strerror or e})") from None
    return write_atomic(path, lambda f: f.write(data), overwrite=True)


def _image_field(comp: Composition, ref: Reference, embed: bool) -> str | None:
    src, name = ref.image, f"references[slot {ref.slot}].image"
    if src is None:
        return None
    if isinstance(src, str) and (is_data_uri(src) or not embed):
        return src
    if not embed:
        raise PresetError(
            f"{name}: this image has no file in the preset's folder or assets/; "
            "save with embedded images"
        )
    if isinstance(src, str):
        src = comp.resolve_path(src, field_name=name)
    return encode_data_uri(embeddable_bytes(src, name=name))


def _rebase(comp: Composition, new_dir: Path) -> Composition:
    refs = []
    for ref in comp.references:
        if isinstance(ref.image, str) and not is_data_uri(ref.image):
            real = comp.resolve_path(ref.image)
            ref = replace(ref, image=_relative_to_roots(real, [new_dir, *comp.asset_dirs], ref))
        refs.append(ref)
    return replace(comp, references=tuple(refs), base_dir=new_dir)


def _relative_to_roots(real: Path, roots: Sequence[Path], ref: Reference) -> str:
    for root in roots:
        root = root.resolve()
        if real.is_relative_to(root):
            return real.relative_to(root).as_posix()
    raise PresetError(
        f"references[slot {ref.slot}].image: {real} is outside the preset's folder and assets/; "
        "save with embedded images, or copy the image next to the preset"
    )


# ----------------------------------------------------------------------------- reading


def preset_from_dict(
    data: Any,
    *,
    base_dir: Path | None = None,
    asset_dirs: Sequence[Path] | None = None,
    check_images: bool = True,
    target_slot: int | None = None,
) -> Composition:
    """Validate and build; every problem is reported with its field path.

    With ``check_images`` every image is opened and decoded now (limits apply before
    decoding), so a bad file is reported at load time, not halfway through a generation.
    ``target_slot``: a slot the prompt may place with no reference in it (a training manifest
    line's target, see :mod:`sigma_core.training.rows`).
    """
    data = _migrate(data)
    problems = Problems()
    check_keys(data, _TOP_KEYS, "", problems)
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        problems.add("prompt", f"expected a string, got {kind_of(prompt)}")
    elif not prompt.strip():
        problems.add(
            "prompt", "is empty; describe the image and place references with [1], [2] ..."
        )
    name = data.get("name", "")
    if not isinstance(name, str):
        problems.add("name", f"expected a string, got {kind_of(name)}")
    references = _parse_references(data.get("references", []), problems)
    settings = Settings.from_dict(data.get("settings", {}), problems)
    problems.raise_if_any()
    comp = Composition(
        prompt=prompt,
        references=tuple(references),
        settings=settings,
        name=name,
        base_dir=base_dir,
        asset_dirs=tuple(asset_dirs) if asset_dirs is not None else (PROJECT_ASSETS,),
    )
    known = {r.slot for r in comp.references}
    placeable = known if target_slot is None else known | {target_slot}
    missing = sorted(set(comp.referenced_slots()) - placeable)
    if missing:
        raise PresetError(
            f"prompt: places slot {missing[0]}, but references has no slot {missing[0]} "
            f"(slots: {', '.join(map(str, sorted(known))) or 'none'}); add the reference "
            "or fix the prompt"
        )
    if check_images:
        comp.check_images()
    return comp


def parse_json(
    text: str,
    where: str,
    *,
    error: type[SigmaError] = PresetError,
    needs: str = "a preset needs 4",
) -> Any:
    """JSON from a stranger, parsed only when it is safe to: nesting is measured first (deep
    nesting overflows Python's stack inside ``json.loads``), and numbers are strict (no NaN or
    Infinity, no integer too long for Python to convert). ``where`` prefixes the messages;
    ``error`` is what a refusal raises, ``needs`` says how deep a valid file nests."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise error(
            f"{where}: objects and lists are nested {depth} levels deep, over the limit of "
            f"{MAX_JSON_DEPTH} levels ({needs})"
        )
    try:
        return json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_whole_int
        )
    except json.JSONDecodeError as e:
        raise error(
            f"{where}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except PresetError as e:
        raise error(f"{where}: {e}") from None


# Bytes that are not a quote or a bracket, which nesting does not depend on.
_NOT_MARKS = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_OPENERS, _CLOSERS = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
_MARK_CHUNK = 2**20  # marks per step: a file of brackets is measured in little memory


def json_depth(text: str) -> int:
    """How deep objects and lists nest in JSON text, in linear time, without parsing it.

    Escaped backslashes and quotes are dropped first; then every quote left opens or closes a
    string, and the brackets that count are those outside strings.
    """
    escapes_gone = text.replace("\\\\", "").replace('\\"', "")
    marks = escapes_gone.encode("utf-8", "surrogatepass").translate(None, _NOT_MARKS)
    codes = np.frombuffer(marks, np.uint8)
    quotes = depth = deepest = 0
    for start in range(0, len(codes), _MARK_CHUNK):
        chunk = codes[start : start + _MARK_CHUNK]
        quote_count = quotes + np.cumsum(chunk == ord('"'))
        step = np.isin(chunk, _OPENERS).astype(np.int64) - np.isin(chunk, _CLOSERS)
        step[quote_count % 2 == 1] = 0  # inside a string
        levels = depth + np.cumsum(step)
        deepest = max(deepest, int(levels.max()))
        quotes, depth = int(quote_count[-1]), int(levels[-1])
    return deepest


def _no_constant(name: str) -> Any:
    raise PresetError(f"{name} is not a number a preset accepts; write a finite number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise PresetError(f"the number {literal[:40]} is too large (it reads as infinity)")
    return value


def _whole_int(digits: str) -> int:
    try:
        return int(digits)
    except ValueError:  # Python refuses to convert very long digit strings (quadratic time)
        raise PresetError(
            f"an integer of {len(digits.lstrip('-'))} digits is too long to read"
        ) from None


def loads_preset(
    text: str,
    *,
    base_dir: Path | None = None,
    asset_dirs: Sequence[Path] | None = None,
    check_images: bool = True,
    where: str = "preset",
) -> Composition:
    """A composition from preset JSON text; ``where`` (a file name) prefixes the messages."""
    data = parse_json(text, where)
    try:
        return preset_from_dict(
            data, base_dir=base_dir, asset_dirs=asset_dirs, check_images=check_images
        )
    except PresetError as e:
        if where == "preset":
            raise
        raise PresetError(f"{where}:\n{e}") from None


def load_preset(
    path: str | os.PathLike,
    *,
    asset_dirs: Sequence[Path] | None = None,
    check_images: bool = True,
) -> Composition:
    """Read and validate a preset file, its images included."""
    path = Path(path)
    where = str(path)
    # its kind and size checked before it is opened, and the read bounded too
    data = read_bounded(path, MAX_COMPOSITION_BYTES, what="preset", error=PresetError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PresetError(f"{where}: not UTF-8 text; a preset is a JSON file") from None
    return loads_preset(
        text,
        base_dir=path.resolve().parent,
        asset_dirs=asset_dirs,
        check_images=check_images,
        where=where,
    )


def load_composition(path: str | os.PathLike) -> Composition:
    """A preset file, or a PNG saved by SIGMA Studio (which carries its composition)."""
    if str(path).lower().endswith(".png"):
        return read_png_composition(path)
    return load_preset(path)


def _migrate(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PresetError(f"preset: expected a JSON object at the top, got {kind_of(data)}")
    fmt = data.get("format")
    if fmt != PRESET_FORMAT:
        raise PresetError(
            f"format: expected '{PRESET_FORMAT}', got {fmt!r}; this is not a SIGMA Studio preset"
        )
    version = data.get("version")
    if not is_int(version) or version < 1:
        raise PresetError(f"version: expected a positive integer, got {version!r}")
    if version > PRESET_VERSION:
        raise PresetError(
            f"version: this preset is version {version}, written by a newer SIGMA Studio; this "
            f"one reads versions up to {PRESET_VERSION}. Update SIGMA Studio to open it."
        )
    while version < PRESET_VERSION:
        data = _MIGRATIONS[version](data)
        version = data["version"]
    return data


def _parse_references(raw: Any, problems: Problems) -> list[Reference]:
    if not isinstance(raw, list):
        problems.add("references", f"expected a list, got {kind_of(raw)}")
        return []
    references: list[Reference] = []
    seen: dict[int, int] = {}
    for i, item in enumerate(raw):
        ref = _parse_reference(item, f"references[{i}]", problems)
        if ref is None:
            continue
        if ref.slot in seen:
            problems.add(
                f"references[{i}].slot",
                f"slot {ref.slot} is already used by references[{seen[ref.slot]}]",
            )
            continue
        seen[ref.slot] = i
        references.append(ref)
    return references


def _parse_reference(raw: Any, path: str, problems: Problems) -> Reference | None:
    if not isinstance(raw, dict):
        problems.add(path, f"expected an object, got {kind_of(raw)}")
        return None
    before = len(problems.items)
    check_keys(raw, _REF_KEYS, path + ".", problems)
    slot = raw.get("slot")
    if not is_int(slot) or slot < 1:
        problems.add(f"{path}.slot", f"{slot!r} must be an integer >= 1")
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        problems.add(
            f"{path}.image", f"expected a relative path, a data URI or null, got {kind_of(image)}"
        )
    attributes = _parse_attributes(raw.get("attributes", []), f"{path}.attributes", problems)
    entity = raw.get("entity", "")
    if not isinstance(entity, str):
        problems.add(f"{path}.entity", f"expected a string, got {kind_of(entity)}")
    crop = raw.get("crop")
    _check_crop(crop, f"{path}.crop", problems)
    if len(problems.items) > before:
        return None
    assert is_int(slot)  # a problem was added otherwise
    return Reference(slot=slot, image=image, attributes=attributes, entity=entity, crop=crop)


def _parse_attributes(attrs: Any, path: str, problems: Problems) -> tuple[str, ...]:
    """A list of attribute names; it may be empty (raw SIGMA prompts carry their own tokens)."""
    if not isinstance(attrs, list):
        problems.add(path, 'expected a list such as ["<id>"]')
        return ()
    norm: list[str] = []
    for j, a in enumerate(attrs):
        try:
            norm.append(normalize_attribute(a))
        except UnknownAttributeError as e:
            problems.add(f"{path}[{j}]", str(e))
    return tuple(norm)


def _check_crop(crop: Any, path: str, problems: Problems) -> None:
    if crop is None:
        return
    if not (isinstance(crop, list) and len(crop) == 4 and all(is_int(c) for c in crop)):
        problems.add(path, "expected null or [left, top, right, bottom] in pixels")
    elif not (0 <= crop[0] < crop[2] and 0 <= crop[1] < crop[3]):
        problems.add(path, f"{crop} must satisfy 0 <= left < right and 0 <= top < bottom")


# ----------------------------------------------------------------------------- PNG metadata


def write_png(
    image: Image.Image,
    composition: Composition,
    path: str | os.PathLike,
    *,
    embed_images: bool = True,
    notice: str | None = None,
    overwrite: bool = False,
    max_bytes: int = MAX_COMPOSITION_BYTES,
    warnings: list[str] | None = None,
) -> Path:
    """Save ``image`` as PNG with the composition in a compressed iTXt chunk; returns the path
    written (see :func:`~sigma_core.inputs.outfile.write_atomic`: an existing file is kept and
    the image goes to ``stem-2.png`` unless ``overwrite``).

    Only the references the prompt places are stored: the PNG records what the image was made
    from, and a file named in an unused slot is never copied into it. They are embedded by
    default, so the PNG alone restores the composition. When the images cannot be embedded (the
    result would be over ``max_bytes``, which the reader refuses, or a file is gone), the
    composition is stored without them rather than losing the image. Such notes are appended to
    ``warnings``. ``notice`` (e.g. that a preview engine made the image) goes in a readable text
    chunk.
    """
    placed = set(composition.referenced_slots())
    comp = replace(
        composition, references=tuple(r for r in composition.references if r.slot in placed)
    )
    notes = warnings if warnings is not None else []
    text = _stored_text(comp, embed_images, max_bytes, notes)
    texts = {PNG_METADATA_KEY: text}
    if notice:
        texts[PNG_NOTICE_KEY] = notice
    written = save_png_with_text(
        image, path, texts, compressed={PNG_METADATA_KEY}, overwrite=overwrite
    )
    if written != Path(path):
        notes.append(
            f"{path} appeared while the image was made; it is kept, and the image "
            f"was saved as {written}"
        )
    return written


def _stored_text(comp: Composition, embed: bool, max_bytes: int, notes: list[str]) -> str:
    """The composition's JSON for a PNG, within ``max_bytes``: without its images if need be."""
    try:
        text = dumps_preset(comp, embed_images=embed)
        size = len(text.encode("utf-8"))
        if size <= max_bytes:
            return text
        reason = (
            f"{size_text(size)} is over the {size_text(max_bytes)} limit for a PNG's composition"
        )
    except (ImageInputError, PresetError) as e:
        reason = str(e)
    bare = replace(comp, references=tuple(replace(r, image=None) for r in comp.references))
    text = dumps_preset(bare)
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise PresetError(
            f"the composition is {size_text(size)} even without its images, over the "
            f"{size_text(max_bytes)} limit for a PNG's composition"
        )
    notes.append(
        f"the references are not embedded: {reason}; the PNG keeps the prompt and settings, "
        "keep the reference images to reproduce it"
    )
    return text


def read_png_composition(
    path: str | os.PathLike,
    *,
    asset_dirs: Sequence[Path] | None = None,
    max_bytes: int = MAX_COMPOSITION_BYTES,
) -> Composition:
    """The composition stored by :func:`write_png`, read without decoding pixels."""
    path = Path(path)
    text = find_png_text(path, PNG_METADATA_KEY, max_bytes=max_bytes)
    if text is None:
        raise PresetError(
            f"{path}: this PNG holds no SIGMA Studio composition (only images saved by SIGMA "
            "Studio carry one)"
        )
    data = parse_json(text, f"{path} (stored composition)")
    return preset_from_dict(data, base_dir=path.resolve().parent, asset_dirs=asset_dirs)
