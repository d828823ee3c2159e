"""The composition a user builds: a prompt that places references, the references, the settings.

Compositions are frozen: change one with ``dataclasses.replace``. Image paths are never trusted:
a path may only name a file inside the preset's own folder or the project's assets/, checked
before anything is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from sigma_core.errors import ImageInputError, PresetError, PromptError
from sigma_core.inputs.attributes import UnknownAttributeError, normalize_attribute
from sigma_core.inputs.fields import is_int
from sigma_core.inputs.images import (
    DEFAULT_LIMITS,
    ImageLimits,
    ImageSource,
    is_data_uri,
    load_image,
    read_image_bytes,
)
from sigma_core.inputs.prompt import check_entity, placed_slots, to_raw_prompt
from sigma_core.inputs.settings import Settings
from sigma_core.limits import (
    MAX_ASPECT,
    MAX_ENTITY_CHARS,
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    MAX_PLACEMENTS,
    MAX_PROMPT_CHARS,
    MAX_REFERENCES,
)


def _shipped_assets() -> Path:
    """The folder of the shipped example images: ``sigma_core/assets`` in an installed package
    (the wheel maps the checkout's top-level ``assets/`` there, see pyproject.toml), else the
    checkout's own ``assets/`` beside the package. LICENSES.md ships with the images, so it
    marks the real folder."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "assets"
    return installed if (installed / "LICENSES.md").is_file() else package.parent / "assets"


PROJECT_ASSETS = _shipped_assets()  # the one place shipped assets are found


@dataclass(frozen=True)
class Reference:
    """One reference slot: an image and what it contributes.

    ``image`` is a data URI or a path relative to the preset's folder or assets/ when the
    reference comes from a preset; API callers may also pass bytes, a PIL image or an array.
    ``None`` is an empty slot. ``crop`` is (left, top, right, bottom) in pixels of the image
    after EXIF orientation.

    ``attributes`` are what a template's ``[k]`` expands to. In raw SIGMA syntax the prompt's
    own tokens decide, so they may be left empty there (planning warns when they disagree).
    """

    slot: int
    image: ImageSource | None
    attributes: tuple[str, ...] = ()
    entity: str = ""
    crop: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "attributes", _normalize_attributes(self.attributes))
        except UnknownAttributeError as e:
            raise PresetError(f"references[slot {self.slot}].attributes: {e}") from None
        if not is_int(self.slot) or self.slot < 1:
            raise PresetError(f"reference slot {self.slot!r} must be an integer >= 1")
        if isinstance(self.crop, list):
            object.__setattr__(self, "crop", tuple(self.crop))
        name = f"references[slot {self.slot}].entity"
        _check_text(self.entity, name, MAX_ENTITY_CHARS)
        check_entity(self.entity, name)


