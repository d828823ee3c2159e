"""The draft on screen, kept in the browser (a gr.BrowserState) so that a reload brings it
back, even one never generated. What comes back from the browser is read as hostile input:
only known fields of plain types, text within the core's limits, and only images that this
studio received or wrote itself (under its upload or output folder) and that still read."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sigma_core import frontend
from studio import slots
from studio.forms import MAX_IMAGES_PER_RUN, SEED_MODES, SPECS, Draft, SettingsForm, SlotForm

TEXT_LIMITS = {
    "prompt": frontend.MAX_PROMPT_CHARS,
    "name": frontend.MAX_NAME_CHARS,
    "entity": frontend.MAX_ENTITY_CHARS,
    "crop": 64,
    "setting": 64,
}


def stored(draft: Draft) -> dict[str, Any]:
    """The draft as the browser keeps it: plain JSON data, images as the server's paths."""
    data = asdict(draft)
    data["settings"]["values"] = dict(draft.settings.values)
    return json.loads(json.dumps(data))  # lists, as the browser gives them back


def restored(value: Any, roots: Sequence[Path], max_slots: int) -> tuple[Draft, list[str]]:
    """The draft the browser kept, and a note for each image that could not be used again
    (gone since, or not one of this studio's files). Anything malformed is left at its
    default: a stored draft never stops the page from opening."""
    data = value if isinstance(value, dict) else {}
    raw_slots = data.get("slots")
    raw_slots = raw_slots[:max_slots] if isinstance(raw_slots, list) else []
    notes: list[str] = []
    forms = tuple(_slot(raw, k, roots, notes) for k, raw in enumerate(raw_slots, start=1))
    draft = Draft(
        prompt=_text(data.get("prompt"), "prompt"),
        slots=forms or (SlotForm(),),
        settings=_settings(data.get("settings")),
        name=_text(data.get("name"), "name"),
    )
    return draft, notes


def _slot(raw: Any, k: int, roots: Sequence[Path], notes: list[str]) -> SlotForm:
    raw = raw if isinstance(raw, dict) else {}
    image = _image(raw.get("image"), roots)
    if raw.get("image") and image is None:
        notes.append(f"slot {k}: its image is no longer on the server; drop it in again")
    attributes = raw.get("attributes") if isinstance(raw.get("attributes"), list) else []
    return SlotForm(
        image=image,
        attributes=tuple(a for a in attributes if a in frontend.ATTRIBUTES),
        entity=_text(raw.get("entity"), "entity"),
        crop=_text(raw.get("crop"), "crop"),
    )


def _text(value: Any, kind: str) -> str:
    return value if isinstance(value, str) and len(value) <= TEXT_LIMITS[kind] else ""


def _image(value: Any, roots: Sequence[Path]) -> str | None:
    """``value`` when it names a readable image inside one of ``roots``, else None."""
    if not isinstance(value, str) or not value or len(value) > 4096 or "\0" in value:
        return None
    try:
        path = Path(value).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_file() or not any(path.is_relative_to(r.resolve()) for r in roots):
        return None
    return value if not slots.check_upload(1, value, None)[1] else None


def _settings(value: Any) -> SettingsForm:
    """The stored settings controls, each kept only with the kind of value its control holds
    (the usual checks then judge the value itself, as for anything typed)."""
    defaults = SettingsForm()
    data = value if isinstance(value, dict) else {}
    values = data.get("values") if isinstance(data.get("values"), dict) else {}
    kept = {n: v for n, v in values.items() if n in SPECS and _like(v, defaults[n])}
    return defaults.replace(
        **{n: tuple(v) if isinstance(v, list) else v for n, v in kept.items()},
        **_own(data, defaults),
    )


def _own(data: dict[str, Any], defaults: SettingsForm) -> dict[str, Any]:
    """The studio's own two controls: the seed mode and the images per run."""
    seed_mode, images = data.get("seed_mode"), data.get("images_per_run")
    good = type(images) is int and 1 <= images <= MAX_IMAGES_PER_RUN
    return {
        "seed_mode": seed_mode if seed_mode in SEED_MODES else defaults.seed_mode,
        "images_per_run": images if good else defaults.images_per_run,
    }


def _like(value: Any, default: Any) -> bool:
    """Whether ``value`` is what a control holding ``default`` can hold."""
    if isinstance(default, tuple | list):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(default)
            and all(map(_like, value, default))
        )
    kind = _KINDS.get(type(default))
    return kind is not None and kind(value)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_KINDS: dict[type, Any] = {
    bool: lambda v: isinstance(v, bool),
    int: _is_number,
    float: _is_number,
    str: lambda v: isinstance(v, str) and len(v) <= TEXT_LIMITS["setting"],
    type(None): lambda v: v is None,
}
