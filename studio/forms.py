"""What the studio's controls hold, as plain frozen data, and its translation to and from a
sigma_core Composition.

The UI's slots are positional: slot k is the k-th slot on screen, and ``[k]`` / ``<image_k>``
in the prompt name it. Every check of a value is sigma_core's; this module only turns control
values (text boxes, sliders) into the types sigma_core checks, naming the field that is wrong
in the same ``references[slot k].field`` / ``settings.field`` form the core uses.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sigma_core import Composition, Reference, Settings, SigmaInputError, frontend

SPECS = {spec.name: spec for spec in frontend.SETTING_SPECS}
SIZE_CHOICES: tuple[tuple[str, str], ...] = (
    ("Follow the last reference", SPECS["size"].text(None)),
    ("1:1 (1024×1024)", "1024x1024"),
    ("4:3 (1024×768)", "1024x768"),
    ("3:4 (768×1024)", "768x1024"),
    ("3:2 (1024×688)", "1024x688"),
    ("2:3 (688×1024)", "688x1024"),
    ("16:9 (1024×576)", "1024x576"),
    ("9:16 (576×1024)", "576x1024"),
    ("1:1 small (512×512)", "512x512"),
)
SEED_MODES = ("random", "fixed")
MAX_IMAGES_PER_RUN = 4


@dataclass(frozen=True)
class SlotForm:
    """One reference slot's controls. ``image`` is a file path (an upload, a restored image)
    or a data URI; ``crop`` is the text "left, top, right, bottom" or empty."""

    image: str | None = None
    attributes: tuple[str, ...] = ()
    entity: str = ""
    crop: str = ""


def _control_value(spec: Any, value: Any) -> Any:
    """A setting's value as its control holds it: text for the size and the seed."""
    return spec.text(value) if spec.kind in ("size", "seed") else value


@dataclass(frozen=True)
class SettingsForm:
    """The settings controls' values, by setting name (``frontend.SETTING_SPECS``), as the
    controls hold them: the size and the seed as text, the guidance interval as (start, end),
    everything unchecked until :func:`to_settings`; and the studio's own two controls, the seed
    mode and the images per run. Defaults are the core's."""

    values: Mapping[str, Any] = field(
        default_factory=lambda: {n: _control_value(s, s.default) for n, s in SPECS.items()}
    )
    seed_mode: str = "fixed"
    images_per_run: int = 1

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def replace(self, **changes: Any) -> SettingsForm:
        """A copy with controls changed, by setting name (or seed_mode, images_per_run)."""
        own = {k: changes.pop(k) for k in ("seed_mode", "images_per_run") if k in changes}
        unknown = sorted(set(changes) - set(SPECS))
        if unknown:
            raise KeyError(f"no setting named {unknown[0]!r}")
        return replace(self, values={**self.values, **changes}, **own)


@dataclass(frozen=True)
class Draft:
    """The whole composition as the controls hold it."""

    prompt: str = ""
    slots: tuple[SlotForm, ...] = (SlotForm(),)
    settings: SettingsForm = field(default_factory=SettingsForm)
    name: str = ""

    def with_slot(self, k: int, form: SlotForm) -> Draft:
        """The draft with slot ``k`` (1-based) holding ``form``."""
        return replace(self, slots=(*self.slots[: k - 1], form, *self.slots[k:]))


def to_composition(draft: Draft) -> Composition:
    """The composition the controls describe; a SigmaError names the first wrong field.
    A random seed stays None here: each run draws its own."""
    references = tuple(slot_reference(k, slot) for k, slot in enumerate(draft.slots, start=1))
    return Composition(
        prompt=draft.prompt,
        references=references,
        settings=to_settings(draft.settings),
        name=draft.name,
    )


def slot_reference(slot: int, form: SlotForm) -> Reference:
    """Slot ``slot``'s controls as a Reference (checked by sigma_core)."""
    return Reference(
        slot=slot,
        image=image_source(form.image),
        attributes=form.attributes,
        entity=form.entity,
        crop=parse_crop(form.crop, slot),
    )


def image_source(image: str | None) -> str | Path | None:
    """A control's image as a Reference takes it: data URIs as they are, files as Paths (a
    string path in a Reference means "relative to a preset", which uploads are not)."""
    if not image:
        return None
    return image if image.startswith("data:") else Path(image)


