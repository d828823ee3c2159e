"""The two prompt syntaxes, turned into SIGMA's raw form and split as SIGMA's training code does.

- **Template**: ``[k]`` places slot k as SIGMA's triple ``<attr...> entity <image_k>``;
  ``[k:style]`` or ``[k:id+clothing]`` overrides the slot's attributes for that occurrence.
- **Raw SIGMA syntax**: explicit attribute tokens and ``<image_k>`` placeholders (1-based, parsed
  with SIGMA's training regex).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from sigma_core.errors import PromptError
from sigma_core.inputs.attributes import (
    ATTRIBUTES,
    UnknownAttributeError,
    closest_attribute,
    normalize_attribute,
    suggest_attribute,
)

IMAGE_PLACEHOLDER = re.compile(r"<image(?:[_\s]+)(\d+)>")
SLOT_REFERENCE = re.compile(r"\[(\d+)(?::([^\]]*))?\]")
_LOOSE_PLACEHOLDER = re.compile(r"<\s*image[^>]{0,8}>", re.IGNORECASE)
_ANGLE_WORD = re.compile(r"<([A-Za-z][A-Za-z_ ]{0,30})>")
_ANY_REFERENCE = re.compile(f"{IMAGE_PLACEHOLDER.pattern}|{SLOT_REFERENCE.pattern}")
CONTROL_TOKEN = re.compile(r"<\|[^<>|]{0,40}\|>")  # Qwen2's <|im_end|>, <|vision_start|> ...


@dataclass(frozen=True)
class Piece:
    """One element of a split prompt: a text piece or an image placeholder."""

    kind: Literal["text", "image"]
    text: str = ""
    slot: int = 0  # 1-based, for images


def placed_slots(prompt: str) -> list[int]:
    """Slots the prompt places, in order, repeats included (raw syntax wins if present)."""
    pattern = IMAGE_PLACEHOLDER if IMAGE_PLACEHOLDER.search(prompt) else SLOT_REFERENCE
    return [int(m.group(1)) for m in pattern.finditer(prompt)]


def renumber_slots(prompt: str, mapping: Mapping[int, int]) -> str:
    """The prompt with its slot references (``[k]``, ``[k:attrs]``, ``<image_k>``) renumbered
    by ``mapping`` (old slot -> new slot; a slot not in it keeps its number), all at once, so a
    swap ``{1: 2, 2: 1}`` works. Nothing else changes, so when a studio moves a slot the prompt
    keeps its meaning. Two slots cannot be given one number: that would merge their images."""
    bad = [k for pair in mapping.items() for k in pair if not isinstance(k, int) or k < 1]
    if bad:
        raise PromptError(f"renumber_slots: slot numbers are integers >= 1, got {bad[0]!r}")
    targets: dict[int, int] = {}
    for slot in {int(m.group(1) or m.group(2)) for m in _ANY_REFERENCE.finditer(prompt)}:
        new = mapping.get(slot, slot)
        if new in targets:
            raise PromptError(
                f"renumber_slots: slots {targets[new]} and {slot} would both become slot {new}"
            )
        targets[new] = slot

    def rename(m: re.Match[str]) -> str:
        group = 1 if m.group(1) is not None else 2
        new = mapping.get(int(m.group(group)), int(m.group(group)))
        start, end = m.start(group) - m.start(), m.end(group) - m.start()
        return f"{m.group(0)[:start]}{new}{m.group(0)[end:]}"

    return _ANY_REFERENCE.sub(rename, prompt)


def is_raw(prompt: str) -> bool:
    """Whether the prompt is in raw SIGMA syntax (it has an <image_k> placeholder)."""
    return IMAGE_PLACEHOLDER.search(prompt) is not None


def _is_attribute_word(word: str) -> bool:
    try:
        normalize_attribute(word)
    except UnknownAttributeError:
        return False
    return True


def markup_in(text: str) -> list[str]:
    """What in ``text`` the sequence would read as structure rather than words: image
    placeholders, slot references, attribute tokens (aliases too) and tokenizer control tokens."""
    found = [m.group(0) for p in (IMAGE_PLACEHOLDER, SLOT_REFERENCE) for m in p.finditer(text)]
    found += [m.group(0) for m in _ANGLE_WORD.finditer(text) if _is_attribute_word(m.group(0))]
    return found + [m.group(0) for m in CONTROL_TOKEN.finditer(text)]


def check_entity(entity: str, field_name: str) -> None:
    """An entity phrase is plain words between a slot's attributes and its image: it cannot
    place an image, bind an attribute or smuggle a control token into the sequence."""
    found = markup_in(entity)
    if found:
        raise PromptError(
            f"{field_name}: {', '.join(map(repr, dict.fromkeys(found)))} in the entity phrase "
            "would be read as part of the sequence, not as words (it could bind this slot's "
            "attributes to another image); an entity is plain text such as 'woman with brown hair'"
        )


def _check_prompt_text(prompt: str, template: bool) -> None:
    """Control tokens never; in a template, attribute tokens only through the slots."""
    control = CONTROL_TOKEN.search(prompt)
    if control:
        raise PromptError(
            f"prompt: {control.group(0)!r} is a control token of the tokenizer; prompts cannot "
            "contain it (it would be read as a sequence marker, not as text)"
        )
    if not template:
        return
    body = SLOT_REFERENCE.sub(" ", prompt)
    attr = next((m for m in _ANGLE_WORD.finditer(body) if _is_attribute_word(m.group(0))), None)
    if attr:
        name = normalize_attribute(attr.group(0)).strip("<>")
        raise PromptError(
            f"prompt: {attr.group(0)!r} in a template prompt; there attributes come from the "
            f"slots, so write [k:{name}] for the slot k it belongs to (or write the whole prompt "
            "in raw SIGMA syntax with <image_k> placeholders)"
        )


class PlacedSlot(Protocol):
    """What a template's ``[k]`` expands from: a slot's attributes and entity phrase (read-only,
    so that a frozen :class:`~sigma_core.inputs.composition.Reference` is one)."""

    @property
    def attributes(self) -> tuple[str, ...]: ...
    @property
    def entity(self) -> str: ...


def to_raw_prompt(prompt: str, placed: Callable[[int, str], PlacedSlot]) -> tuple[str, list[str]]:
    """``prompt`` in raw SIGMA syntax, and warnings. Template prompts ([k]) are expanded to
    SIGMA's triple ``<attr...> phrase <image_k>`` from ``placed(k, "[k]")``, the slot each one
    places (which raises a PromptError for a missing or empty slot); raw prompts are checked
    and aliases (``<identity>``) canonicalised."""
    has_raw = is_raw(prompt)
    has_template = SLOT_REFERENCE.search(prompt) is not None
    if has_raw and has_template:
        raise PromptError(
            "prompt: mixes [k] slot references with <image_k> placeholders; use one syntax"
        )
    _check_prompt_text(prompt, template=not has_raw)
    warnings: list[str] = []
    if not has_raw:
        prompt = _expand_template(prompt, placed)
    return _canonicalize_tokens(prompt, warnings), warnings


def _expand_template(prompt: str, placed: Callable[[int, str], PlacedSlot]) -> str:
    def expand(m: re.Match[str]) -> str:
        slot = int(m.group(1))
        ref = placed(slot, m.group(0))
        attrs = ref.attributes
        if m.group(2) is not None:
            try:
                attrs = tuple(
                    normalize_attribute(a) for a in re.split(r"[+,\s]+", m.group(2).strip()) if a
                )
            except UnknownAttributeError as e:
                raise PromptError(f"prompt: in {m.group(0)}: {e}") from None
            if not attrs:
                raise PromptError(f"prompt: {m.group(0)} names no attribute after ':'")
        elif not attrs:
            raise PromptError(
                f"prompt: {m.group(0)} places slot {slot}, which has no attributes; give the "
                f"slot one (e.g. <subject>) or write [{slot}:subject]"
            )
        return " ".join([*attrs, *([ref.entity.strip()] if ref.entity.strip() else [])]) + (
            f" <image_{slot}>"
        )

    return SLOT_REFERENCE.sub(expand, prompt)


def _canonicalize_tokens(prompt: str, warnings: list[str]) -> str:
    for m in _LOOSE_PLACEHOLDER.finditer(prompt):
        if not IMAGE_PLACEHOLDER.fullmatch(m.group(0)):
            raise PromptError(
                f"prompt: {m.group(0)!r} is not a placeholder; write <image_1>, <image_2> ... "
                "(lower case, 1-based), or use [1], [2] ..."
            )

    def fix(m: re.Match[str]) -> str:
        word = m.group(0)
        if word in ATTRIBUTES:
            return word
        try:
            return normalize_attribute(word)
        except UnknownAttributeError:
            # A near miss of a token is a typo; anything else in angle brackets is plain text.
            if closest_attribute(word, cutoff=0.75):
                raise PromptError(
                    f"prompt: {word!r} is not an attribute; {suggest_attribute(word)}"
                ) from None
            warnings.append(f"prompt: {word!r} is not an attribute token; it is read as plain text")
            return word

    return _ANGLE_WORD.sub(fix, prompt)


def split_prompt(raw: str) -> list[Piece]:
    """SIGMA's ``change_format``: text between placeholders, stripped, empty pieces dropped."""
    pieces: list[Piece] = []
    last = 0
    for m in IMAGE_PLACEHOLDER.finditer(raw):
        text = raw[last : m.start()].strip()
        if text:
            pieces.append(Piece("text", text=text))
        pieces.append(Piece("image", slot=int(m.group(1))))
        last = m.end()
    tail = raw[last:].strip()
    if tail:
        pieces.append(Piece("text", text=tail))
    return pieces
