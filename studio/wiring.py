"""The page's events, connected to their handlers, nothing else.

Each handler is a thin wrapper over a function of the studio's other modules (compose, slots,
runs, presets, modes, api) that the tests call directly. A handler's error (any SigmaError)
becomes a warning toast and a message next to its cause, and leaves every control as it was,
so the user's work is kept (:func:`warns`).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from sigma_core import SigmaError, SigmaInputError
from studio import api, autosave, compose, modes, presets, render, runs, views
from studio.engine import Studio, refusals
from studio.forms import Draft, to_draft
from studio.handlers import quiet, warn, warns
from studio.page import CANCEL_JS, RAW, Page, reference_value, with_cover
from studio.slot_events import wire_slots

ENGINE_QUEUE = "engine"  # the concurrency id every generation shares: one at a time


def wire(studio: Studio, page: Page, demo: gr.Blocks, entries: list[presets.PresetEntry]) -> None:
    """Every event of ``page`` (built in ``demo`` from the presets ``entries``), and the API."""
    _wire_checks(studio, page, demo)
    wire_slots(studio, page)
    _wire_engine(studio, page, demo)
    _wire_generation(studio, page)
    _wire_results(studio, page, demo)
    _wire_presets(studio, page, demo, entries)
    _wire_api(studio)

    def forget(request: gr.Request) -> None:
        studio.sessions.forget(request.session_hash)

    demo.unload(forget)


def _wire_checks(studio: Studio, page: Page, demo: gr.Blocks) -> None:
    """Validation as you type: problems next to their causes, the slot strip and the sequence
    view. Only a person's edits trigger it (``input``): a change the server makes to the form
    sends its whole view with it."""

    def refresh(data: dict[Any, Any]) -> list[Any]:
        draft = page.draft_of(data)
        return [views.slot_strip(draft), *render.checks(studio, page, draft)]

    # Text and settings by "change": a paste or a browser's autofill is no keystroke. A change
    # the server makes triggers it too, and gets the same (consistent) answer.
    triggers = [page.prompt.change, page.name.change, *(sc.entity.change for sc in page.slots)]
    triggers += [c.change for c in page.settings.values]
    gr.on(
        triggers, refresh, inputs=page.draft_inputs,
        outputs=[page.slot_strip, *page.check_outputs], **RAW,
        **quiet(trigger_mode="always_last", show_progress="hidden"),
    )  # fmt: skip

    def check(data: dict[Any, Any]) -> list[Any]:
        return render.checks(studio, page, page.draft_of(data))

    # The banner changes with the engine (a switch, a run's memory): the prediction follows.
    page.banner.change(
        check, inputs=page.draft_inputs, outputs=page.check_outputs, **RAW,
        **quiet(trigger_mode="always_last", show_progress="hidden"),
    )  # fmt: skip

    @warns(keep=gr.skip)
    def show_mask(data: dict[Any, Any]) -> Any:
        result = compose.check(studio.engine, page.draft_of(data))
        path = compose.mask_picture(result, studio.files)
        return gr.update(value=str(path), visible=True)

    page.mask_button.click(
        show_mask, inputs=page.draft_inputs, outputs=[page.mask_image], **RAW, **quiet()
    )

    @warns(keep=gr.skip)
    def auto(data: dict[Any, Any]) -> Any:
        return compose.auto_compose(page.draft_of(data))

    page.auto_button.click(
        auto, inputs=page.draft_inputs, outputs=[page.prompt], **RAW, **quiet()
    ).then(check, inputs=page.draft_inputs, outputs=page.check_outputs, **RAW, **quiet())


def _wire_engine(studio: Studio, page: Page, demo: gr.Blocks) -> None:
    """The engine's precision and offload: one reload for every session, queued with the runs
    (never during one), the old engine kept when the new one cannot load."""
    refused = refusals(studio.engine.info.device)

    def offload_for(precision: str) -> Any:
        return gr.update(choices=modes.offload_choices(refused, precision))

    page.precision.input(offload_for, inputs=[page.precision], outputs=[page.offload], **quiet())

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
            warn(e)
            yield {**current(), page.engine_status: views.messages([str(e)], [])}
            return
        yield {**current(), page.engine_status: html.escape(done)}

    engine_outputs = [page.banner, page.precision, page.offload, page.engine_status]
    page.engine_apply.click(
        apply, inputs=[page.precision, page.offload], outputs=engine_outputs,
        concurrency_id=ENGINE_QUEUE, concurrency_limit=1, show_progress="minimal",
        show_progress_on=[page.engine_status], api_visibility="private",
    )  # fmt: skip
    demo.load(current, outputs=engine_outputs[:3], **quiet())


_PROGRESS = gr.Progress()  # a marker default: gradio gives each call its own tracker


def _wire_generation(studio: Studio, page: Page) -> None:
    """Generate (one run at a time for all sessions), Cancel (this session's only), the A/B
    run, and reusing a seed."""

    def arm(data: dict[Any, Any], request: gr.Request) -> list[dict[str, Any]]:
        """The run's validator: gradio calls it in the click's own request, before the run
        joins the queue. So the session's Cancel token is armed before the run waits, and
        runs queue in the order their clicks reached the server. (A separate event chained
        by ``.then`` is sent by the page only once the first is answered: a tab that stalls
        in between, as a background tab may, queued behind later clicks.) Every input is
        valid: the run itself reports what is wrong with the draft."""
        studio.sessions.arm(request.session_hash)
        return [gr.validate(True, "")] * len(data)

    def cancel(request: gr.Request) -> None:
        if not studio.sessions.cancel(request.session_hash):
            gr.Info("Nothing to cancel.")

    def run(
        data: dict[Any, Any], request: gr.Request, progress: gr.Progress = _PROGRESS
    ) -> Iterator[dict[Any, Any]]:
        yield {page.status: "Starting the run…", page.live_preview: None}
        items = runs.generate(
            studio.engine, studio.sessions, request.session_hash, page.draft_of(data),
            files=studio.files, time_limit_s=studio.options.time_limit_s,
        )  # fmt: skip
        yield from _stream_to_page(studio, page, items, data[page.history], progress)

    @warns(keep=dict)  # {}: no output changes
    def run_ab(
        data: dict[Any, Any], request: gr.Request, progress: gr.Progress = _PROGRESS
    ) -> Iterator[dict[Any, Any]]:
        entry = data[page.selected]
        if entry is None:
            raise SigmaInputError("A/B: choose a result in the gallery first")
        twin = runs.ab_composition(entry, studio.files)
        yield {page.status: "A/B: the same seed with the mask flipped…"}
        items = runs.stream(
            studio.engine, studio.sessions, request.session_hash, twin,
            files=studio.files, time_limit_s=studio.options.time_limit_s,
        )  # fmt: skip
        pair = lambda other: runs.ab_pair(entry, other, studio.files)  # noqa: E731
        yield from _stream_to_page(studio, page, items, data[page.history], progress, pair)

    for button, fn, inputs in (
        (page.generate_button, run, {*page.draft_inputs, page.history}),
        (page.ab_button, run_ab, {page.selected, page.history}),
    ):
        button.click(
            fn, inputs=inputs, outputs=page.result_outputs, validator=arm,
            concurrency_id=ENGINE_QUEUE, concurrency_limit=1, show_progress="minimal",
            show_progress_on=[page.status], api_visibility="private", **RAW,
        )  # fmt: skip
    # Off the queue: a Cancel never waits behind anything, least of all the run it stops.
    # The "Cancelling" text is the browser's own (CANCEL_JS): a reply from the server could
    # arrive after the run's last word and hide it.
    page.cancel_button.click(cancel, js=CANCEL_JS, queue=False, **quiet())

    def reuse(entry: dict[str, Any] | None, stored: Any) -> list[Any]:
        latest = entry or next(iter(runs.valid_history(stored)), None)
        if latest is None:
            gr.Warning("No result yet: generate once, then its seed can be reused.")
            return [gr.skip(), gr.skip()]
        return ["fixed", str(latest["seed"])]

    page.reuse_seed.click(
        reuse, inputs=[page.selected, page.history],
        outputs=[page.settings.seed_mode, page.settings["seed"]], **quiet(),
    )  # fmt: skip


def _stream_to_page(
    studio: Studio, page: Page, items: Iterator[runs.RunItem], old_history: Any,
    progress: gr.Progress, pair: Callable[[dict[str, Any]], Any] | None = None,
) -> Iterator[dict[Any, Any]]:  # fmt: skip
    """A run's progress as page updates; at the end the results, or the error (the form is
    never among the outputs, so the composition stays as it is)."""
    for item in items:
        if isinstance(item, runs.Progress):
            if item.phase == "denoise":
                progress((item.step, item.steps), desc=f"image {item.image}/{item.images}")
            update: dict[Any, Any] = {page.status: views.progress(item)}
            if item.preview is not None:
                update[page.live_preview] = item.preview
            yield update
            continue
        memory = studio.engine.memory_in_use()
        out: dict[Any, Any] = {page.banner: views.banner(studio.engine.info, memory)}
        if item.error:
            (gr.Info if item.cancelled else gr.Warning)(html.escape(views.redact(item.error)))
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
                out[page.slider] = gr.update(value=pair(item.entries[0]), label=runs.AB_LABEL)
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
        outputs=[page.selected, page.result_info, page.download, page.compare_with], **quiet(),
    )  # fmt: skip

    @warns(keep=gr.skip)
    def compare(entry: dict[str, Any] | None, slot: str | None) -> Any:
        if entry is None or not slot:
            return gr.skip()
        pair = runs.compare_with_reference(entry, int(slot), studio.files)
        return gr.update(value=pair, label=runs.compare_label(int(slot)))

    page.compare_with.input(
        compare, inputs=[page.selected, page.compare_with], outputs=[page.slider], **quiet()
    )

    def restore(data: dict[Any, Any], _: dict[str, Any]) -> Draft:
        entry = data[page.selected]
        if entry is None:
            raise SigmaInputError("history: choose a result in the gallery first")
        comp = runs.entry_composition(entry, studio.files)
        return to_draft(comp, studio.files, max_slots=studio.options.max_references)

    _wire_load(studio, page, page.restore_button.click, restore, {page.selected})

    def load_page(stored: Any) -> list[Any]:
        return runs.gallery_items(stored, studio.files)

    demo.load(load_page, inputs=[page.history], outputs=[page.gallery], **quiet())


def _wire_load(
    studio: Studio, page: Page, event: Callable[..., Any], opened: Callable[..., Draft],
    inputs: set[Any], extra_outputs: Sequence[Any] = (),
) -> None:  # fmt: skip
    """A load that replaces the whole composition (a preset, an example, a PNG, a result's
    composition): the form and its view in one response, and the composition it replaced
    kept for the undo button. ``opened`` gets the event's values (a dict, by control) and the
    event's own data (a dict: a gallery's selected index ...)."""
    load_outputs = [*page.form_outputs, *page.view_outputs, *page.undo_outputs]

    @warns(keep=lambda: [gr.skip()] * (len(load_outputs) + len(extra_outputs)))
    def load(data: dict[Any, Any], event: gr.EventData) -> list[Any]:
        draft = opened(data, getattr(event, "_data", None) or {})
        undo = page.undo_of(page.draft_of(data), "the load")
        extra = [None] * len(extra_outputs)  # an upload button emptied again, for the next file
        return page.form_of(draft) + render.view_of(studio, page, draft) + undo + extra

    event(load, inputs={*page.draft_inputs, *inputs}, outputs=[*load_outputs, *extra_outputs],
          **RAW, **quiet())  # fmt: skip


def _wire_presets(
    studio: Studio, page: Page, demo: gr.Blocks, entries: list[presets.PresetEntry]
) -> None:
    """The preset dropdown, the examples, opening an upload, saving the composition, the
    undo (of a load, or a slot's removal or clear), and the draft kept in the browser."""
    by_name = {e.path.name: e.path for e in entries}
    max_slots = studio.options.max_references

    def open_path(path: Any) -> Draft:
        return presets.open_composition(path, studio.files, max_slots=max_slots)

    _wire_load(
        studio, page, page.preset_dropdown.input,
        lambda data, _: open_path(by_name.get(data[page.preset_dropdown] or "")),
        {page.preset_dropdown},
    )  # fmt: skip
    shown = with_cover(entries)

    def open_example(data: dict[Any, Any], event: dict[str, Any]) -> Draft:
        index = event.get("index")
        chosen = type(index) is int and 0 <= index < len(shown)
        return open_path(shown[index].path if chosen else None)

    _wire_load(studio, page, page.examples.select, open_example, set())
    _wire_load(
        studio, page, page.preset_upload.upload,
        lambda data, _: open_path(reference_value(data[page.preset_upload])),
        {page.preset_upload},
        extra_outputs=[page.preset_upload],
    )  # fmt: skip

    def undo(data: dict[Any, Any]) -> list[Any]:
        roots = [studio.files, Path(get_upload_folder())]
        draft, _ = autosave.restored(data[page.before_change], roots, max_slots)
        hide = [None, gr.update(visible=False)]
        return page.form_of(draft) + render.view_of(studio, page, draft) + hide

    page.undo_button.click(
        undo, inputs={page.before_change},
        outputs=[*page.form_outputs, *page.view_outputs, *page.undo_outputs], **quiet(),
    )  # fmt: skip

    def keep_draft(data: dict[Any, Any]) -> dict[str, Any]:
        return autosave.stored(page.draft_of(data))

    triggers = [c.change for c in (page.prompt, page.name, page.slot_count)]
    triggers += [c.change for sc in page.slots for c in sc.values]
    triggers += [c.change for c in page.settings.values]
    gr.on(
        triggers, keep_draft, inputs=page.draft_inputs, outputs=[page.saved_draft], **RAW,
        **quiet(trigger_mode="always_last", show_progress="hidden"),
    )  # fmt: skip

    restore_outputs = page.form_outputs + page.view_outputs

    def reopen(stored: Any) -> list[Any]:
        """The page opens on the draft this browser kept. With none kept, the page already
        shows the empty draft and is left alone: an answer that comes late (a slow link, a
        busy server) never replaces what the person did meanwhile."""
        if stored is None:
            return [gr.skip()] * len(restore_outputs)
        roots = [studio.files, Path(get_upload_folder())]
        draft, notes = autosave.restored(stored, roots, max_slots)
        for told in notes:
            warn(told)
        return page.form_of(draft) + render.view_of(studio, page, draft)

    demo.load(reopen, inputs=[page.saved_draft], outputs=restore_outputs, **quiet())

    @warns(keep=gr.skip)
    def save(data: dict[Any, Any]) -> Any:
        return gr.update(value=str(presets.save_draft(page.draft_of(data), studio.files)),
                         visible=True)  # fmt: skip

    page.save_button.click(
        save, inputs=page.draft_inputs, outputs=[page.preset_file], **RAW, **quiet()
    )


def _wire_api(studio: Studio) -> None:
    """/generate, /inspect and /validate_preset: preset JSON in, for gradio_client and curl."""
    with gr.Row(visible=False):
        preset = gr.Textbox(label="preset JSON")
        image = gr.File(label="image")
        meta = gr.JSON(label="metadata")
        report = gr.JSON(label="report")
        buttons = [gr.Button() for _ in range(3)]

    def generate(preset_json: str, request: gr.Request) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Generate a preset given as JSON (images embedded as data URIs, or named from the
        shipped assets). Streams {"phase", "step", "steps", "elapsed_s"} as the metadata while it
        runs;
        returns the PNG, its composition embedded, and its metadata. A caller that cancels
        (gradio_client's job.cancel()) stops the run within a step."""
        studio.sessions.arm(request.session_hash)
        items = api.api_generate(
            studio.engine, studio.sessions, request.session_hash, preset_json,
            files=studio.files, time_limit_s=studio.options.time_limit_s,
        )  # fmt: skip
        try:
            with closing(items):
                for item in items:
                    if isinstance(item, runs.Progress):
                        step = {"phase": item.phase, "step": item.step, "steps": item.steps}
                        yield gr.skip(), {**step, "elapsed_s": round(item.elapsed_s, 3)}
                    else:
                        yield item
        except SigmaError as e:
            raise gr.Error(views.redact(str(e))) from None

    def inspect(preset_json: str) -> dict[str, Any]:
        """The interleaved sequence a preset makes: segments, groups and token counts."""
        try:
            return api.api_inspect(studio.engine, preset_json)
        except SigmaError as e:
            raise gr.Error(views.redact(str(e))) from None

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