def format_crop(box: tuple[int, int, int, int] | None) -> str:
    """A crop box as the crop field shows it (what :func:`parse_crop` reads back)."""
    return ", ".join(map(str, box)) if box else ""


def parse_crop(text: str, slot: int) -> tuple[int, int, int, int] | None:
    """ "left, top, right, bottom" in pixels, or empty for no crop; the box is checked by the
    core against the image."""
    if not text or not text.strip():
        return None
    parts = [p for p in re.split(r"[\s,;]+", text.strip()) if p]
    if len(parts) != 4 or not all(re.fullmatch(r"-?\d{1,6}", p) for p in parts):
        raise SigmaInputError(
            f"references[slot {slot}].crop: {text.strip()[:40]!r} is not four whole numbers; "
            "write left, top, right, bottom in pixels (e.g. 0, 0, 512, 512), or leave it empty"
        )
    left, top, right, bottom = (int(p) for p in parts)
    return (left, top, right, bottom)


def to_settings(form: SettingsForm) -> Settings:
    """Settings from the controls: each value read as its spec says, then every bound checked
    by sigma_core. A random seed stays None here: each run draws its own."""
    random_seed = form.seed_mode == "random"
    return Settings(
        **{
            name: None
            if random_seed and spec.kind == "seed"
            else _READ.get(spec.kind, _as_is)(spec, form[name])
            for name, spec in SPECS.items()
        }
    )


def _number(value: Any) -> Any:
    """A slider's number as a float (30.0 as 30 where a whole number is due); anything else as
    it is, for the core to refuse with its message."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return float(value)


def _whole(spec: Any, value: Any) -> Any:
    value = _number(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _as_is(spec: Any, value: Any) -> Any:
    return value


_READ = {
    "size": lambda spec, value: spec.parse(str(value or "")),
    "seed": lambda spec, value: spec.parse(str(value)),
    "int": _whole,
    "number": lambda spec, value: _number(value),
    "interval": lambda spec, value: (
        tuple(map(_number, value)) if isinstance(value, tuple | list) else value
    ),
}


def settings_form(settings: Settings, images_per_run: int = 1) -> SettingsForm:
    """The controls' values for ``settings``."""
    return SettingsForm(
        values={n: _control_value(s, getattr(settings, n)) for n, s in SPECS.items()},
        seed_mode="random" if settings.seed is None else "fixed",
        images_per_run=images_per_run,
    )


def to_draft(composition: Composition, files: Path, *, max_slots: int) -> Draft:
    """The controls' values for a loaded composition (a preset, a PNG, a history entry).

    Slots are renumbered 1..n in slot order (the prompt follows), each image is written to
    ``files`` (content-addressed, so gradio can serve it), and a composition with more slots
    than the studio shows is refused rather than cut.
    """
    refs = sorted(composition.references, key=lambda r: r.slot)
    if len(refs) > max_slots:
        raise SigmaInputError(
            f"references: this composition has {len(refs)} slots; this studio shows at most "
            f"{max_slots} (start it with --max-references {len(refs)})"
        )
    mapping = {r.slot: k for k, r in enumerate(refs, start=1)}
    slots = tuple(
        SlotForm(
            image=_materialize(composition, r, files),
            attributes=r.attributes,
            entity=r.entity,
            crop=format_crop(r.crop),
        )
        for r in refs
    )
    return Draft(
        prompt=frontend.renumber_slots(composition.prompt, mapping),
        slots=slots or (SlotForm(),),
        settings=settings_form(composition.settings),
        name=composition.name,
    )


def _materialize(composition: Composition, ref: Reference, files: Path) -> str | None:
    """The reference's original bytes as a file under ``files``; None for an empty slot."""
    if ref.image is None:
        return None
    source = ref.image
    if isinstance(source, str) and not source.startswith("data:"):
        source = composition.resolve_path(source, field_name=f"references[slot {ref.slot}].image")
    data = frontend.embeddable_bytes(source, name=f"references[slot {ref.slot}].image")
    return str(write_content(files, data, f".{frontend.image_format(data)}"))


def write_content(folder: Path, data: bytes, suffix: str) -> Path:
    """``data`` under a name derived from its bytes: the same image is stored once."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
    if not path.exists():
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def without_images(composition: Composition) -> Composition:
    """The composition with empty slots: what browser storage keeps of a result."""
    return replace(
        composition, references=tuple(replace(r, image=None) for r in composition.references)
    )
