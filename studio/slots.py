"""Reference slots: add, remove, move (the prompt renumbered so it keeps its meaning), insert a
reference at the cursor, and the thumbnail of what the model sees."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from sigma_core import SigmaError, SigmaInputError, frontend
from studio.compose import reference_image
from studio.forms import Draft, SlotForm, format_crop, image_source, parse_crop, slot_reference

CROPPER_SIDE = 480  # the longest side of the picture a slot's cropper shows


def check_upload(slot: int, image: str | None, previous: str | None) -> tuple[str | None, str]:
    """A file dropped into slot ``slot``, as the slot keeps it: the file when sigma_core reads
    it as an image, else the slot's ``previous`` image and sigma_core's message (the CLI's
    words) for the note under the slot. The bad file never reaches the composition, so its
    problem is told once, there."""
    problem = _unreadable(slot, image) if image else ""
    return (previous, f"That file was not used: {problem}") if problem else (image, "")


def _unreadable(slot: int, image: str) -> str:
    """sigma_core's message for an image it cannot use as slot ``slot``'s; empty if it can."""
    try:
        reference_image(image_source(image), None, slot)
    except SigmaError as e:
        return str(e)
    return ""


def _slot_limit(max_slots: int) -> str:
    return (
        f"this studio offers at most {max_slots} slots (start it with --max-references N, "
        f"up to {frontend.MAX_REFERENCES}, for more)"
    )


def add_slot(draft: Draft, max_slots: int) -> Draft:
    """One more empty slot at the end, up to ``max_slots``."""
    if len(draft.slots) >= max_slots:
        raise SigmaInputError(f"references: {_slot_limit(max_slots)}")
    return replace(draft, slots=(*draft.slots, SlotForm()))


def add_images(draft: Draft, images: list[str], max_slots: int) -> tuple[Draft, list[str]]:
    """Several images at once (a multi-file drop, paste or pick): each file sigma_core reads as
    an image fills the next slot with no image, first to last, then a new slot at the end, up
    to ``max_slots``; the others are not used, and the list says why (a file past the last
    free slot is not read at all). The prompt is unchanged: new slots are placed by the
    user."""
    forms, refused = list(draft.slots), []
    for at, image in enumerate(images):
        k = _free_slot(forms, max_slots)
        if k is None:
            left = len(images) - at
            files = "file was" if left == 1 else "files were"
            refused.append(f"{left} more {files} not used: {_slot_limit(max_slots)}")
            break
        problem = _unreadable(k, image)
        if problem:
            name = "a pasted image" if image.startswith("data:") else Path(image).name
            refused.append(f"{name} was not used: {problem}")
            continue
        if k <= len(forms):
            forms[k - 1] = replace(forms[k - 1], image=image)
        else:
            forms.append(SlotForm(image=image))
    return replace(draft, slots=tuple(forms)), refused


def _free_slot(forms: list[SlotForm], max_slots: int) -> int | None:
    """The number of the first slot with no image, else of a new slot at the end (None when
    there are ``max_slots`` already)."""
    empty = [k for k, form in enumerate(forms, start=1) if not form.image]
    return empty[0] if empty else (len(forms) + 1 if len(forms) < max_slots else None)


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
    return _thumbnail(form.image, form.crop, slot)


@functools.lru_cache(maxsize=128)
def _thumbnail(image: str | None, crop: str, slot: int) -> Thumbnail:
    """Cached by image, crop and slot: every render of the page asks for every slot's (an
    uploaded file never changes under its path)."""
    form = SlotForm(image=image, crop=crop)
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
    crop = f"cropped to {w}×{h}" if ref.crop else f"{w}×{h}"
    caption = (
        f"{crop}, the model sees {seen.width}×{seen.height} · {rows * cols + 2} tokens "
        f"({rows}×{cols} latents + 2 markers)"
    )
    seen.thumbnail((256, 256))
    return Thumbnail(seen, caption)


def cropper_value(form: SlotForm, slot: int) -> dict[str, Any]:
    """The slot cropper's value: the upright picture, small (a JPEG data URI), the image's own
    size (the box a drag draws is in its pixels) and the current crop box as CSS percentages.
    Empty without a readable image."""
    return _cropper_value(form.image, form.crop, slot)


@functools.lru_cache(maxsize=32)
def _cropper_value(image: str | None, crop: str, slot: int) -> dict[str, Any]:
    if not image:
        return {}
    try:
        upright = reference_image(image_source(image), None, slot)
    except SigmaError:
        return {}  # the slot's messages say why
    small = upright.copy()
    small.thumbnail((CROPPER_SIDE, CROPPER_SIDE))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=85)
    w, h = upright.size
    try:
        box = parse_crop(crop, slot)
    except SigmaError:
        box = None
    style = "display:none"
    if box is not None:
        left, top, right, bottom = box
        style = (
            f"display:block;left:{100 * left / w:.3f}%;top:{100 * top / h:.3f}%;"
            f"width:{100 * (right - left) / w:.3f}%;height:{100 * (bottom - top) / h:.3f}%"
        )
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {"src": uri, "width": w, "height": h, "box_style": style}


def crop_text(box: Any, form: SlotForm, slot: int) -> str:
    """A box dragged on slot ``slot``'s cropper (from the browser: checked here) as the crop
    field's text, clamped to the image."""
    if not (isinstance(box, list | tuple) and len(box) == 4 and all(type(v) is int for v in box)):
        raise SigmaInputError(f"references[slot {slot}].crop: not a box: {box!r:.60}")
    if not form.image:
        raise SigmaInputError(f"references[slot {slot}].crop: the slot has no image to crop")
    w, h = reference_image(image_source(form.image), None, slot).size
    left, top, right, bottom = box
    clamped = (max(0, left), max(0, top), min(w, right), min(h, bottom))
    return format_crop(clamped)


def face_crop(form: SlotForm, slot: int) -> tuple[str, str]:
    """Slot ``slot``'s crop around the face its image shows (OpenCV's detector, shipped in its
    wheel), as the crop field's text, and the note that says what was chosen and how to undo
    it; no face: the crop as it was, and a note saying the whole image is used."""
    if not form.image:
        raise SigmaInputError(f"references[slot {slot}]: the slot has no image to crop")
    ready, why = frontend.face_detection_available()
    if not ready:
        raise SigmaInputError(why)
    box = frontend.face_crop(image_source(form.image), name=f"references[slot {slot}].image")
    note = frontend.face_crop_note(slot, box)
    return format_crop(box), note


def wants_face_crop(form: SlotForm, seen: str | None) -> bool:
    """Whether a slot gets its face crop on its own: an ``<id>`` slot with an image that has no
    crop yet, and that was not face-cropped before (``seen``: the image it last ran on; a crop
    the user cleared stays cleared)."""
    return bool(form.image) and "<id>" in form.attributes and not form.crop and form.image != seen


def without_background(form: SlotForm, slot: int, files: Path) -> tuple[str, str]:
    """Slot ``slot``'s image with its background made white (rembg, only with its model already
    on this machine; otherwise sigma_core's message says what to install), written to ``files``
    by content; and the note that says how to go back."""
    if not form.image:
        raise SigmaInputError(f"references[slot {slot}]: the slot has no image")
    cut = frontend.remove_background(
        image_source(form.image), name=f"references[slot {slot}].image"
    )
    buf = io.BytesIO()
    cut.save(buf, format="PNG")
    folder = files / "backgrounds"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(buf.getvalue()).hexdigest()[:24]}.png"
    path.write_bytes(buf.getvalue())
    note = f"slot {slot}: background removed; drop the original in again to go back"
    return str(path), note
