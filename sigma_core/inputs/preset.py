"""The preset format: a composition as versioned JSON, in files and in PNG metadata.

A preset is the unit users save, share and reload, so the format is strict: unknown fields,
wrong types and bad values are refused with a message that names the field and the fix. Saving
is canonical (save, load, save gives the same bytes). Older versions are migrated on load.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sigma_core.errors import PresetError
from sigma_core.inputs.attributes import UnknownAttributeError, normalize_attribute
from sigma_core.inputs.composition import PROJECT_ASSETS, Composition, Reference
from sigma_core.inputs.fields import Problems, check_keys, is_int, kind_of
from sigma_core.inputs.images import encode_data_uri, is_data_uri, read_image_bytes
from sigma_core.inputs.png import find_png_text, save_png_with_text
from sigma_core.inputs.settings import Settings

PRESET_FORMAT = "sigma-studio/preset"
PRESET_VERSION = 1
MAX_PRESET_BYTES = 200 * 2**20
PNG_METADATA_KEY = "sigma-studio"
PNG_NOTICE_KEY = "sigma-studio-notice"

_TOP_KEYS = ("format", "version", "name", "prompt", "references", "settings")
_REF_KEYS = ("slot", "image", "attributes", "entity", "crop")

# version n -> function turning a version-n dict into a version n+1 dict
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


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
    composition: Composition, path: str | os.PathLike, *, embed_images: bool = False
) -> Path:
    """Write a preset. Without embedding, image paths are rewritten relative to the new folder
    (or to assets/), so the preset still loads after it moves; an image outside both is an error."""
    path = Path(path)
    comp = composition
    if not embed_images:
        comp = _rebase(composition, path.resolve().parent)
    text = dumps_preset(comp, embed_images=embed_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic: a failed save never destroys the previous preset
    return path


def _image_field(comp: Composition, ref: Reference, embed: bool) -> str | None:
    src, name = ref.image, f"references[slot {ref.slot}].image"
    if src is None:
        return None
    if isinstance(src, str):
        if is_data_uri(src) or not embed:
            return src
        return encode_data_uri(read_image_bytes(comp.resolve_path(src, field_name=name)))
    if not embed:
        raise PresetError(
            f"{name}: this image has no file in the preset's folder or assets/; "
            "save with embedded images"
        )
    if isinstance(src, bytes):
        return encode_data_uri(src)
    if isinstance(src, os.PathLike):
        return encode_data_uri(read_image_bytes(src))
    img = src if isinstance(src, Image.Image) else Image.fromarray(np.asarray(src))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return encode_data_uri(buf.getvalue())


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
) -> Composition:
    """Validate and build; every problem is reported with its field path.

    With ``check_images`` every image is opened and decoded now (limits apply before
    decoding), so a bad file is reported at load time, not halfway through a generation.
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
        references=references,
        settings=settings,
        name=name,
        base_dir=base_dir,
        asset_dirs=tuple(asset_dirs) if asset_dirs is not None else (PROJECT_ASSETS,),
    )
    known = {r.slot for r in comp.references}
    missing = sorted(set(comp.referenced_slots()) - known)
    if missing:
        raise PresetError(
            f"prompt: places slot {missing[0]}, but references has no slot {missing[0]} "
            f"(slots: {', '.join(map(str, sorted(known))) or 'none'}); add the reference "
            "or fix the prompt"
        )
    if check_images:
        comp.check_images()
    return comp


def loads_preset(
    text: str,
    *,
    base_dir: Path | None = None,
    asset_dirs: Sequence[Path] | None = None,
    check_images: bool = True,
    where: str = "preset",
) -> Composition:
    """A composition from preset JSON text; ``where`` (a file name) prefixes the messages."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PresetError(
            f"{where}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
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
    try:
        size = path.stat().st_size
    except OSError as e:
        raise PresetError(f"{where}: cannot read the preset ({e.strerror})") from None
    if not path.is_file():
        raise PresetError(f"{where}: not a file")
    if size > MAX_PRESET_BYTES:
        raise PresetError(
            f"{where}: {size / 2**20:.1f} MB is larger than the {MAX_PRESET_BYTES >> 20} MB "
            "preset limit"
        )
    try:
        text = path.read_text(encoding="utf-8")
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
) -> Path:
    """Save ``image`` as PNG with the composition in a compressed iTXt chunk.

    References are embedded by default so the PNG alone restores the whole composition.
    ``notice`` (e.g. that a preview engine made the image) goes in a readable text chunk.
    """
    texts = {PNG_METADATA_KEY: dumps_preset(composition, embed_images=embed_images)}
    if notice:
        texts[PNG_NOTICE_KEY] = notice
    return save_png_with_text(image, path, texts, compressed={PNG_METADATA_KEY})


def read_png_composition(
    path: str | os.PathLike, *, asset_dirs: Sequence[Path] | None = None
) -> Composition:
    """The composition stored by :func:`write_png`, read without decoding pixels."""
    path = Path(path)
    text = find_png_text(path, PNG_METADATA_KEY)
    if text is None:
        raise PresetError(
            f"{path}: this PNG holds no SIGMA Studio composition (only images saved by SIGMA "
            "Studio carry one)"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PresetError(f"{path}: the stored composition is malformed JSON ({e.msg})") from None
    return preset_from_dict(data, base_dir=path.resolve().parent, asset_dirs=asset_dirs)