@dataclass(frozen=True)
class Composition:
    """What the model reads: a prompt that places references, the references, the settings.

    ``base_dir`` is the folder of the preset it was loaded from; relative image paths resolve
    against it first, then against ``asset_dirs``. Neither is written to JSON.
    """

    prompt: str
    references: tuple[Reference, ...] = ()
    settings: Settings = field(default_factory=Settings)
    name: str = ""
    base_dir: Path | None = field(default=None, compare=False, repr=False)
    asset_dirs: tuple[Path, ...] = field(default=(PROJECT_ASSETS,), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", tuple(self.references))
        object.__setattr__(self, "asset_dirs", tuple(self.asset_dirs))
        _check_text(self.prompt, "prompt", MAX_PROMPT_CHARS)
        _check_text(self.name, "name", MAX_NAME_CHARS)
        if len(self.references) > MAX_REFERENCES:
            raise PresetError(
                f"references: {len(self.references)} slots, over the limit of {MAX_REFERENCES}"
            )
        placements = len(placed_slots(self.prompt))
        if placements > MAX_PLACEMENTS:
            raise PresetError(
                f"prompt: places images {placements} times, over the limit of {MAX_PLACEMENTS}; "
                "each placement adds a whole image block to the sequence"
            )
        slots = [r.slot for r in self.references]
        dupes = sorted({s for s in slots if slots.count(s) > 1})
        if dupes:
            raise PresetError(f"references: slot {dupes[0]} is used by more than one reference")

    def reference(self, slot: int) -> Reference | None:
        """The reference in ``slot``, or None."""
        return next((r for r in self.references if r.slot == slot), None)

    def placed_reference(self, slot: int, written: str) -> Reference:
        """The reference ``written`` (``[2]``, ``<image_2>``) places; it must exist with an
        image, else a PromptError names what the prompt wrote."""
        ref = self.reference(slot)
        if ref is None:
            have = ", ".join(str(r.slot) for r in self.references) or "none"
            raise PromptError(
                f"prompt: {written} refers to slot {slot}, which does not exist (slots: {have})"
            )
        if ref.image is None:
            raise PromptError(
                f"prompt: {written} refers to slot {slot}, which has no image; "
                "add one or remove the reference"
            )
        return ref

    def raw_prompt(self) -> tuple[str, list[str]]:
        """The prompt in raw SIGMA syntax (templates expanded from the slots), and warnings."""
        return to_raw_prompt(self.prompt, self.placed_reference)

    def referenced_slots(self) -> list[int]:
        """Slots the prompt places, in order, repeats included (raw syntax wins if present)."""
        return placed_slots(self.prompt)

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
        image = load_image(src, limits=limits, crop=ref.crop, name=name)
        w, h = image.size
        if max(w, h) > MAX_ASPECT * min(w, h):
            raise ImageInputError(
                f"{name}: {w}x{h} is more than {MAX_ASPECT}:1 (long side to short side), which "
                "the model's position table cannot hold; crop it closer to square"
            )
        return image

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


# ----------------------------------------------------------------------------- paths


def resolve_image_path(rel: str, roots: Sequence[Path], *, field_name: str = "image") -> Path:
    """Resolve a preset-relative path inside one of ``roots``; refuse absolute paths, '..',
    and symlinks that lead outside, before anything is read."""
    pure = _relative_path(rel, field_name)
    looked = []
    for root in roots:
        root_real = root.resolve()
        try:
            real = (root_real / pure).resolve()
            found = real.is_relative_to(root_real) and real.exists()
        except OSError as e:  # a name too long for the file system, a loop of links ...
            raise PresetError(f"{field_name}: {rel!r} cannot be opened ({e.strerror})") from None
        if not real.is_relative_to(root_real):
            raise PresetError(
                f"{field_name}: {rel!r} is a link that leads outside {root_real}; "
                "copy the image into the folder instead"
            )
        if found and not real.is_file():  # stat only: a FIFO is never opened
            raise PresetError(f"{field_name}: {rel!r} is not a regular file")
        if found:
            return real
        looked.append(str(root_real))
    raise PresetError(
        f"{field_name}: {rel!r} was not found in {' or '.join(looked) or 'any folder'}"
    )


def _relative_path(rel: Any, field_name: str) -> PurePosixPath:
    """``rel`` checked as text before any file system call: a relative '/'-path that stays
    inside its folder, of bounded length, without control characters."""
    if not rel or not isinstance(rel, str):
        raise PresetError(f"{field_name}: expected a relative path or a data URI")
    if len(rel) > MAX_PATH_CHARS:
        raise PresetError(
            f"{field_name}: the path is {len(rel):,} characters long, over the limit of "
            f"{MAX_PATH_CHARS:,}"
        )
    if any(ord(c) < 32 or c == "\x7f" for c in rel):
        raise PresetError(
            f"{field_name}: {rel!r} contains a control character (a NUL byte, a newline ...); "
            "no image file is named like that"
        )
    if "\\" in rel:
        raise PresetError(f"{field_name}: {rel!r} uses backslashes; write paths with '/'")
    return _inside(rel, field_name)


def _inside(rel: str, field_name: str) -> PurePosixPath:
    """``rel`` as a path that stays inside its folder: not absolute, never up with '..'."""
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
    return pure


def _normalize_attributes(attrs: Any) -> tuple[str, ...]:
    if isinstance(attrs, str):
        attrs = (attrs,)
    return tuple(dict.fromkeys(normalize_attribute(a) for a in attrs))


def _check_text(value: Any, field_name: str, limit: int) -> None:
    if not isinstance(value, str):
        raise PresetError(f"{field_name}: expected a string, got {type(value).__name__}")
    if len(value) > limit:
        raise PresetError(f"{field_name}: {len(value):,} characters, over the limit of {limit:,}")
