"""The slots' events: each slot's upload, attributes and crop (typed, dragged, to the face),
the background removal, and the changes of the form (add, remove, move, drag in the strip)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import gradio as gr

from sigma_core import SigmaError
from studio import render, slots, views
from studio.engine import Studio
from studio.forms import Draft
from studio.handlers import quiet, warn, warns
from studio.page import CURSOR_JS, RAW, Page, SlotControls, reference_value


def wire_slots(studio: Studio, page: Page) -> None:
    """Each slot's own events (upload, crop, face crop, attributes), and the changes of the
    form: add, remove, move, drag in the strip."""

    def settle(data: dict[Any, Any]) -> list[Any]:
        """The view again from the page as it is now: after two answers crossed (a slot's face
        crop and an added slot), the last to settle shows both."""
        return render.view_of(studio, page, page.draft_of(data))

    settled = {"fn": settle, "inputs": page.draft_inputs, "outputs": page.view_outputs, **RAW}
    settled |= quiet(show_progress="hidden")

    def form_handler(
        change: Callable[[Draft], Draft], undo: str = ""
    ) -> Callable[[dict[Any, Any]], list[Any]]:
        """A change of the form; one named in ``undo`` (a slot's removal) keeps the draft it
        replaced for the undo button, as a load does."""
        offers = page.undo_outputs if undo else []

        @warns(keep=lambda: page.keep_form() + [gr.skip()] * (len(page.view_outputs) + len(offers)))
        def handler(data: dict[Any, Any]) -> list[Any]:
            old = page.draft_of(data)
            draft = change(old)
            offered = page.undo_of(old, undo) if undo else []
            return page.form_changes(old, draft) + render.view_of(studio, page, draft) + offered

        return handler

    for k, sc in enumerate(page.slots, start=1):
        _wire_slot(studio, page, k, sc, settled)
        for button, change, undo in (
            (sc.up, lambda d, k=k: slots.move_slot(d, k, -1), ""),
            (sc.down, lambda d, k=k: slots.move_slot(d, k, +1), ""),
            (sc.remove, lambda d, k=k: slots.remove_slot(d, k), f"removing [{k}]"),
        ):
            button.click(
                form_handler(change, undo), inputs=page.draft_inputs, **RAW, **quiet(),
                outputs=page.form_outputs + page.view_outputs + (page.undo_outputs if undo else []),
            ).then(**settled)  # fmt: skip

        def insert(text: str | None, at: float | None, k: int = k) -> str:
            return slots.insert_reference(text or "", k, None if at is None else int(at))[0]

        sc.insert.click(
            insert, inputs=[page.prompt, page.cursor], outputs=[page.prompt], js=CURSOR_JS,
            **quiet(),
        ).then(
            lambda data: render.checks(studio, page, page.draft_of(data)), inputs=page.draft_inputs,
            outputs=page.check_outputs, **RAW, **quiet(show_progress="hidden"),
        )  # fmt: skip

    max_slots = studio.options.max_references
    page.add_button.click(
        form_handler(lambda d: slots.add_slot(d, max_slots)), inputs=page.draft_inputs, **RAW,
        outputs=page.form_outputs + page.view_outputs, **quiet(),
    ).then(**settled)  # fmt: skip

    def add_images(data: dict[Any, Any]) -> list[Any]:
        files = [f for f in map(reference_value, data[page.add_images] or []) if f]

        def change(old: Draft) -> Draft:
            draft, refused = slots.add_images(old, files, max_slots)
            if refused:
                warn("\n".join(refused))
            return draft

        emptied = None  # the button emptied again, for the next pick
        return [*form_handler(change)(data), emptied]

    page.add_images.upload(
        add_images, inputs={*page.draft_inputs, page.add_images}, **RAW, **quiet(),
        outputs=[*page.form_outputs, *page.view_outputs, page.add_images],
    ).then(**settled)  # fmt: skip

    def drop(data: dict[Any, Any], event: gr.EventData) -> list[Any]:
        order = getattr(event, "_data", None) or {}
        return form_handler(lambda d: slots.reorder_slots(d, order.get("order")))(data)

    page.slot_strip.input(
        drop, inputs=page.draft_inputs, outputs=page.form_outputs + page.view_outputs, **RAW,
        **quiet(),
    ).then(**settled)  # fmt: skip


def _wire_slot(
    studio: Studio, page: Page, k: int, sc: SlotControls, settled: dict[str, Any]
) -> None:
    """Slot k's upload, cleared image, attributes, crop (typed, dragged, or to the face): each
    answered with the slot's view, the strip and the checks, in one response; the slower
    ones (an upload, the face crop, background removal) then ``settled`` (see wire_slots)."""
    outputs = [sc.image, sc.crop, sc.upload_note, sc.face_seen, sc.thumb, sc.info, sc.cropper]
    outputs += [sc.last_good, page.slot_strip, *page.check_outputs]
    inputs = {*page.draft_inputs, sc.last_good, sc.face_seen}

    def answer(data: dict[Any, Any], what: str, box: Any = None) -> list[Any]:
        draft = page.draft_of(data)
        form, seen = draft.slots[k - 1], data[sc.face_seen]
        image, crop, note = gr.skip(), gr.skip(), gr.skip()
        if what == "upload":
            kept, problem = slots.check_upload(k, form.image, data[sc.last_good])
            note = views.messages([problem], []) if problem else ""
            if problem:
                image, form = kept, replace(form, image=kept)
        elif what == "drag":
            crop = slots.crop_text(box, form, k)
            form = replace(form, crop=crop)
        elif what == "background":
            image, told = slots.without_background(form, k, studio.files)
            form, note = replace(form, image=image), views.note(told)
        auto = what in ("upload", "attributes") and slots.wants_face_crop(form, seen)
        if what == "face" or auto:
            try:
                crop, told = slots.face_crop(form, k)
                form = replace(form, crop=crop)
            except SigmaError as e:  # a face crop of its own accord never stops an upload
                if not auto:
                    raise
                told = str(e)
            seen, note = form.image, views.note(told)
        draft = draft.with_slot(k, form)
        return [
            image, crop, note, seen, *render.slot_view(form, k), views.slot_strip(draft),
            *render.checks(studio, page, draft),
        ]  # fmt: skip

    undoable = {"clear": f"clearing [{k}]", "background": f"removing [{k}]'s background"}

    def offer_undo(data: dict[Any, Any], what: str) -> list[Any]:
        """After a clear or a background removal, the undo of it: the draft as it was before
        (a cleared slot's image is the last readable one it showed)."""
        before = page.draft_of(data)
        if what == "clear":
            if not data[sc.last_good]:
                return [gr.skip()] * len(page.undo_outputs)
            before = before.with_slot(k, replace(before.slots[k - 1], image=data[sc.last_good]))
        return page.undo_of(before, undoable[what])

    def handler(what: str, offers: list[Any]) -> Callable[[dict[Any, Any]], list[Any]]:
        """``answer``, then the undo of the change where ``offers`` (the undo's outputs)."""

        @warns(keep=lambda: [gr.skip()] * (len(outputs) + len(offers)))
        def handle(data: dict[Any, Any]) -> list[Any]:
            return answer(data, what) + (offer_undo(data, what) if offers else [])

        return handle

    hidden = quiet(show_progress="hidden")
    for event, what in (
        (sc.image.upload, "upload"), (sc.image.clear, "clear"),
        (sc.attributes.input, "attributes"), (sc.crop.input, "typed"), (sc.crop.blur, "typed"),
        (sc.face_button.click, "face"), (sc.background_button.click, "background"),
    ):  # fmt: skip
        offers = page.undo_outputs if what in undoable else []
        answered = event(
            handler(what, offers), inputs=inputs, outputs=outputs + offers, **RAW, **hidden
        )
        if what in ("upload", "attributes", "face", "background"):
            answered.then(**settled)

    def dragged(data: dict[Any, Any], event: gr.EventData) -> list[Any]:
        return answer(data, "drag", (getattr(event, "_data", None) or {}).get("box"))

    keep = warns(keep=lambda: [gr.skip()] * len(outputs))
    sc.cropper.input(keep(dragged), inputs=inputs, outputs=outputs, **RAW, **hidden)
