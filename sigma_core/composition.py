"""The composition a user builds (prompt, references, settings) and its JSON preset format.

A preset is the unit users save, share and reload, so the format is strict and versioned:
unknown fields, wrong types and bad values are refused with a message that names the field and
the fix, and image paths may only point inside the preset's own folder or the project's assets/.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from sigma_core.attributes import UnknownAttributeError, normalize_attribute
from sigma_core.errors import ImageInputError, PresetError
from sigma_core.images import (
    DEFAULT_LIMITS,
    ImageLimits,
    ImageSource,
    encode_data_uri,
    is_data_uri,
    load_image,
    read_image_bytes,
)

PRESET_FORMAT = "sigma-studio/preset"
PRESET_VERSION = 1
PROJECT_ASSETS = Path(__file__).resolve().parent.parent / "assets"
PNG_METADATA_KEY = "sigma-studio"
PNG_NOTICE_KEY = "sigma-studio-notice"

RENORM_TYPES = ("global", "channel", "text_channel")
MIN_SIDE, MAX_SIDE, SIZE_STRIDE = 64, 1024, 16  # max: BAGEL's 64x64 latent position table
FOLLOW_LAST_REFERENCE = "last-reference"

# The two prompt syntaxes. Raw SIGMA placeholders, parsed by SIGMA's training regex
# (case-sensitive, 1-based), and template slot references: [2], or [2:style] / [2:id+clothing]
# to override the slot's attributes for that occurrence.
IMAGE_PLACEHOLDER = re.compile(r"<image(?:[_\s]+)(\d+)>")
SLOT_REFERENCE = re.compile(r"\[(\d+)(?::([^\]]*))?\]")


# ----------------------------------------------------------------------------- dataclasses


@dataclass
class Settings:
    """Sampling settings. Defaults are those of SIGMA's inference code."""

    size: tuple[int, int] | None = None  # (width, height); None follows the last reference
    num_timesteps: int = 50
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 2.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    timestep_shift: float = 3.0
    cfg_renorm_type: str = "text_channel"
    cfg_renorm_min: float = 0.0
    seed: int | None = 42  # None draws a fresh seed per run
    mask: bool = True  # SIGMA's intra-group attention mask
    attribute_projection: bool = True  # W_tau; a no-op for checkpoints without it

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise PresetError("\n".join(problems))

    def problems(self, prefix: str = "settings") -> list[str]:
        """Every invalid value, each with its field path and the fix."""
        out: list[str] = []
        if self.size is not None:
            if not _is_pair(self.size, int):
                out.append(f"{prefix}.size: expected [width, height] or '{FOLLOW_LAST_REFERENCE}'")
            else:
                for axis, v in zip(("width", "height"), self.size, strict=True):
                    if v % SIZE_STRIDE or not MIN_SIDE <= v <= MAX_SIDE:
                        out.append(
                            f"{prefix}.size: {axis} {v} must be a multiple of {SIZE_STRIDE} "
                            f"between {MIN_SIDE} and {MAX_SIDE}"
                        )
        if not _is_int(self.num_timesteps) or self.num_timesteps < 2:
            out.append(f"{prefix}.num_timesteps: {self.num_timesteps!r} must be an integer >= 2")
        for name in ("cfg_text_scale", "cfg_img_scale", "cfg_renorm_min"):
            v = getattr(self, name)
            if not _is_number(v) or v < 0:
                out.append(f"{prefix}.{name}: {v!r} must be a number >= 0")
        if _is_number(self.cfg_renorm_min) and self.cfg_renorm_min > 1:
            out.append(f"{prefix}.cfg_renorm_min: {self.cfg_renorm_min!r} must be <= 1")
        iv = self.cfg_interval
        if not _is_pair(iv, (int, float)) or not 0 <= iv[0] <= iv[1] <= 1:
            out.append(
                f"{prefix}.cfg_interval: {iv!r} must be [start, end] with 0 <= start <= end <= 1"
            )
        if not _is_number(self.timestep_shift) or self.timestep_shift <= 0:
            out.append(f"{prefix}.timestep_shift: {self.timestep_shift!r} must be a number > 0")
        if self.cfg_renorm_type not in RENORM_TYPES:
            out.append(
                f"{prefix}.cfg_renorm_type: {self.cfg_renorm_type!r} is not one of "
                f"{', '.join(RENORM_TYPES)}{_did_you_mean(self.cfg_renorm_type, RENORM_TYPES)}"
            )
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            out.append(f"{prefix}.seed: {self.seed!r} must be null (random) or 0 <= seed < 2^63")
        for name in ("mask", "attribute_projection"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{prefix}.{name}: {getattr(self, name)!r} must be true or false")
        return out


@dataclass
class Reference:
    """One reference slot: an image and what it contributes.

    ``image`` is a data URI or a path relative to the preset's folder or assets/ when the
    reference comes from a preset; API callers may also pass bytes, a PIL image or an array.
    ``None`` is an empty slot. ``crop`` is (left, top, right, bottom) in pixels of the image
    after EXIF orientation.
    """

    slot: int
    image: ImageSource | None
    attributes: tuple[str, ...]
    entity: str = ""
    crop: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        try:
            self.attributes = _normalize_attributes(self.attributes)
        except UnknownAttributeError as e:
            raise PresetError(f"references[slot {self.slot}].attributes: {e}") from None
        if not _is_int(self.slot) or self.slot < 1:
            raise PresetError(f"reference slot {self.slot!r} must be an integer >= 1")


@dataclass
class Composition:
    """What the model reads: a prompt that places references, the references, the settings.

    ``base_dir`` is the folder of the preset it was loaded from; relative image paths resolve
    against it first, then against ``asset_dirs``. Neither is written to JSON.
    """

    prompt: str
    references: list[Reference] = field(default_factory=list)
    settings: Settings = field(default_factory=Settings)
    name: str = ""
    base_dir: Path | None = field(default=None, compare=False, repr=False)
    asset_dirs: tuple[Path, ...] = field(default=(PROJECT_ASSETS,), compare=False, repr=False)

    def __post_init__(self) -> None:
        slots = [r.slot for r in self.references]
        dupes = sorted({s for s in slots if slots.count(s) > 1})
        if dupes:
            raise PresetError(f"references: slot {dupes[0]} is used by more than one reference")

    def reference(self, slot: int) -> Reference | None:
        return next((r for r in self.references if r.slot == slot), None)

    def referenced_slots(self) -> list[int]:
        """Slots the prompt places, in order, repeats included (raw syntax wins if present)."""
        pattern = IMAGE_PLACEHOLDER if IMAGE_PLACEHOLDER.search(self.prompt) else SLOT_REFERENCE
        return [int(m.group(1)) for m in pattern.finditer(self.prompt)]

    # -- images

    def resolve_path(self, rel: str, *, field_name: str = "image") -> Path:
        """The real file a preset-relative image path names, refusing anything that escapes."""
        return resolve_image_path(rel, self._roots(), field_name=field_name)

    def load_image(self, ref: Reference, *, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
        """The reference's image as RGB, oriented and cropped."""
        name = f"references[slot {ref.slot}].image"
        if ref.image is None:
            raise ImageInputError(f"{name}: slot {ref.slot} is empty; add an image first")
        src = ref.image
        if isinstance(src, str) and not is_data_uri(src):
            src = read_image_bytes(
                self.resolve_path(src, field_name=name), limits=limits, name=name
            )
        return load_image(src, limits=limits, crop=ref.crop, name=name)

    def load_images(self, *, limits: ImageLimits = DEFAULT_LIMITS) -> dict[int, Image.Image]:
        """The images of the slots the prompt places, by slot, each read once."""
        out = {}
        for slot in dict.fromkeys(self.referenced_slots()):
            ref = self.reference(slot)
            if ref is not None and ref.image is not None:
                out[slot] = self.load_image(ref, limits=limits)
        return out

    def check_images(self, *, limits: ImageLimits = DEFAULT_LIMITS) -> None:
        """Open every reference image; report all the bad ones at once."""
        problems = []
        for ref in self.references:
            if ref.image is not None:
                try:
                    self.load_image(ref, limits=limits)
                except (ImageInputError, PresetError) as e:
                    problems.append(str(e))
        if problems:
            raise PresetError("\n".join(problems))

    def _roots(self) -> list[Path]:
        roots = [self.base_dir] if self.base_dir is not None else []
        return roots + list(self.asset_dirs)

    # -- JSON

    def to_dict(self, *, embed_images: bool = False) -> dict[str, Any]:
        s = self.settings
        return {
            "format": PRESET_FORMAT,
            "version": PRESET_VERSION,
            "name": self.name,
            "prompt": self.prompt,
            "references": [
                {
                    "slot": r.slot,
                    "image": self._image_field(r, embed_images),
                    "attributes": list(r.attributes),
                    "entity": r.entity,
                    "crop": list(r.crop) if r.crop is not None else None,
                }
                for r in sorted(self.references, key=lambda r: r.slot)
            ],
            "settings": {
                "size": list(s.size) if s.size is not None else FOLLOW_LAST_REFERENCE,
                "num_timesteps": s.num_timesteps,
                "cfg_text_scale": float(s.cfg_text_scale),
                "cfg_img_scale": float(s.cfg_img_scale),
                "cfg_interval": [float(s.cfg_interval[0]), float(s.cfg_interval[1])],
                "timestep_shift": float(s.timestep_shift),
                "cfg_renorm_type": s.cfg_renorm_type,
                "cfg_renorm_min": float(s.cfg_renorm_min),
                "seed": s.seed,
                "mask": s.mask,
                "attribute_projection": s.attribute_projection,
            },
        }

    def to_json(self, embed_images: bool = False) -> str:
        """Canonical JSON: the same composition always gives the same bytes."""
        return (
            json.dumps(self.to_dict(embed_images=embed_images), indent=2, ensure_ascii=False) + "\n"
        )

    def _image_field(self, ref: Reference, embed: bool) -> str | None:
        src, name = ref.image, f"references[slot {ref.slot}].image"
        if src is None:
            return None
        if isinstance(src, str):
            if is_data_uri(src) or not embed:
                return src
            return encode_data_uri(read_image_bytes(self.resolve_path(src, field_name=name)))
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

    @classmethod
    def from_dict(
        cls,
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
        problems = _Problems()
        _check_keys(data, _TOP_KEYS, "", problems)
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            problems.add("prompt", f"expected a string, got {_kind(prompt)}")
        elif not prompt.strip():
            problems.add(
                "prompt", "is empty; describe the image and place references with [1], [2] ..."
            )
        name = data.get("name", "")
        if not isinstance(name, str):
            problems.add("name", f"expected a string, got {_kind(name)}")
        refs_raw = data.get("references", [])
        references: list[Reference] = []
        if not isinstance(refs_raw, list):
            problems.add("references", f"expected a list, got {_kind(refs_raw)}")
        else:
            seen: dict[int, int] = {}
            for i, raw in enumerate(refs_raw):
                ref = _parse_reference(raw, f"references[{i}]", problems)
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
        settings = _parse_settings(data.get("settings", {}), problems)
        problems.raise_if_any()
        comp = cls(
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

    @classmethod
    def from_json(
        cls,
        path_or_str: str | os.PathLike,
        *,
        asset_dirs: Sequence[Path] | None = None,
        check_images: bool = True,
    ) -> Composition:
        """Load from a preset file, or from JSON text (which starts with '{')."""
        if isinstance(path_or_str, str) and path_or_str.lstrip().startswith("{"):
            text, base_dir, where = path_or_str, None, "preset"
        else:
            path = Path(path_or_str)
            where = str(path)
            try:
                size = path.stat().st_size
            except OSError as e:
                raise PresetError(f"{where}: cannot read the preset ({e.strerror})") from None
            if not path.is_file():
                raise PresetError(f"{where}: not a file")
            if size > MAX_PRESET_BYTES:
                raise PresetError(
                    f"{where}: {size / 2**20:.1f} MB is larger than the "
                    f"{MAX_PRESET_BYTES >> 20} MB "
                    "preset limit"
                )
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise PresetError(f"{where}: not UTF-8 text; a preset is a JSON file") from None
            base_dir = path.resolve().parent
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PresetError(
                f"{where}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"
            ) from None
        try:
            return cls.from_dict(
                data, base_dir=base_dir, asset_dirs=asset_dirs, check_images=check_images
            )
        except PresetError as e:
            if where == "preset":
                raise
            raise PresetError(f"{where}:\n{e}") from None


MAX_PRESET_BYTES = 200 * 2**20


def load_preset(
    path: str | os.PathLike,
    *,
    asset_dirs: Sequence[Path] | None = None,
    check_images: bool = True,
) -> Composition:
    """Read and validate a preset file, its images included."""
    return Composition.from_json(Path(path), asset_dirs=asset_dirs, check_images=check_images)


def save_preset(
    composition: Composition, path: str | os.PathLike, *, embed_images: bool = False
) -> Path:
    """Write a preset. Without embedding, image paths are rewritten relative to the new folder
    (or to assets/), so the preset still loads after it moves; an image outside both is an error."""
    path = Path(path)
    comp = composition
    if not embed_images:
        comp = _rebase(composition, path.resolve().parent)
    text = comp.to_json(embed_images=embed_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic: a failed save never destroys the previous preset
    return path


def _rebase(comp: Composition, new_dir: Path) -> Composition:
    refs = []
    for ref in comp.references:
        if isinstance(ref.image, str) and not is_data_uri(ref.image):
            real = comp.resolve_path(ref.image)
            ref = replace(ref, image=_relative_to_roots(real, [new_dir, *comp.asset_dirs], ref))
        refs.append(ref)
    return replace(comp, references=refs, base_dir=new_dir)


def _relative_to_roots(real: Path, roots: Sequence[Path], ref: Reference) -> str:
    for root in roots:
        root = root.resolve()
        if real.is_relative_to(root):
            return real.relative_to(root).as_posix()
    raise PresetError(
        f"references[slot {ref.slot}].image: {real} is outside the preset's folder and assets/; "
        "save with embedded images, or copy the image next to the preset"
    )


# ----------------------------------------------------------------------------- paths


def resolve_image_path(rel: str, roots: Sequence[Path], *, field_name: str = "image") -> Path:
    """Resolve a preset-relative path inside one of ``roots``; refuse absolute paths, '..',
    and symlinks that lead outside, before anything is read."""
    if not rel or not isinstance(rel, str):
        raise PresetError(f"{field_name}: expected a relative path or a data URI")
    if "\\" in rel:
        raise PresetError(f"{field_name}: {rel!r} uses backslashes; write paths with '/'")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or rel.startswith("~") or (len(rel) > 1 and rel[1] == ":"):
        raise PresetError(
            f"{field_name}: {rel!r} is an absolute path; presets may only name images by a path "
            "relative to the preset's folder or assets/, or embed them"
        )
    if ".." in pure.parts:
        raise PresetError(
            f"{field_name}: {rel!r} goes up with '..'; images must stay inside the preset's "
            "folder or assets/"
        )
    looked = []
    for root in roots:
        root_real = root.resolve()
        candidate = root_real / pure
        real = candidate.resolve()
        if not real.is_relative_to(root_real):
            raise PresetError(
                f"{field_name}: {rel!r} is a link that leads outside {root_real}; "
                "copy the image into the folder instead"
            )
        if real.is_file():
            return real
        looked.append(str(root_real))
    raise PresetError(
        f"{field_name}: {rel!r} was not found in {' or '.join(looked) or 'any folder'}"
    )


# ----------------------------------------------------------------------------- parsing


_TOP_KEYS = ("format", "version", "name", "prompt", "references", "settings")
_REF_KEYS = ("slot", "image", "attributes", "entity", "crop")
_SETTINGS_KEYS = tuple(Settings.__dataclass_fields__)

# version n -> function turning a version-n dict into a version n+1 dict
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def _migrate(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PresetError(f"preset: expected a JSON object at the top, got {_kind(data)}")
    fmt = data.get("format")
    if fmt != PRESET_FORMAT:
        raise PresetError(
            f"format: expected '{PRESET_FORMAT}', got {fmt!r}; this is not a SIGMA Studio preset"
        )
    version = data.get("version")
    if not _is_int(version) or version < 1:
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


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise PresetError("\n".join(self.items))


def _parse_reference(raw: Any, path: str, problems: _Problems) -> Reference | None:
    if not isinstance(raw, dict):
        problems.add(path, f"expected an object, got {_kind(raw)}")
        return None
    before = len(problems.items)
    _check_keys(raw, _REF_KEYS, path + ".", problems)
    slot = raw.get("slot")
    if not _is_int(slot) or slot < 1:
        problems.add(f"{path}.slot", f"{slot!r} must be an integer >= 1")
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        problems.add(
            f"{path}.image", f"expected a relative path, a data URI or null, got {_kind(image)}"
        )
    attrs = raw.get("attributes")
    norm: list[str] = []
    if not isinstance(attrs, list) or not attrs:
        problems.add(f"{path}.attributes", 'expected a non-empty list such as ["<id>"]')
    else:
        for j, a in enumerate(attrs):
            try:
                norm.append(normalize_attribute(a))
            except UnknownAttributeError as e:
                problems.add(f"{path}.attributes[{j}]", str(e))
    entity = raw.get("entity", "")
    if not isinstance(entity, str):
        problems.add(f"{path}.entity", f"expected a string, got {_kind(entity)}")
    crop = raw.get("crop")
    if crop is not None:
        if not (isinstance(crop, list) and len(crop) == 4 and all(_is_int(c) for c in crop)):
            problems.add(f"{path}.crop", "expected null or [left, top, right, bottom] in pixels")
        elif not (0 <= crop[0] < crop[2] and 0 <= crop[1] < crop[3]):
            problems.add(
                f"{path}.crop", f"{crop} must satisfy 0 <= left < right and 0 <= top < bottom"
            )
    if len(problems.items) > before:
        return None
    return Reference(
        slot=slot,
        image=image,
        attributes=tuple(norm),
        entity=entity,
        crop=tuple(crop) if crop is not None else None,
    )


def _parse_settings(raw: Any, problems: _Problems) -> Settings:
    if not isinstance(raw, dict):
        problems.add("settings", f"expected an object, got {_kind(raw)}")
        return Settings()
    _check_keys(raw, _SETTINGS_KEYS, "settings.", problems)
    values = {k: raw[k] for k in _SETTINGS_KEYS if k in raw}
    size = values.get("size", FOLLOW_LAST_REFERENCE)
    if size == FOLLOW_LAST_REFERENCE or size is None:
        values["size"] = None
    elif isinstance(size, list):
        values["size"] = tuple(size)
    if isinstance(values.get("cfg_interval"), list):
        values["cfg_interval"] = tuple(values["cfg_interval"])
    try:
        return Settings(**values)
    except PresetError as e:
        problems.items.extend(str(e).splitlines())
        return Settings()


def _normalize_attributes(attrs: Any) -> tuple[str, ...]:
    if isinstance(attrs, str):
        attrs = (attrs,)
    norm = tuple(dict.fromkeys(normalize_attribute(a) for a in attrs))
    if not norm:
        raise UnknownAttributeError("at least one attribute is needed, e.g. '<id>'")
    return norm


def _check_keys(
    raw: dict[str, Any], allowed: Sequence[str], prefix: str, problems: _Problems
) -> None:
    for key in raw:
        if key not in allowed:
            problems.add(
                f"{prefix}{key}",
                f"unknown field{_did_you_mean(key, allowed)} (allowed: {', '.join(allowed)})",
            )


def _did_you_mean(word: Any, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false"}.get(
        type(v), "null" if v is None else type(v).__name__
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _is_pair(v: Any, types: type | tuple[type, ...]) -> bool:
    return (
        isinstance(v, (tuple, list))
        and len(v) == 2
        and all(isinstance(x, types) and not isinstance(x, bool) for x in v)
    )


# ----------------------------------------------------------------------------- PNG metadata

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_METADATA_BYTES = 256 * 2**20  # decompressed; embedded references can be large


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
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(PNG_METADATA_KEY, composition.to_json(embed_images=embed_images), zip=True)
    if notice:
        info.add_text(PNG_NOTICE_KEY, notice)
    path = Path(path)
    image.save(path, format="PNG", pnginfo=info)
    return path


def read_png_composition(
    path: str | os.PathLike, *, asset_dirs: Sequence[Path] | None = None
) -> Composition:
    """The composition stored by :func:`write_png`, read chunk by chunk without decoding pixels
    (Pillow's own text reader stops at 1 MB, too small for embedded references)."""
    path = Path(path)
    text = _find_png_text(path, PNG_METADATA_KEY)
    if text is None:
        raise PresetError(
            f"{path}: this PNG holds no SIGMA Studio composition (only images saved by SIGMA "
            "Studio carry one)"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PresetError(f"{path}: the stored composition is malformed JSON ({e.msg})") from None
    return Composition.from_dict(data, base_dir=path.resolve().parent, asset_dirs=asset_dirs)


def _find_png_text(path: Path, key: str) -> str | None:
    import struct
    import zlib

    try:
        f = path.open("rb")
    except OSError as e:
        raise PresetError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        if f.read(8) != _PNG_SIGNATURE:
            raise PresetError(f"{path}: not a PNG file")
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise PresetError(f"{path}: the PNG is truncated (no IEND chunk)")
            length, ctype = struct.unpack(">I4s", head)
            if ctype in (b"IDAT", b"IEND") or length > MAX_METADATA_BYTES:
                f.seek(length + 4, os.SEEK_CUR)
                if ctype == b"IEND":
                    return None
                continue
            body = f.read(length)
            f.read(4)  # CRC
            if len(body) < length:
                raise PresetError(f"{path}: the PNG is truncated")
            keyword, _, rest = body.partition(b"\0")
            if keyword != key.encode("latin-1"):
                continue
            try:
                if ctype == b"tEXt":
                    return rest.decode("latin-1")
                if ctype == b"zTXt":
                    return _inflate(rest[1:]).decode("latin-1")
                if ctype == b"iTXt":
                    compressed = rest[0] == 1
                    _lang, _, rest = rest[2:].partition(b"\0")
                    _tkey, _, payload = rest.partition(b"\0")
                    return (_inflate(payload) if compressed else payload).decode("utf-8")
            except (zlib.error, UnicodeDecodeError, IndexError, ValueError) as e:
                raise PresetError(f"{path}: the stored composition is corrupt ({e})") from None


def _inflate(payload: bytes) -> bytes:
    import zlib

    d = zlib.decompressobj()
    out = d.decompress(payload, MAX_METADATA_BYTES)
    if d.unconsumed_tail:
        raise ValueError(f"larger than {MAX_METADATA_BYTES >> 20} MB when decompressed")
    return out
