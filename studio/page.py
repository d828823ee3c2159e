"""The studio's page: every control of the gradio Blocks, built once, and nothing else (the
events are connected in :mod:`studio.wiring`).

Every control has a stable ``elem_id`` (the browser tests find them by it). Slots are built up
front, ``--max-references`` of them, and shown or hidden by the slot count, so their controls
and events never change identity. The browser-side JavaScript lives in ``studio/static/``, read
once at import.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

import sigma_core
from sigma_core import frontend
from studio import autosave, modes, presets, views
from studio.engine import Studio, refusals
from studio.forms import Draft, SlotForm
from studio.settings_panel import SettingsControls, settings_controls

STATIC = Path(__file__).resolve().parent / "static"
HISTORY_KEY = "sigma-studio-history"
DRAFT_KEY = "sigma-studio-draft"
# An insert button's browser side: the prompt and the caret's place in it
CURSOR_JS = (STATIC / "cursor.js").read_text(encoding="utf-8")
# Cancel's browser side: the status says so at once, while a run is going
CANCEL_JS = (STATIC / "cancel.js").read_text(encoding="utf-8")
# Run on page load: files dropped or pasted go to a slot the file picker's way (so gradio never
# empties a slot before it refuses the file), and Ctrl+Enter generates.
PAGE_JS = (
    "() => {\n"
    + "".join(
        f"({(STATIC / name).read_text(encoding='utf-8').strip()})();\n"
        for name in ("files_in.js", "keys.js")
    )
    + "}"
)
# The slot strip: a thumbnail per slot (gr.HTML's template escapes {{...}}); its script sends
# the order a drag and drop makes as an "input" event.
STRIP_TEMPLATE = """<div class="sigma-strip">{{#each value}}
<div class="sigma-strip-item" draggable="true" data-slot="{{this.slot}}" title="drag to reorder">
{{#if this.thumb}}<img src="{{this.thumb}}" alt="" draggable="false">{{/if}}
<span>[{{this.slot}}] {{this.label}}</span></div>{{/each}}</div>"""
STRIP_JS = (STATIC / "slot_strip.js").read_text(encoding="utf-8")
# A slot's cropper: its picture with the crop box over it; its script sends the box a drag
# draws, in the image's own pixels, as an "input" event (value: slots.cropper_value).
CROPPER_TEMPLATE = """{{#if value.src}}<div class="sigma-crop-frame" data-width="{{value.width}}"
data-height="{{value.height}}"><img src="{{value.src}}" alt="drag a box on the picture to crop"
draggable="false"><div class="sigma-crop-box" style="{{value.box_style}}"></div></div>
{{else}}<span class="sigma-hint">no image yet</span>{{/if}}"""
CROPPER_JS = (STATIC / "cropper.js").read_text(encoding="utf-8")


# Every event that reads a reference slot's image takes it unprocessed (preprocess=False):
# gr.Image's own preprocess opens each upload with PIL before the handler runs, so a file that
# is not an image would fail inside gradio, with gradio's message, once per event. The handlers
# get the uploaded file's path instead (reference_value), and sigma_core reads it, with its
# limits and its message. (An instance-level preprocess override does not do: gradio rebuilds a
# component per session from its constructor arguments whenever an event sends it an update.)
RAW = {"preprocess": False}


def reference_value(payload: Any) -> str | None:
    """A slot image as an unprocessed event gets it (gradio's file data: path, url ...): the
    uploaded file's path, or a pasted data URI, as it is."""
    if not isinstance(payload, dict):
        return payload if isinstance(payload, str) or payload is None else None
    url = payload.get("url")
    if isinstance(url, str) and url.startswith("data:"):
        return url
    path = payload.get("path")
    return path if isinstance(path, str) else None


@dataclass(frozen=True)
class SlotControls:
    box: gr.Column
    image: gr.Image
    attributes: gr.Dropdown
    entity: gr.Textbox
    crop: gr.Textbox
    thumb: gr.Image
    info: gr.Markdown
    messages: gr.HTML
    upload_note: gr.HTML  # why the last file dropped here was not used
    last_good: gr.State  # the slot's image before that file: what a bad upload goes back to
    up: gr.Button
    down: gr.Button
    remove: gr.Button
    insert: gr.Button
    cropper: gr.HTML  # the image with a box to drag: the crop with the mouse
    face_button: gr.Button
    face_seen: gr.State  # the image the automatic face crop last ran on (it runs once each)
    background_button: gr.Button

    @property
    def values(self) -> list[gr.components.Component]:
        return [self.image, self.attributes, self.entity, self.crop]


def _slot_controls(k: int, visible: bool, insert: gr.Button) -> SlotControls:
    """Slot k as a compact card: its image, attributes and entity; the crop and what the model
    sees open on demand."""
    attribute_choices = [(f"{t}: {frontend.DESCRIPTIONS[t]}", t) for t in sigma_core.ATTRIBUTES]
    with gr.Column(
        variant="panel", visible=visible, min_width=160, elem_id=f"slot-{k}",
        elem_classes=["sigma-card"],
    ) as box:  # fmt: skip
        with gr.Row(elem_classes=["sigma-card-head"]):
            gr.HTML(f'<span class="sigma-card-title" title="placed in the prompt as [{k}]">'
                    f"[{k}]</span>")  # fmt: skip
            up = gr.Button("◀", size="sm", min_width=30, elem_id=f"slot-{k}-up")
            down = gr.Button("▶", size="sm", min_width=30, elem_id=f"slot-{k}-down")
            remove = gr.Button(
                "✕", size="sm", variant="stop", min_width=30, elem_id=f"slot-{k}-remove"
            )
        image = gr.Image(
            label=f"Reference [{k}]",
            type="filepath",
            sources=["upload", "clipboard", "webcam"],
            format="png",
            height=130,
            elem_id=f"slot-{k}-image",
        )
        info = gr.Markdown(elem_id=f"slot-{k}-info", elem_classes=["sigma-caption", "sigma-slim"])
        upload_note = gr.HTML(elem_id=f"slot-{k}-upload-note", elem_classes=["sigma-told"])
        messages = gr.HTML(elem_id=f"slot-{k}-problems", elem_classes=["sigma-told"])
        attributes = gr.Dropdown(
            choices=attribute_choices,
            multiselect=True,
            label="Attributes",
            elem_id=f"slot-{k}-attributes",
        )
        entity = gr.Textbox(
            label="Entity phrase",
            show_label=False,
            placeholder="entity: woman, red mug …",
            max_length=frontend.MAX_ENTITY_CHARS,
            elem_id=f"slot-{k}-entity",
        )
        with gr.Accordion("Crop", open=False, elem_id=f"slot-{k}-details"):
            cropper = gr.HTML(
                None, html_template=CROPPER_TEMPLATE, js_on_load=CROPPER_JS,
                elem_id=f"slot-{k}-cropper",
            )  # fmt: skip
            with gr.Row():
                face_button = gr.Button("Crop to the face", size="sm", elem_id=f"slot-{k}-face")
                background_button = gr.Button(
                    "Remove the background", size="sm", elem_id=f"slot-{k}-background"
                )
            crop = gr.Textbox(
                label="Crop box (left, top, right, bottom in pixels; empty: the whole image)",
                placeholder="drag on the image above, or type 10, 20, 300, 310",
                elem_id=f"slot-{k}-crop",
            )
            thumb = gr.Image(
                label="As the model sees it",
                interactive=False,
                format="png",
                height=120,
                elem_id=f"slot-{k}-thumb",
            )
        last_good = gr.State(None)
        face_seen = gr.State(None)
    return SlotControls(
        box, image, attributes, entity, crop, thumb, info, messages, upload_note, last_good, up,
        down, remove, insert, cropper, face_button, face_seen, background_button,
    )  # fmt: skip


@dataclass
class Page:
    """Every control of the page, built once; :mod:`studio.wiring` connects them."""

    history: gr.BrowserState
    saved_draft: gr.BrowserState  # the composition on screen, restored on a reload
    before_change: gr.State  # what the last load, removal or clear of a slot replaced
    undo_button: gr.Button
    selected: gr.State
    slot_count: gr.State
    cursor: gr.Number
    banner: gr.HTML
    preset_dropdown: gr.Dropdown
    preset_upload: gr.UploadButton
    save_button: gr.Button
    preset_file: gr.File
    examples: gr.Gallery
    slots: list[SlotControls]
    add_button: gr.Button
    add_images: gr.UploadButton  # several images at once, each to a slot of its own
    name: gr.Textbox
    prompt: gr.Textbox
    prompt_messages: gr.HTML
    auto_button: gr.Button
    problems: gr.HTML
    sequence: gr.HTML
    mask_button: gr.Button
    mask_image: gr.Image
    settings: SettingsControls
    reuse_seed: gr.Button
    settings_messages: gr.HTML
    generate_button: gr.Button
    cancel_button: gr.Button
    status: gr.HTML
    live_preview: gr.Image
    gallery: gr.Gallery
    result_info: gr.Markdown
    download: gr.DownloadButton
    restore_button: gr.Button
    compare_with: gr.Dropdown
    ab_button: gr.Button
    slider: gr.ImageSlider
    slot_strip: gr.HTML
    precision: gr.Dropdown
    offload: gr.Radio
    engine_apply: gr.Button
    engine_status: gr.HTML
    memory: gr.HTML

    @property
    def draft_inputs(self) -> set[Any]:
        """The controls a draft is read from (a set: handlers get a dict by control)."""
        slot_values = {c for sc in self.slots for c in sc.values}
        return {self.slot_count, self.name, self.prompt, *slot_values, *self.settings.values}

    @property
    def form_outputs(self) -> list[Any]:
        """The controls a draft is written to, in :meth:`form_of`'s order."""
        return [
            self.slot_count, self.name, self.prompt,
            *(c for sc in self.slots for c in sc.values), *self.settings.values,
            *(sc.box for sc in self.slots), *(sc.insert for sc in self.slots),
            *(sc.upload_note for sc in self.slots),
        ]  # fmt: skip

    @property
    def view_outputs(self) -> list[Any]:
        """What is derived from a draft (wiring.view_of): each slot's preview, caption, cropper
        and last readable image, the slot strip, then :attr:`check_outputs`. A change of the
        form writes these in the same response, so the page never shows two drafts at once."""
        per_slot = [(sc.thumb, sc.info, sc.cropper, sc.last_good) for sc in self.slots]
        return [*(c for four in per_slot for c in four), self.slot_strip, *self.check_outputs]

    @property
    def undo_outputs(self) -> list[Any]:
        return [self.before_change, self.undo_button]

    def undo_of(self, old: Draft, change: str) -> list[Any]:
        """:attr:`undo_outputs` after ``change`` (a load; a slot's removal, clear or background
        removal) replaced ``old``: ``old`` kept, and the undo button shown, named for it."""
        return [autosave.stored(old), gr.update(visible=True, value=f"↶ Undo {change}")]

    @property
    def check_outputs(self) -> list[Any]:
        return [
            self.problems, self.sequence, self.prompt_messages, self.settings_messages,
            self.memory, *(sc.messages for sc in self.slots),
        ]  # fmt: skip

    @property
    def result_outputs(self) -> list[Any]:
        return [
            self.status, self.live_preview, self.gallery, self.result_info, self.download,
            self.history, self.selected, self.compare_with, self.slider, self.banner,
        ]  # fmt: skip

    def draft_of(self, data: dict[Any, Any]) -> Draft:
        forms = tuple(
            SlotForm(
                image=reference_value(data[sc.image]),
                attributes=tuple(data[sc.attributes] or ()),
                entity=data[sc.entity] or "",
                crop=data[sc.crop] or "",
            )
            for sc in self.slots[: int(data[self.slot_count])]
        )
        return Draft(
            prompt=data[self.prompt] or "",
            slots=forms,
            settings=self.settings.form_of(data),
            name=data[self.name] or "",
        )

    def form_of(self, draft: Draft) -> list[Any]:
        """Every control's value for ``draft``; slots past it are emptied and hidden, and the
        notes of files not used are cleared (they were about the slots before)."""
        count = len(draft.slots)
        padded = [*draft.slots, *[SlotForm()] * (len(self.slots) - count)]
        slot_values = [v for s in padded for v in (s.image, list(s.attributes), s.entity, s.crop)]
        setting_values = self.settings.values_of(draft.settings)
        shown = [gr.update(visible=k <= count) for k in range(1, len(self.slots) + 1)]
        notes = [""] * len(self.slots)
        return [
            count, draft.name, draft.prompt, *slot_values, *setting_values, *shown, *shown, *notes
        ]  # fmt: skip

    def form_changes(self, old: Draft, new: Draft) -> list[Any]:
        """:meth:`form_of` ``new``, with a skip for each control ``old`` already holds: a
        change to the form (add, remove, move a slot) sends only what it changed, so an answer
        still in flight for another control (a slot's face crop, a typed entity) is not
        overwritten by the value the page held when this change started. A slot's upload note
        is cleared only where the slot's content changed (it was about what was there)."""
        n = len(self.slots)
        before, after = self.form_of(old), self.form_of(new)
        changed = [
            a if _differs(a, b) else gr.skip() for a, b in zip(after[:-n], before[:-n], strict=True)
        ]
        padded = [(*s, *[SlotForm()] * (n - len(s))) for s in (old.slots, new.slots)]
        notes = ["" if a != b else gr.skip() for a, b in zip(*padded, strict=True)]
        return changed + notes

    def keep_form(self) -> list[Any]:
        """The form left as it is: a skip for each of :attr:`form_outputs`."""
        return [gr.skip()] * len(self.form_outputs)


def _differs(a: Any, b: Any) -> bool:
    """Whether two control values differ (an image as its FileData dict or path)."""
    try:
        return bool(a != b)
    except (TypeError, ValueError):  # values without a plain equality: send the new one
        return True


def with_cover(entries: list[presets.PresetEntry]) -> list[presets.PresetEntry]:
    """The presets the examples gallery shows: those with a picture (a text-only preset is
    in the dropdown only)."""
    return [e for e in entries if e.cover is not None]


def build_page(studio: Studio, preset_entries: list[presets.PresetEntry]) -> Page:
    """Every control, in the current gr.Blocks context, none of them wired yet: a toolbar, then
    the workspace (the composition beside the result panel), then the examples."""
    history = gr.BrowserState([], storage_key=HISTORY_KEY)
    saved_draft = gr.BrowserState(None, storage_key=DRAFT_KEY)
    before_change = gr.State(None)
    selected = gr.State(None)  # the chosen result's history entry
    slot_count = gr.State(1)
    cursor = gr.Number(visible=False)
    with gr.Row(elem_id="toolbar"):
        gr.Markdown("## SIGMA Studio", elem_id="title")
        preset_dropdown = gr.Dropdown(
            choices=[(e.name, e.path.name) for e in preset_entries],
            value=None,
            label="Open a shipped preset",
            scale=2,
            elem_id="preset-dropdown",
        )
        preset_upload = gr.UploadButton(
            "Open a preset JSON or a PNG made here",
            file_types=[".json", ".png"],
            size="sm",
            scale=0,
            min_width=160,
            elem_id="preset-upload",
        )
        save_button = gr.Button(
            "Save as JSON", size="sm", scale=0, min_width=110, elem_id="save-preset"
        )
        undo_button = gr.Button(
            "↶ Undo the load", size="sm", visible=False, scale=0, min_width=120,
            elem_id="undo",
        )  # fmt: skip
    preset_file = gr.File(
        label="Saved preset", interactive=False, visible=False, height=60, elem_id="preset-file"
    )
    banner = gr.HTML(views.banner(studio.engine.info, ""), elem_id="engine-banner")
    with gr.Row(elem_id="workspace"):
        with gr.Column(scale=7, elem_id="compose-col"):
            with gr.Column(elem_id="prompt-block"):
                name = gr.Textbox(
                    label="Title", show_label=False, placeholder="Title (optional)",
                    max_length=frontend.MAX_NAME_CHARS, elem_id="composition-name",
                )  # fmt: skip
                prompt = gr.Textbox(
                    label="Prompt: a template with [1], [2] ... or raw SIGMA syntax "
                    "(<id> woman <image_1>)",
                    lines=2,
                    info=f"at most {frontend.MAX_PROMPT_CHARS:,} characters; a longer text is "
                    "refused with its length, never cut · Ctrl+Enter generates",
                    elem_id="prompt",
                )
                prompt_messages = gr.HTML(elem_id="prompt-problems", elem_classes=["sigma-told"])
                slot_numbers = range(1, studio.options.max_references + 1)
                with gr.Row(elem_id="insert-row"):
                    inserts = [
                        gr.Button(
                            f"[{k}]",
                            size="sm",
                            visible=k == 1,
                            scale=0,
                            min_width=44,
                            elem_id=f"insert-{k}",
                        )
                        for k in slot_numbers
                    ]
                    auto_button = gr.Button(
                        "Auto-compose", size="sm", scale=0, min_width=120, elem_id="auto-compose"
                    )
            with gr.Column(elem_id="slots-block"):
                slot_strip = gr.HTML(
                    [],
                    html_template=STRIP_TEMPLATE,
                    js_on_load=STRIP_JS,
                    label="Order: drag a thumbnail onto another to move it there",
                    show_label=True,
                    container=True,
                    elem_id="slot-order",
                )
                with gr.Row(elem_id="slot-grid"):
                    slot_list = [_slot_controls(k, k == 1, inserts[k - 1]) for k in slot_numbers]
                with gr.Row(elem_id="slot-adders"):
                    add_button = gr.Button("+ Add a reference slot", size="sm", elem_id="add-slot")
                    add_images = gr.UploadButton(
                        "+ Add images", file_types=["image/*"], file_count="multiple",
                        size="sm", elem_id="add-images",
                    )  # fmt: skip
            with gr.Column(elem_id="compose-rest"):
                sequence = gr.HTML(elem_id="sequence-view")
                mask_button = gr.Button("Show the attention mask", size="sm", elem_id="mask-button")
                mask_image = gr.Image(
                    label="Attention mask (its legend names each colour)",
                    interactive=False,
                    format="png",
                    visible=False,
                    elem_id="mask-image",
                )
                with gr.Accordion("Settings", open=False, elem_id="settings"):
                    settings = settings_controls()
                    reuse_seed = gr.Button("Reuse last seed", size="sm", elem_id="reuse-seed")
                    settings_messages = gr.HTML(elem_id="settings-problems")
                    precision, offload, engine_apply, engine_status = _engine_controls(studio)
        with gr.Column(scale=5, elem_id="result-panel"):
            with gr.Row():
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
            problems = gr.HTML(elem_id="problems")
            memory = gr.HTML(elem_id="memory-estimate")
            status = gr.HTML(elem_id="progress")
            live_preview = gr.Image(
                label="Live preview (the current estimate of the final image)",
                interactive=False,
                format="png",
                height=160,
                elem_id="live-preview",
            )
            gallery = gr.Gallery(
                label="Results (this browser's history, newest first)",
                columns=3,
                height=240,
                format="png",
                elem_id="gallery",
            )
            result_info = gr.Markdown(elem_id="result-info")
            with gr.Row():
                download = gr.DownloadButton(
                    "Download PNG (composition embedded)", size="sm", visible=False,
                    elem_id="download",
                )  # fmt: skip
                restore_button = gr.Button(
                    "Restore its composition", size="sm", elem_id="restore-composition"
                )
            with gr.Row(equal_height=True):
                compare_with = gr.Dropdown(
                    choices=[], label="Compare with reference", elem_id="compare-with"
                )
                ab_button = gr.Button(
                    "Leakage A/B: same seed, mask flipped", size="sm", elem_id="ab-button"
                )
            slider = gr.ImageSlider(label="Compare", format="png", elem_id="slider")
    examples = gr.Gallery(
        value=[(e.cover, e.name) for e in with_cover(preset_entries)],
        label="Examples: one click fills every slot, the prompt and the settings (undo above)",
        columns=6,
        height=220,
        object_fit="contain",
        allow_preview=False,
        buttons=[],
        elem_id="examples",
    )
    return Page(
        history, saved_draft, before_change, undo_button, selected, slot_count, cursor, banner,
        preset_dropdown, preset_upload, save_button, preset_file, examples, slot_list,
        add_button, add_images, name, prompt, prompt_messages, auto_button, problems, sequence,
        mask_button, mask_image, settings, reuse_seed, settings_messages, generate_button,
        cancel_button, status, live_preview, gallery, result_info, download, restore_button,
        compare_with, ab_button, slider, slot_strip, precision, offload, engine_apply,
        engine_status, memory,
    )  # fmt: skip


def _engine_controls(studio: Studio) -> tuple[gr.Dropdown, gr.Radio, gr.Button, gr.HTML]:
    """Precision and offload of the one engine every session shares: offered only where the
    engine's ``lock`` allows, each mode this machine cannot run marked with the reason."""
    info, lock = studio.engine.info, studio.engine.lock
    refused = refusals(info.device)
    gr.Markdown(
        "**Engine**: applies to everyone using this studio (one engine serves every session); "
        "it reloads after the run in progress."
    )
    with gr.Row():
        precision = gr.Dropdown(
            choices=modes.precision_choices(refused),
            value=info.precision,
            label="Precision",
            info=frontend.PRECISION_HELP,
            interactive=lock is None,
            elem_id="precision",
        )
        offload = gr.Radio(
            choices=modes.offload_choices(refused, info.precision),
            value=info.offload,
            label="Offload",
            info=frontend.OFFLOAD_HELP,
            interactive=lock is None,
            elem_id="offload",
        )
    apply = gr.Button(
        "Reload the engine with this precision and offload",
        size="sm",
        interactive=lock is None,
        elem_id="engine-apply",
    )
    note = "" if lock is None else f"Locked: {lock}. Restart it with --precision / --offload."
    status = gr.HTML(html.escape(note), elem_id="engine-status")
    return precision, offload, apply, status
