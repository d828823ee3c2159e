"""What the page derives from a draft, as output values: each slot's preview, caption and
cropper, the slot strip, the problems next to their causes, the sequence view and the memory
prediction. A change of the form answers with all of it at once (:func:`view_of`), so the page
never shows two drafts at once."""

from __future__ import annotations

from typing import Any

import gradio as gr

from sigma_core import SigmaError
from studio import compose, modes, slots, views
from studio.engine import Studio
from studio.forms import Draft, SlotForm
from studio.page import Page


def memory(studio: Studio, result: compose.Check) -> str:
    """The predicted peak of a draft that plans."""
    if result.composition is None:
        return views.memory(None)
    try:
        return views.memory(modes.fit_for(studio.engine, result.composition))
    except SigmaError as e:
        return views.messages([str(e)], [])


def checks(studio: Studio, page: Page, draft: Draft) -> list[Any]:
    """The draft's problems next to their causes, the sequence view and the memory
    prediction (:attr:`Page.check_outputs`'s order)."""
    result = compose.check(studio.engine, draft)
    per_slot = [
        views.messages(*result.at(f"slot {k}")) if k <= len(draft.slots) else ""
        for k in range(1, len(page.slots) + 1)
    ]
    return [
        views.problems_panel(result),
        views.sequence(result),
        views.messages(*result.at("prompt")) + views.messages(*result.at("composition")),
        views.messages(*result.at("settings")),
        memory(studio, result),
        *per_slot,
    ]


def slot_view(form: SlotForm, k: int) -> list[Any]:
    """Slot k's preview, caption, cropper and last readable image."""
    thumb = slots.thumbnail(form, k)
    readable = form.image if not slots.check_upload(k, form.image, None)[1] else gr.skip()
    return [thumb.image, thumb.caption, slots.cropper_value(form, k), readable]


def view_of(studio: Studio, page: Page, draft: Draft) -> list[Any]:
    """Everything the page derives from ``draft`` (:attr:`Page.view_outputs`'s order)."""
    padded = [*draft.slots, *[SlotForm()] * (len(page.slots) - len(draft.slots))]
    per_slot = [v for k, form in enumerate(padded, start=1) for v in slot_view(form, k)]
    return [*per_slot, views.slot_strip(draft), *checks(studio, page, draft)]
