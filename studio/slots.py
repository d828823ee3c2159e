"""Reference slots: add, remove, move (the prompt renumbered so it keeps its meaning), insert a
reference at the cursor, and the thumbnail of what the model sees."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from sigma_core import SigmaError, SigmaInputError, frontend
from studio.compose import reference_image
from studio.forms import Draft, SlotForm, image_source, slot_reference


def check_upload(slot: int, image: str | None, previous: str | None) -> tuple[str | None, str]:
    """A file dropped into slot ``slot``, as the slot keeps it: the file when sigma_core reads
    it as an image, else the slot's ``previous`` image and sigma_core's message (the CLI's
    words) for the note under the slot. The bad file never reaches the composition, so its
    problem is told once, there."""
    if not image:
        return image, ""
    try:
        reference_image(image_source(image), None, slot)
    except SigmaError as e:
        return previous, f"That file was not used: {e}"
    return image, ""


def add_slot(draft: Draft, max_slots: int) -> Draft:
    """One more empty slot at the end, up to ``max_slots``."""
    if len(draft.slots) >= max_slots:
        raise SigmaInputError(
            f"references: this studio offers at most {max_slots} slots (start it with "
            f"--max-references N, up to {frontend.MAX_REFERENCES}, for more)"
        )
    return replace(draft, slots=(*draft.slots, SlotForm()))


def remove_slot(draft: Draft, slot: int) -> Draft:
    """Drop slot ``slot``; later slots move up one and the prompt follows them. A slot the
    prompt places is kept, since removing it would silently change what the prompt says."""
    _check_slot(draft, slot)
    if len(draft.slots) == 1:
        raise SigmaInputError(
            "references: a composition keeps at least one slot; clear its image instead"
        )
    if slot in frontend.placed_slots(draft.prompt):
        raise SigmaInputError(
            f"references[slot {slot}]: the prompt places this slot; take [{slot}] (or "
            f"<image_{slot}>) out of the prompt first, then remove the slot"
        )
    mapping = {k: k - 1 for k in range(slot + 1, len(draft.slots) + 1)}
    slots = draft.slots[: slot - 1] + draft.slots[slot:]
    return replace(draft, slots=slots, prompt=frontend.renumber_slots(draft.prompt, mapping))


def move_slot(draft: Draft, slot: int, offset: int) -> Draft:
    """Swap slot ``slot`` with its neighbour ``offset`` (-1 up, +1 down), as the slot's up and
    down buttons do; at either end nothing moves."""
    _check_slot(draft, slot)
    other = slot + offset
    if not 1 <= other <= len(draft.slots):
        return draft
    order = list(range(1, len(draft.slots) + 1))
    order[slot - 1], order[other - 1] = other, slot
    return reorder_slots(draft, order)


def reorder_slots(draft: Draft, order: Any) -> Draft:
    """The slots in ``order`` (their current numbers, first to last: what dragging a thumbnail
    of the slot strip sends), the prompt renumbered so ``[k]`` still names the same image.
    ``order`` comes from the browser, so it is checked to be each slot once."""
    count = len(draft.slots)
    if (
        not isinstance(order, list | tuple)
        or not all(type(k) is int for k in order)
        or sorted(order) != list(range(1, count + 1))
    ):
        raise SigmaInputError(
            f"references: a new order must name slots 1 to {count} once each, not {order!r:.60}"
        )
    mapping = {old: new for new, old in enumerate(order, start=1)}
    slots = tuple(draft.slots[k - 1] for k in order)
    return replace(draft, slots=slots, prompt=frontend.renumber_slots(draft.prompt, mapping))


def _check_slot(draft: Draft, slot: int) -> None:
    if not 1 <= slot <= len(draft.slots):
        raise SigmaInputError(
            f"references: there is no slot {slot} (slots 1 to {len(draft.slots)})"
        )


def insert_reference(prompt: str, slot: int, cursor: int | None = None) -> tuple[str, int]:
    """The prompt with slot ``slot`` placed at ``cursor`` (the end when unknown), spaced from
    its neighbours, and the cursor after it. A raw-syntax prompt gets ``<image_k>``, a
    template ``[k]``."""
    token = f"<image_{slot}>" if frontend.is_raw(prompt) else f"[{slot}]"
    at = len(prompt) if cursor is None else max(0, min(int(cursor), len(prompt)))
    before, after = prompt[:at], prompt[at:]
    left = " " if before and not before[-1].isspace() else ""
    right = " " if after and not after[0].isspace() else ""
    text = f"{before}{left}{token}{right}{after}"
    return text, len(before) + len(left) + len(token)


@dataclass(frozen=True)
class Thumbnail:
    """A slot's image as the model sees it (crop, then BAGEL's VAE resize), or its problem
    (which the slot's check reports too: the page shows it once, under the slot)."""

    image: Image.Image | None
    caption: str
    problem: str | None = None


def thumbnail(form: SlotForm, slot: int) -> Thumbnail:
    """What the model reads of slot ``slot``: its size after the VAE resize and its tokens."""
    if not form.image:
        return Thumbnail(None, "no image yet: drop, paste, upload or take one with the webcam")
    try:
        ref = slot_reference(slot, form)
        source = reference_image(ref.image, ref.crop, slot)
        seen = frontend.vae_resize(source)
    except SigmaError as e:
        return Thumbnail(None, "no preview: see the problem below", problem=str(e))
    rows, cols = frontend.latent_grid(seen.size)
    w, h = source.size
    crop = f"cropped to {w}×{h}, " if ref.crop else f"{w}×{h}, "
    caption = (
        f"{crop}the model sees {seen.width}×{seen.height}: {rows}×{cols} latent tokens "
        f"(+2 markers = {rows * cols + 2} tokens)"
    )
    seen.thumbnail((256, 256))
    return Thumbnail(seen, caption)
