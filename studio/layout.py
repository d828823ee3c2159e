"""The studio's page: gradio Blocks and the wiring of events to the handlers, nothing else.

Every control has a stable ``elem_id`` (the browser tests find them by it). Slots are built up
front, ``--max-references`` of them, and shown or hidden by the slot count, so their controls
and events never change identity. Handler errors (any SigmaError) become a warning toast and a
message next to their cause, and leave every control as it was, so the user's work is kept.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.data_classes import ImageData

import sigma_core
from sigma_core import SigmaError, SigmaInputError
from studio import api, compose, modes, presets, runs, slots, views
from studio.engine import Studio, refusals
from studio.forms import (
    MAX_IMAGES_PER_RUN,
    SEED_MODES,
    SIZE_CHOICES,
    Draft,
    SettingsForm,
    SlotForm,
    to_draft,
)

ENGINE_QUEUE = "engine"  # the concurrency id every generation shares: one at a time
HISTORY_KEY = "sigma-studio-history"
# The layout dropdown's help: what each choice lays out (the core's words, one line each)
LAYOUT_INFO = next(s.help for s in sigma_core.SETTING_SPECS if s.name == "layout")
CURSOR_JS = """(prompt, cursor) => {
  const box = document.querySelector('#prompt textarea');
  return [prompt, box ? box.selectionStart : prompt.length];
}"""
# The slot strip: a thumbnail per slot (gr.HTML's template escapes {{...}}); dropping one on
# another sends the new order as an "input" event ("change" also fires on server updates).
STRIP_TEMPLATE = """<div class="sigma-strip">{{#each value}}
<div class="sigma-strip-item" draggable="true" data-slot="{{this.slot}}" title="drag to reorder">
{{#if this.thumb}}<img src="{{this.thumb}}" alt="" draggable="false">{{/if}}
<span>[{{this.slot}}] {{this.label}}</span></div>{{/each}}</div>"""
STRIP_JS = """
let dragged = null;
element.addEventListener('dragstart', (e) => {
  const item = e.target.closest('[data-slot]');
  if (!item) return;
  dragged = Number(item.dataset.slot);
  e.dataTransfer.effectAllowed = 'move';
  e.dataTransfer.setData('text/plain', String(dragged));
});
element.addEventListener('dragover', (e) => { if (dragged !== null) e.preventDefault(); });
element.addEventListener('drop', (e) => {
  e.preventDefault();
  const target = e.target.closest('[data-slot]');
  const from = dragged;
  dragged = null;
  if (!target || from === null || Number(target.dataset.slot) === from) return;
  const order = [...element.querySelectorAll('[data-slot]')].map((x) => Number(x.dataset.slot));
  order.splice(order.indexOf(from), 1);
  const to = Number(target.dataset.slot);
  order.splice(order.indexOf(to) + (from < to ? 1 : 0), 0, from);  // after it going down
  trigger('input', {order});
});
element.addEventListener('dragend', () => { dragged = null; });
"""


def _untouched_upload(payload: ImageData | None) -> str | None:
    """A reference image's preprocess: the uploaded file's path (or a pasted data URI) as it
    is. gr.Image's own preprocess opens every upload with PIL before the handler runs, so a
    file that is not an image fails inside gradio with PIL's message; sigma_core reads it
    instead, with its limits and its message. (Set on the instance: a gr.Image subclass makes
    gradio write a .pyi stub next to this module at import.)"""
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):
        return payload.url
    return payload.path


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
    up: gr.Button
    down: gr.Button
    remove: gr.Button
    insert: gr.Button

    @property
    def values(self) -> list[gr.components.Component]:
        return [self.image, self.attributes, self.entity, self.crop]


@dataclass(frozen=True)
class SettingsControls:
    size: gr.Dropdown
    steps: gr.Slider
    cfg_text: gr.Slider
    cfg_img: gr.Slider
    cfg_start: gr.Slider
    cfg_end: gr.Slider
    shift: gr.Slider
    renorm_type: gr.Dropdown
    renorm_min: gr.Slider
    seed_mode: gr.Radio
    seed: gr.Textbox
    images_per_run: gr.Slider
    mask: gr.Checkbox
    attribute_projection: gr.Checkbox
    layout: gr.Dropdown

    @property
    def values(self) -> list[gr.components.Component]:
        return [getattr(self, name) for name in SettingsForm.__dataclass_fields__]


def _warn(error: SigmaError) -> None:
    gr.Warning(html.escape(str(error)))  # toasts render HTML: <id> must stay visible


def _slot_controls(k: int, visible: bool) -> SlotControls:
    attribute_choices = [(f"{t}: {sigma_core.DESCRIPTIONS[t]}", t) for t in sigma_core.ATTRIBUTES]
    with gr.Column(variant="panel", visible=visible, elem_id=f"slot-{k}") as box:
        gr.Markdown(f"**Slot {k}**, placed in the prompt as `[{k}]`")
        with gr.Row():
            image = gr.Image(
                label=f"Reference [{k}]",
                type="filepath",
                sources=["upload", "clipboard", "webcam"],
                format="png",
                height=220,
                elem_id=f"slot-{k}-image",
            )
            image.preprocess = _untouched_upload
            with gr.Column(min_width=160):
                thumb = gr.Image(
                    label="As the model sees it",
                    interactive=False,
                    format="png",
                    height=150,
                    elem_id=f"slot-{k}-thumb",
                )
                info = gr.Markdown(elem_id=f"slot-{k}-info")
        attributes = gr.Dropdown(
            choices=attribute_choices,
            multiselect=True,
            label="Attributes",
            info="What this image contributes; [k] expands to these tokens, its entity and "
            "the image",
            elem_id=f"slot-{k}-attributes",
        )
        entity = gr.Textbox(
            label="Entity phrase",
            placeholder="woman with brown hair",
            max_length=sigma_core.MAX_ENTITY_CHARS,
            elem_id=f"slot-{k}-entity",
        )
        crop = gr.Textbox(
            label="Crop (optional)",
            placeholder="left, top, right, bottom in pixels of the upright image; empty: none",
            elem_id=f"slot-{k}-crop",
        )
        messages = gr.HTML(elem_id=f"slot-{k}-problems")
        with gr.Row():
            up = gr.Button("▲ Up", size="sm", elem_id=f"slot-{k}-up")
            down = gr.Button("▼ Down", size="sm", elem_id=f"slot-{k}-down")
            remove = gr.Button("✕ Remove", size="sm", variant="stop", elem_id=f"slot-{k}-remove")
    insert = gr.Button(f"[{k}]", size="sm", visible=visible, render=False, elem_id=f"insert-{k}")
    return SlotControls(
        box, image, attributes, entity, crop, thumb, info, messages, up, down, remove, insert
    )


def _settings_controls() -> SettingsControls:
    defaults = SettingsForm()
    with gr.Row():
        size = gr.Dropdown(
            choices=list(SIZE_CHOICES),
            value=defaults.size,
            allow_custom_value=True,
            label="Size",
            info="Follow the last reference (as BAGEL does), a preset aspect, or WIDTHxHEIGHT",
            elem_id="size",
        )
        steps = gr.Slider(
            sigma_core.MIN_TIMESTEPS,
            min(sigma_core.MAX_TIMESTEPS, 200),
            value=defaults.steps,
            step=1,
            label="Timesteps",
            info="N timesteps make N-1 steps",
            elem_id="steps",
        )
    with gr.Row():
        cfg_text = gr.Slider(
            0, sigma_core.MAX_CFG_SCALE, value=defaults.cfg_text, step=0.1,
            label="Text guidance (cfg_text)", elem_id="cfg-text",
        )  # fmt: skip
        cfg_img = gr.Slider(
            0, sigma_core.MAX_CFG_SCALE, value=defaults.cfg_img, step=0.1,
            label="Image guidance (cfg_img)", elem_id="cfg-img",
        )  # fmt: skip
    with gr.Row():
        cfg_start = gr.Slider(
            0, 1, value=defaults.cfg_start, step=0.05, label="Guidance from t", elem_id="cfg-start"
        )
        cfg_end = gr.Slider(
            0, 1, value=defaults.cfg_end, step=0.05, label="Guidance to t", elem_id="cfg-end"
        )
        shift = gr.Slider(
            sigma_core.MIN_SHIFT, sigma_core.MAX_SHIFT, value=defaults.shift, step=0.05,
            label="Timestep shift", elem_id="shift",
        )  # fmt: skip
    with gr.Row():
        renorm_type = gr.Dropdown(
            choices=list(sigma_core.RENORM_TYPES),
            value=defaults.renorm_type,
            label="CFG renorm",
            elem_id="renorm-type",
        )
        renorm_min = gr.Slider(
            0, 1, value=defaults.renorm_min, step=0.05, label="Renorm min", elem_id="renorm-min"
        )
    with gr.Row():
        seed_mode = gr.Radio(
            list(SEED_MODES), value=defaults.seed_mode, label="Seed", elem_id="seed-mode"
        )
        seed = gr.Textbox(
            value=defaults.seed, label="Seed value", info="0 to 2^63 - 1", elem_id="seed"
        )
        images_per_run = gr.Slider(
            1, MAX_IMAGES_PER_RUN, value=1, step=1, label="Images per run (seed, seed+1 ...)",
            elem_id="images-per-run",
        )  # fmt: skip
    with gr.Row():
        mask = gr.Checkbox(
            value=defaults.mask,
            label="SIGMA's attention mask (attribute tokens see only their own image)",
            elem_id="mask",
        )
        attribute_projection = gr.Checkbox(
            value=defaults.attribute_projection,
            label="W_tau attribute projection (no-op for checkpoints without it)",
            elem_id="attribute-projection",
        )
    layout = gr.Dropdown(
        choices=list(sigma_core.LAYOUT_CHOICES),
        value=defaults.layout,
        label="Sequence layout",
        info=LAYOUT_INFO,
        elem_id="layout",
    )
    return SettingsControls(
        size, steps, cfg_text, cfg_img, cfg_start, cfg_end, shift, renorm_type, renorm_min,
        seed_mode, seed, images_per_run, mask, attribute_projection, layout,
    )  # fmt: skip


@dataclass
class Page:
    """Every control of the page, built once; the wiring functions below connect them."""

    history: gr.BrowserState
    selected: gr.State
    slot_count: gr.State
    cursor: gr.Number
    banner: gr.HTML
    preset_dropdown: gr.Dropdown
    preset_upload: gr.File
    save_button: gr.Button
    preset_file: gr.File
    examples: gr.Gallery
    slots: list[SlotControls]
    add_button: gr.Button
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
        ]  # fmt: skip

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
                image=data[sc.image],
                attributes=tuple(data[sc.attributes] or ()),
                entity=data[sc.entity] or "",
                crop=data[sc.crop] or "",
            )
            for sc in self.slots[: int(data[self.slot_count])]
        )
        values = {n: data[getattr(self.settings, n)] for n in SettingsForm.__dataclass_fields__}
        return Draft(
            prompt=data[self.prompt] or "",
            slots=forms,
            settings=SettingsForm(**values),
            name=data[self.name] or "",
        )

    def form_of(self, draft: Draft) -> list[Any]:
        """Every control's value for ``draft``; slots past it are emptied and hidden."""
        count = len(draft.slots)
        padded = [*draft.slots, *[SlotForm()] * (len(self.slots) - count)]
        slot_values = [v for s in padded for v in (s.image, list(s.attributes), s.entity, s.crop)]
        setting_values = [getattr(draft.settings, n) for n in SettingsForm.__dataclass_fields__]
        shown = [gr.update(visible=k <= count) for k in range(1, len(self.slots) + 1)]
        return [count, draft.name, draft.prompt, *slot_values, *setting_values, *shown, *shown]

    def keep_form(self) -> list[Any]:
        return [gr.skip()] * len(self.form_outputs)


def _with_cover(entries: list[presets.PresetEntry]) -> list[presets.PresetEntry]:
    """The presets the examples gallery shows: those with a picture (a text-only preset is
    in the dropdown only)."""
    return [e for e in entries if e.cover is not None]


def _build_page(studio: Studio, preset_entries: list[presets.PresetEntry]) -> Page:
    history = gr.BrowserState([], storage_key=HISTORY_KEY)
    selected = gr.State(None)  # the chosen result's history entry
    slot_count = gr.State(1)
    cursor = gr.Number(visible=False)
    gr.Markdown("# SIGMA Studio\nCompose one image from references, each bound to one attribute.")
    banner = gr.HTML(views.banner(studio.engine.info, ""), elem_id="engine-banner")
    with gr.Row():
        preset_dropdown = gr.Dropdown(
            choices=[(e.name, e.path.name) for e in preset_entries],
            value=None,
            label="Preset",
            elem_id="preset-dropdown",
        )
        preset_upload = gr.File(
            label="Open a preset JSON, or a PNG made by SIGMA Studio",
            file_types=[".json", ".png"],
            elem_id="preset-upload",
        )
        with gr.Column():
            save_button = gr.Button("Save composition as JSON", elem_id="save-preset")
            preset_file = gr.File(label="Saved preset", interactive=False, elem_id="preset-file")
    examples = gr.Gallery(
        value=[(e.cover, e.name) for e in _with_cover(preset_entries)],
        label="Examples: one click fills every slot, the prompt and the settings",
        columns=6,
        height=180,
        allow_preview=False,
        buttons=[],
        elem_id="examples",
    )
    with gr.Row():
        with gr.Column(scale=5):
            slot_strip = gr.HTML(
                [],
                html_template=STRIP_TEMPLATE,
                js_on_load=STRIP_JS,
                label="Slot order: drag a thumbnail onto another to move it there",
                show_label=True,
                container=True,
                elem_id="slot-order",
            )
            slot_list = [
                _slot_controls(k, k == 1) for k in range(1, studio.options.max_references + 1)
            ]
            add_button = gr.Button("+ Add a reference slot", elem_id="add-slot")
        with gr.Column(scale=6):
            name = gr.Textbox(
                label="Title", max_length=sigma_core.MAX_NAME_CHARS, elem_id="composition-name"
            )
            prompt = gr.Textbox(
                label="Prompt: a template with [1], [2] ... or raw SIGMA syntax "
                "(<id> woman <image_1>)",
                lines=3,
                max_length=sigma_core.MAX_PROMPT_CHARS,
                elem_id="prompt",
            )
            prompt_messages = gr.HTML(elem_id="prompt-problems")
            with gr.Row():
                for sc in slot_list:
                    sc.insert.render()
                auto_button = gr.Button("Auto-compose", size="sm", elem_id="auto-compose")
            problems = gr.HTML(elem_id="problems")
            sequence = gr.HTML(elem_id="sequence-view")
            mask_button = gr.Button("Show the attention mask", size="sm", elem_id="mask-button")
            mask_image = gr.Image(
                label="Attention mask (red: blocked by SIGMA's mask)",
                interactive=False,
                format="png",
                visible=False,
                elem_id="mask-image",
            )
            with gr.Accordion("Settings", open=False, elem_id="settings"):
                settings = _settings_controls()
                reuse_seed = gr.Button("Reuse last seed", size="sm", elem_id="reuse-seed")
                settings_messages = gr.HTML(elem_id="settings-problems")
                precision, offload, engine_apply, engine_status = _engine_controls(studio)
            memory = gr.HTML(elem_id="memory-estimate")
            with gr.Row():
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
            status = gr.HTML(elem_id="progress")
            live_preview = gr.Image(
                label="Live preview (the current estimate of the final image)",
                interactive=False,
                format="png",
                height=256,
                elem_id="live-preview",
            )
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="Results (this browser's history)",
                columns=4,
                format="png",
                elem_id="gallery",
            )
        with gr.Column(scale=2):
            result_info = gr.Markdown(elem_id="result-info")
            download = gr.DownloadButton(
                "Download PNG (composition embedded)", visible=False, elem_id="download"
            )
            restore_button = gr.Button(
                "Restore this result's composition", elem_id="restore-composition"
            )
            compare_with = gr.Dropdown(
                choices=[], label="Compare the result with reference", elem_id="compare-with"
            )
            ab_button = gr.Button(
                "Leakage A/B: the same seed with the mask flipped", elem_id="ab-button"
            )
    slider = gr.ImageSlider(label="Compare", format="png", elem_id="slider")
    return Page(
        history, selected, slot_count, cursor, banner, preset_dropdown, preset_upload,
        save_button, preset_file, examples, slot_list, add_button, name, prompt,
        prompt_messages, auto_button, problems, sequence, mask_button, mask_image, settings,
        reuse_seed, settings_messages, generate_button, cancel_button, status, live_preview,
        gallery, result_info, download, restore_button, compare_with, ab_button, slider,
        slot_strip, precision, offload, engine_apply, engine_status, memory,
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
            info=sigma_core.PRECISION_HELP,
            interactive=lock is None,
            elem_id="precision",
        )
        offload = gr.Radio(
            choices=modes.offload_choices(refused, info.precision),
            value=info.offload,
            label="Offload",
            info=sigma_core.OFFLOAD_HELP,
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


def build_app(studio: Studio) -> gr.Blocks:
    """The page, wired to the handlers."""
    preset_entries = presets.list_presets(studio.options.presets)
    with gr.Blocks(title="SIGMA Studio") as demo:
        page = _build_page(studio, preset_entries)
        _wire_checks(studio, page, demo)
        _wire_slots(studio, page, demo)
        _wire_engine(studio, page, demo)
        _wire_generation(studio, page)
        _wire_results(studio, page, demo)
        _wire_presets(studio, page, preset_entries)
        _wire_api(studio)

        def forget(request: gr.Request) -> None:
            studio.sessions.forget(request.session_hash)

        demo.unload(forget)
    return demo


def _quiet(**kwargs: Any) -> dict[str, Any]:
    """Event options of the small UI events: never queued behind a run, not in the API."""
    return {"concurrency_limit": None, "api_visibility": "private", **kwargs}


def _memory(studio: Studio, result: compose.Check) -> str:
    """The predicted peak of a draft that plans."""
    if result.composition is None:
        return views.memory(None)
    try:
        return views.memory(modes.fit_for(studio.engine, result.composition))
    except SigmaError as e:
        return views.messages([str(e)], [])


def _wire_checks(studio: Studio, page: Page, demo: gr.Blocks) -> None:
    """Validation as you type: problems next to their causes, and the sequence view."""

    def validate(data: dict[Any, Any]) -> list[Any]:
        draft = page.draft_of(data)
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
            _memory(studio, result),
            *per_slot,
        ]

    # The banner changes with the engine (a switch, a run's memory): the prediction follows.
    triggers = [page.prompt.change, page.name.change, page.slot_count.change, page.banner.change]
    triggers += [c.change for sc in page.slots for c in sc.values]
    triggers += [c.change for c in page.settings.values]
    gr.on(
        triggers, validate, inputs=page.draft_inputs, outputs=page.check_outputs,
        **_quiet(trigger_mode="always_last", show_progress="hidden"),
    )  # fmt: skip
    demo.load(validate, inputs=page.draft_inputs, outputs=page.check_outputs, **_quiet())

    def show_mask(data: dict[Any, Any]) -> Any:
        try:
            result = compose.check(studio.engine, page.draft_of(data))
            path = compose.mask_picture(result, studio.files)
        except SigmaError as e:
            _warn(e)
            return gr.skip()
        return gr.update(value=str(path), visible=True)

    page.mask_button.click(
        show_mask, inputs=page.draft_inputs, outputs=[page.mask_image], **_quiet()
    )

    def auto(data: dict[Any, Any]) -> Any:
        try:
            return compose.auto_compose(page.draft_of(data))
        except SigmaError as e:
            _warn(e)
            return gr.skip()

    page.auto_button.click(auto, inputs=page.draft_inputs, outputs=[page.prompt], **_quiet())


def _wire_slots(studio: Studio, page: Page, demo: gr.Blocks) -> None:
    """Add, remove, move, insert [k], and each slot's thumbnail."""

    def form_handler(change: Callable[[Draft], Draft]) -> Callable[[dict[Any, Any]], list[Any]]:
        def handler(data: dict[Any, Any]) -> list[Any]:
            try:
                return page.form_of(change(page.draft_of(data)))
            except SigmaError as e:
                _warn(e)
                return page.keep_form()

        return handler

    for k, sc in enumerate(page.slots, start=1):

        def show_thumbnail(image: str | None, crop: str | None, k: int = k) -> list[Any]:
            thumb = slots.thumbnail(SlotForm(image=image, crop=crop or ""), k)
            return [thumb.image, thumb.caption]  # a problem shows in the slot's messages

        gr.on(
            [sc.image.change, sc.crop.change], show_thumbnail, inputs=[sc.image, sc.crop],
            outputs=[sc.thumb, sc.info],
            **_quiet(trigger_mode="always_last", show_progress="hidden"),
        )  # fmt: skip
        for button, change in (
            (sc.up, lambda d, k=k: slots.move_slot(d, k, -1)),
            (sc.down, lambda d, k=k: slots.move_slot(d, k, +1)),
            (sc.remove, lambda d, k=k: slots.remove_slot(d, k)),
        ):
            button.click(
                form_handler(change), inputs=page.draft_inputs, outputs=page.form_outputs,
                **_quiet(),
            )  # fmt: skip

        def insert(text: str | None, at: float | None, k: int = k) -> str:
            return slots.insert_reference(text or "", k, None if at is None else int(at))[0]

        sc.insert.click(
            insert, inputs=[page.prompt, page.cursor], outputs=[page.prompt], js=CURSOR_JS,
            **_quiet(),
        )  # fmt: skip

    max_slots = studio.options.max_references
    page.add_button.click(
        form_handler(lambda d: slots.add_slot(d, max_slots)), inputs=page.draft_inputs,
        outputs=page.form_outputs, **_quiet(),
    )  # fmt: skip

    def drop(data: dict[Any, Any], event: gr.EventData) -> list[Any]:
        order = getattr(event, "_data", None) or {}
        return form_handler(lambda d: slots.reorder_slots(d, order.get("order")))(data)

    page.slot_strip.input(drop, inputs=page.draft_inputs, outputs=page.form_outputs, **_quiet())

    def strip(data: dict[Any, Any]) -> list[dict[str, Any]]:
        return views.slot_strip(page.draft_of(data))

    triggers = [page.slot_count.change]
    triggers += [c.change for sc in page.slots for c in (sc.image, sc.crop, sc.attributes)]
    triggers += [sc.entity.change for sc in page.slots]
    gr.on(
        triggers, strip, inputs=page.draft_inputs, outputs=[page.slot_strip],
        **_quiet(trigger_mode="always_last", show_progress="hidden"),
    )  # fmt: skip
    demo.load(strip, inputs=page.draft_inputs, outputs=[page.slot_strip], **_quiet())


def _wire_engine(studio: Studio, page: Page, demo: gr.Blocks) -> None:
    """The engine's precision and offload: one reload for every session, queued with the runs
    (never during one), the old engine kept when the new one cannot load."""
    refused = refusals(studio.engine.info.device)

    def offload_for(precision: str) -> Any:
        return gr.update(choices=modes.offload_choices(refused, precision))

    page.precision.input(offload_for, inputs=[page.precision], outputs=[page.offload], **_quiet())

    def current() -> dict[Any, Any]:
        """The engine's modes now (another session may have switched them)."""
        info = studio.engine.info
        return {
            page.banner: views.banner(info, studio.engine.memory_in_use()),
            page.precision: info.precision,
            page.offload: gr.update(
                value=info.offload, choices=modes.offload_choices(refused, info.precision)
            ),
        }

    def apply(precision: str, offload: str) -> Iterator[dict[Any, Any]]:
        yield {page.engine_status: f"Loading {html.escape(precision)}, offload "
               f"{html.escape(offload)}… generation waits until it is loaded."}  # fmt: skip
        try:
            done = modes.switch_engine(studio.engine, precision, offload)
        except SigmaError as e:
            _warn(e)
            yield {**current(), page.engine_status: views.messages([str(e)], [])}
            return
        yield {**current(), page.engine_status: html.escape(done)}

    engine_outputs = [page.banner, page.precision, page.offload, page.engine_status]
    page.engine_apply.click(
        apply, inputs=[page.precision, page.offload], outputs=engine_outputs,
        concurrency_id=ENGINE_QUEUE, concurrency_limit=1, show_progress="minimal",
        show_progress_on=[page.engine_status], api_visibility="private",
    )  # fmt: skip
    demo.load(current, outputs=engine_outputs[:3], **_quiet())


_PROGRESS = gr.Progress()  # a marker default: gradio gives each call its own tracker


def _wire_generation(studio: Studio, page: Page) -> None:
    """Generate (one run at a time for all sessions), Cancel (this session's only), the A/B
    run, and reusing a seed."""

    def arm(request: gr.Request) -> None:
        studio.sessions.arm(request.session_hash)

    def cancel(request: gr.Request) -> str:
        if studio.sessions.cancel(request.session_hash):
            return "Cancelling: the run stops after the current step…"
        return "Nothing to cancel."

    def run(
        data: dict[Any, Any], request: gr.Request, progress: gr.Progress = _PROGRESS
    ) -> Iterator[dict[Any, Any]]:
        yield {page.status: "Waiting for the engine…", page.live_preview: None}
        items = runs.generate(
            studio.engine, studio.sessions, request.session_hash, page.draft_of(data),
            files=studio.files, time_limit_s=studio.options.time_limit_s,
        )  # fmt: skip
        yield from _stream_to_page(studio, page, items, data[page.history], progress)

    def run_ab(
        data: dict[Any, Any], request: gr.Request, progress: gr.Progress = _PROGRESS
    ) -> Iterator[dict[Any, Any]]:
        entry = data[page.selected]
        try:
            if entry is None:
                raise SigmaInputError("A/B: choose a result in the gallery first")
            twins = runs.ab_compositions(entry, studio.files)
        except SigmaError as e:
            _warn(e)
            return
        yield {page.status: "A/B: the same seed with the mask flipped…"}
        items = runs.stream(
            studio.engine, studio.sessions, request.session_hash, twins,
            files=studio.files, time_limit_s=studio.options.time_limit_s,
        )  # fmt: skip
        pair = lambda other: runs.ab_pair(entry, other, studio.files)  # noqa: E731
        yield from _stream_to_page(studio, page, items, data[page.history], progress, pair)

    for button, fn, inputs in (
        (page.generate_button, run, {*page.draft_inputs, page.history}),
        (page.ab_button, run_ab, {page.selected, page.history}),
    ):
        button.click(arm, **_quiet()).then(
            fn, inputs=inputs, outputs=page.result_outputs, concurrency_id=ENGINE_QUEUE,
            concurrency_limit=1, show_progress="minimal", show_progress_on=[page.status],
            api_visibility="private",
        )  # fmt: skip
    page.cancel_button.click(cancel, outputs=[page.status], **_quiet())

    def reuse(entry: dict[str, Any] | None, stored: Any) -> list[Any]:
        latest = entry or next(iter(runs.valid_history(stored)), None)
        if latest is None:
            gr.Warning("No result yet: generate once, then its seed can be reused.")
            return [gr.skip(), gr.skip()]
        return ["fixed", str(latest["seed"])]

    page.reuse_seed.click(
        reuse, inputs=[page.selected, page.history],
        outputs=[page.settings.seed_mode, page.settings.seed], **_quiet(),
    )  # fmt: skip


def _stream_to_page(
    studio: Studio, page: Page, items: Iterator[runs.RunItem], old_history: Any,
    progress: gr.Progress, pair: Callable[[dict[str, Any]], Any] | None = None,
) -> Iterator[dict[Any, Any]]:  # fmt: skip
    """A run's progress as page updates; at the end the results, or the error (the form is
    never among the outputs, so the composition stays as it is)."""
    for item in items:
        if isinstance(item, runs.Progress):
            progress((item.step, item.steps), desc=f"image {item.image}/{item.images}")
            update: dict[Any, Any] = {page.status: views.progress(item)}
            if item.preview is not None:
                update[page.live_preview] = item.preview
            yield update
            continue
        memory = studio.engine.memory_in_use()
        out: dict[Any, Any] = {page.banner: views.banner(studio.engine.info, memory)}
        if item.error:
            (gr.Info if item.cancelled else gr.Warning)(html.escape(item.error))
            out[page.status] = views.messages([item.error], [])
        else:
            out[page.status] = "Done."
        if item.entries:
            new_history = runs.add_to_history(old_history, item.entries)
            out.update(_selection(studio, page, item.entries[0]))
            out[page.history] = new_history
            out[page.gallery] = gr.update(
                value=runs.gallery_items(new_history, studio.files), selected_index=0
            )
            if pair is not None:
                out[page.slider] = pair(item.entries[0])
        yield out


def _selection(studio: Studio, page: Page, entry: dict[str, Any]) -> dict[Any, Any]:
    """The result panel for one history entry."""
    path = runs.result_file(entry, studio.files)
    choices = [(f"reference [{s}]", str(s)) for s in runs.placed_references(entry)]
    return {
        page.selected: entry,
        page.result_info: views.result_info(entry),
        page.download: gr.update(value=str(path) if path else None, visible=path is not None),
        page.compare_with: gr.update(choices=choices, value=None),
    }


def _wire_results(studio: Studio, page: Page, demo: gr.Blocks) -> None:
    """The gallery: select a result, compare it, restore its composition."""

    def on_select(stored: Any, event: gr.SelectData) -> dict[Any, Any]:
        entries = runs.valid_history(stored)
        if not 0 <= event.index < len(entries):
            return {}
        return _selection(studio, page, entries[event.index])

    page.gallery.select(
        on_select, inputs=[page.history],
        outputs=[page.selected, page.result_info, page.download, page.compare_with], **_quiet(),
    )  # fmt: skip

    def compare(entry: dict[str, Any] | None, slot: str | None) -> Any:
        if entry is None or not slot:
            return gr.skip()
        try:
            return runs.compare_with_reference(entry, int(slot), studio.files)
        except SigmaError as e:
            _warn(e)
            return gr.skip()

    page.compare_with.input(
        compare, inputs=[page.selected, page.compare_with], outputs=[page.slider], **_quiet()
    )

    def restore(entry: dict[str, Any] | None) -> list[Any]:
        try:
            if entry is None:
                raise SigmaInputError("history: choose a result in the gallery first")
            comp = runs.entry_composition(entry, studio.files)
            return page.form_of(
                to_draft(comp, studio.files, max_slots=studio.options.max_references)
            )
        except SigmaError as e:
            _warn(e)
            return page.keep_form()

    page.restore_button.click(
        restore, inputs=[page.selected], outputs=page.form_outputs, **_quiet()
    )

    def load_page(stored: Any) -> list[Any]:
        return runs.gallery_items(stored, studio.files)

    demo.load(load_page, inputs=[page.history], outputs=[page.gallery], **_quiet())


def _wire_presets(studio: Studio, page: Page, entries: list[presets.PresetEntry]) -> None:
    """The preset dropdown, the examples, opening an upload, saving the composition."""
    by_name = {e.path.name: e.path for e in entries}

    def open_path(path: Any) -> list[Any]:
        try:
            draft = presets.open_composition(
                path, studio.files, max_slots=studio.options.max_references
            )
        except SigmaError as e:
            _warn(e)
            return page.keep_form()
        return page.form_of(draft)

    page.preset_dropdown.input(
        lambda choice: open_path(by_name.get(choice or "")), inputs=[page.preset_dropdown],
        outputs=page.form_outputs, **_quiet(),
    )  # fmt: skip

    shown = _with_cover(entries)

    def open_example(event: gr.SelectData) -> list[Any]:
        return open_path(shown[event.index].path if 0 <= event.index < len(shown) else None)

    page.examples.select(open_example, outputs=page.form_outputs, **_quiet())
    page.preset_upload.upload(
        lambda path: [*open_path(path), None],  # emptied again, ready for the next file
        inputs=[page.preset_upload],
        outputs=[*page.form_outputs, page.preset_upload],
        **_quiet(),
    )

    def save(data: dict[Any, Any]) -> Any:
        try:
            return str(presets.save_draft(page.draft_of(data), studio.files))
        except SigmaError as e:
            _warn(e)
            return gr.skip()

    page.save_button.click(save, inputs=page.draft_inputs, outputs=[page.preset_file], **_quiet())


def _wire_api(studio: Studio) -> None:
    """/generate, /inspect and /validate_preset: preset JSON in, for gradio_client and curl."""
    with gr.Row(visible=False):
        preset = gr.Textbox(label="preset JSON")
        image = gr.File(label="image")
        meta = gr.JSON(label="metadata")
        report = gr.JSON(label="report")
        buttons = [gr.Button() for _ in range(3)]

    def generate(preset_json: str, request: gr.Request) -> tuple[str, dict[str, Any]]:
        """Generate a preset given as JSON (images embedded as data URIs, or named from the
        shipped assets); returns the PNG, its composition embedded, and its metadata."""
        studio.sessions.arm(request.session_hash)
        try:
            return api.api_generate(
                studio.engine, studio.sessions, request.session_hash, preset_json,
                files=studio.files, time_limit_s=studio.options.time_limit_s,
            )  # fmt: skip
        except SigmaError as e:
            raise gr.Error(str(e)) from None

    def inspect(preset_json: str) -> dict[str, Any]:
        """The interleaved sequence a preset makes: segments, groups and token counts."""
        try:
            return api.api_inspect(studio.engine, preset_json)
        except SigmaError as e:
            raise gr.Error(str(e)) from None

    def validate_preset(preset_json: str) -> dict[str, Any]:
        """Whether a preset would run: its problems, or its token count and warnings."""
        return api.api_validate_preset(studio.engine, preset_json)

    buttons[0].click(
        generate, inputs=[preset], outputs=[image, meta], api_name="generate",
        concurrency_id=ENGINE_QUEUE, concurrency_limit=1,
    )  # fmt: skip
    buttons[1].click(
        inspect, inputs=[preset], outputs=[report], api_name="inspect", concurrency_limit=None
    )
    buttons[2].click(
        validate_preset, inputs=[preset], outputs=[report], api_name="validate_preset",
        concurrency_limit=None,
    )  # fmt: skip
