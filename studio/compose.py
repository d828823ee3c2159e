"""Checking a draft as the user types: every problem next to its cause, the interleaved sequence
as chips, the mask picture, and Auto-compose. All checks are sigma_core's; this module only
collects them per cause (a slot, the prompt, the settings) instead of stopping at the first."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from sigma_core import Composition, Plan, Reference, SigmaError, SigmaInputError, frontend
from studio.engine import Engine
from studio.forms import Draft, slot_reference, to_settings

Cause = str  # "prompt", "slot 3", "settings" or "composition"


@dataclass(frozen=True)
class Problem:
    """One message, and the control it belongs next to."""

    where: Cause
    message: str


@dataclass(frozen=True)
class TextPart:
    """A run of a text segment: plain words, or an attribute token of ``group``."""

    text: str
    group: int | None = None


@dataclass(frozen=True)
class Chip:
    """One segment of the sequence the model reads."""

    kind: Literal["text", "image", "phantom", "output"]
    tokens: int
    parts: tuple[TextPart, ...] = ()  # text
    slot: int | None = None  # image, phantom
    group: int | None = None  # image, phantom
    attributes: tuple[str, ...] = ()  # image
    size: tuple[int, int] | None = None  # image, phantom (its ViT size), output
    stands_for: int = 0  # phantom: the ViT tokens its one zero-input token acts as


@dataclass(frozen=True)
class Check:
    """The outcome of checking a draft. ``plan`` and ``composition`` are set when it plans."""

    problems: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()
    chips: tuple[Chip, ...] = ()
    token_counts: tuple[tuple[str, int], ...] = ()
    length: int = 0
    output_size: tuple[int, int] | None = None
    composition: Composition | None = None
    plan: Plan | None = None
    untouched: bool = False  # nothing written or dropped yet: nothing to point out

    @property
    def ok(self) -> bool:
        return not self.problems

    def at(self, where: Cause) -> tuple[list[str], list[str]]:
        """(problems, warnings) shown next to ``where``."""
        return (
            [p.message for p in self.problems if p.where == where],
            [w.message for w in self.warnings if w.where == where],
        )


_SLOT_FIELD = re.compile(r"^references\[slot (\d+)\]")
_SLOT_WORD = re.compile(r"\bslot (\d+)\b|<image_(\d+)>")


def route(message: str) -> Cause:
    """The control an error belongs next to, from the field path sigma_core puts first."""
    match = _SLOT_FIELD.match(message)
    if match:
        return f"slot {match[1]}"
    for prefix in ("prompt", "settings"):
        if message.startswith(prefix):
            return prefix
    return "composition"


def route_warning(message: str) -> Cause:
    """Warnings name a slot in words ("slot 3 has an image but ..."); else the prompt."""
    match = _SLOT_WORD.search(message)
    if match and not message.startswith("prompt"):
        return f"slot {match[1] or match[2]}"
    return "prompt"


def problems_of(error: SigmaError) -> list[Problem]:
    """One problem per line: a preset's or the settings' errors come several to a message."""
    return [Problem(route(line), line) for line in str(error).splitlines() if line.strip()]


def check(engine: Engine, draft: Draft) -> Check:
    """Check everything the draft holds and report every problem at once; plan it when all
    parts are valid. An untouched draft (no prompt, no image) is not a list of errors: a fresh
    page shows how to start."""
    if not draft.prompt.strip() and not any(form.image for form in draft.slots):
        return Check(untouched=True)
    problems: list[Problem] = []
    references = []
    images: dict[int, Image.Image] = {}
    for k, form in enumerate(draft.slots, start=1):
        try:
            ref = slot_reference(k, form)
            if ref.image is not None:
                images[k] = reference_image(ref.image, ref.crop, k)
            references.append(ref)
        except SigmaError as e:
            problems += problems_of(e)
    try:
        settings = to_settings(draft.settings)
    except SigmaError as e:
        problems += problems_of(e)
    if problems:
        return Check(problems=tuple(problems))
    try:
        comp = Composition(
            prompt=draft.prompt, references=tuple(references), settings=settings, name=draft.name
        )
        plan = engine.plan(comp, images)
    except SigmaError as e:
        return Check(problems=tuple(problems_of(e)))
    return _planned(comp, plan)


def _planned(comp: Composition, plan: Plan) -> Check:
    report = frontend.plan_report(plan, comp)
    return Check(
        warnings=tuple(Problem(route_warning(w), w) for w in plan.warnings),
        chips=tuple(_chip(s) for s in report["segments"]),
        token_counts=tuple(report["token_counts"].items()),
        length=plan.length,
        output_size=plan.output_size,
        composition=comp,
        plan=plan,
    )


def _chip(segment: dict[str, Any]) -> Chip:
    if segment["kind"] == "phantom":  # the training layout's ViT block (sigma_core's layouts)
        return Chip(
            kind="phantom",
            tokens=segment["count"],
            slot=segment["slot"],
            group=segment["group"],
            size=tuple(segment["size"]),
            stands_for=segment["phantom_tokens"],
        )
    if segment["kind"] != "text":
        return Chip(
            kind="image" if segment["kind"] == "image" else "output",
            tokens=segment["count"],
            slot=segment["slot"],
            group=segment["group"],
            attributes=tuple(segment["attributes"]),
            size=tuple(segment["size"]),
        )
    text, parts, last = segment["text"], [], 0
    for match in frontend.find_attribute_tokens(text):
        if text[last : match.start()].strip():
            parts.append(TextPart(text[last : match.start()].strip()))
        parts.append(TextPart(match.group(0), segment["group"]))
        last = match.end()
    if text[last:].strip():
        parts.append(TextPart(text[last:].strip()))
    return Chip(kind="text", tokens=segment["count"], parts=tuple(parts))


@functools.lru_cache(maxsize=64)
def reference_image(
    source: str | Path, crop: tuple[int, int, int, int] | None, slot: int
) -> Image.Image:
    """A slot's image as the model reads it before resizing: oriented, RGB, cropped, checked
    (size limits, aspect). Cached: validation runs on every keystroke, uploads never change."""
    ref = Reference(slot=slot, image=source, crop=crop)
    return Composition(prompt="", references=(ref,)).load_image(ref)


def mask_picture(check_result: Check, folder: Path) -> Path:
    """The attention-mask picture of a checked draft, written once per distinct plan."""
    if check_result.plan is None or check_result.composition is None:
        raise SigmaInputError(
            "composition: fix the problems shown first; then the mask can be drawn"
        )
    plan = check_result.plan
    key = f"{plan.raw_prompt}|{plan.mask}|{[(s.start, s.length) for s in plan.segments]}"
    path = folder / f"mask-{hashlib.sha256(key.encode()).hexdigest()[:16]}.png"
    if not path.exists():
        frontend.mask_png(plan, path)
    return path


# How Auto-compose places a slot, by its first attribute: (part of the sentence, phrase).
ROLES: dict[str, tuple[str, str]] = {
    "<id>": ("who", "{}"),
    "<subject>": ("who", "{}"),
    "<select>": ("who", "{}"),
    "<clothing>": ("detail", "wearing {}"),
    "<pose>": ("detail", "in the pose of {}"),
    "<emotion>": ("detail", "with the expression of {}"),
    "<icon>": ("detail", "showing {}"),
    "<text>": ("detail", "with the lettering of {}"),
    "<texture>": ("detail", "with the texture of {}"),
    "<background>": ("where", "in front of {}"),
    "<environment>": ("where", "in {}"),
    "<layout>": ("where", "arranged as {}"),
    "<perspective>": ("look", "seen from the viewpoint of {}"),
    "<lighting>": ("look", "lit like {}"),
    "<style>": ("look", "in the style of {}"),
}


def auto_compose(draft: Draft) -> str:
    """A template placing every slot that has an image, by what its attributes contribute:
    "A photo of [1] and [2], wearing [3], in front of [4], in the style of [5]". A slot with
    no attribute is placed as [k:subject]."""
    parts: dict[str, list[str]] = {"who": [], "detail": [], "where": [], "look": []}
    for k, form in enumerate(draft.slots, start=1):
        if not form.image:
            continue
        first = form.attributes[0] if form.attributes else "<subject>"
        role, phrase = ROLES[first]
        parts[role].append(phrase.format(f"[{k}]" if form.attributes else f"[{k}:subject]"))
    if not any(parts.values()):
        raise SigmaInputError("prompt: Auto-compose needs at least one slot with an image")
    who = parts["who"]
    head = "An image" if not who else "A photo of " + _join(who)
    tail = [*parts["detail"], *parts["where"], *parts["look"]]
    return ", ".join([head, *tail]) if who else " ".join([head, ", ".join(tail)])


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
