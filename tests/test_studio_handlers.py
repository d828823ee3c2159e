"""The studio's handlers, without a browser: plain data in, plain data out.

Runs use the tiny random checkpoint of conftest.py, 64x64 outputs and 3 timesteps, so each
generation takes well under a second after the first.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

import sigma_core
from sigma_core import (
    GenerationCancelled,
    PresetError,
    SigmaInputError,
    SigmaOutOfMemoryError,
)
from studio import api, compose, modes, presets, runs, slots, views
from studio import engine as studio_engine
from studio.engine import Engine, RunToken, Sessions, refusals
from studio.forms import (
    Draft,
    SettingsForm,
    SlotForm,
    parse_crop,
    parse_seed,
    settings_form,
    to_composition,
    to_draft,
    to_settings,
)
from studio.options import PRESETS_DIR, StudioOptions

FAST = SettingsForm(size="64x64", steps=3)


def tiny_engine(pipe, checkpoint) -> Engine:
    """An engine on the tiny checkpoint that knows how to load it again (for a switch)."""
    options = StudioOptions(model=str(checkpoint), device="cpu")
    return Engine(pipe, weights="tiny test checkpoint", options=options)


@pytest.fixture(scope="module")
def engine(pipe, tiny_checkpoint) -> Engine:
    return tiny_engine(pipe, tiny_checkpoint)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    """Small reference images, and files that are not usable images."""
    folder = tmp_path_factory.mktemp("images")
    out = {}
    for name, color, size in (("red", (200, 30, 30), (64, 48)), ("blue", (30, 30, 200), (48, 64))):
        Image.new("RGB", size, color).save(folder / f"{name}.png")
        out[name] = str(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    out["text"] = str(folder / "notes.txt")
    whole = (folder / "red.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    out["truncated"] = str(folder / "cut.png")
    with open(folder / "huge.png", "wb") as f:  # sparse: over the 50 MB limit, nothing written
        f.truncate(51 * 2**20)
    out["huge"] = str(folder / "huge.png")
    return out


def two_slots(images: dict[str, str], prompt: str = "A photo of [1] holding [2]") -> Draft:
    return Draft(
        prompt=prompt,
        slots=(
            SlotForm(images["red"], ("<id>",), "woman"),
            SlotForm(images["blue"], ("<subject>",), "tabby cat"),
        ),
        settings=FAST,
    )


def finish(items) -> tuple[list[runs.Progress], runs.Outcome]:
    items = list(items)
    assert isinstance(items[-1], runs.Outcome)
    return [i for i in items if isinstance(i, runs.Progress)], items[-1]


# ----------------------------------------------------------------------------- forms


def test_a_draft_becomes_the_composition_it_shows(images):
    comp = to_composition(two_slots(images))
    assert [r.slot for r in comp.references] == [1, 2]
    assert comp.references[0].attributes == ("<id>",)
    assert comp.references[1].entity == "tabby cat"
    assert comp.settings.size == (64, 64)
    assert comp.settings.num_timesteps == 3


def test_settings_round_trip_through_the_accordion():
    settings = sigma_core.Settings(
        size=(512, 768), seed=None, mask=False, cfg_interval=(0.2, 0.9), layout="training"
    )
    assert to_settings(settings_form(settings)) == settings


def test_the_layout_dropdown_becomes_the_settings_layout_and_a_bad_one_is_refused():
    assert SettingsForm().layout == sigma_core.Settings().layout == "auto"
    for layout in sigma_core.LAYOUT_CHOICES:
        assert to_settings(replace(FAST, layout=layout)).layout == layout
    with pytest.raises(
        PresetError,
        match=r"^settings\.layout: 'trainign' is not one of auto, inference, training, "
        r"training-no-vit; did you mean 'training'\?$",
    ):
        to_settings(replace(FAST, layout="trainign"))


def test_seeds_are_text_so_large_ones_stay_exact():
    assert parse_seed(str(2**63 - 1)) == 2**63 - 1
    with pytest.raises(PresetError, match="seed"):
        to_settings(replace(FAST, seed=str(2**63)))  # the core's bound
    with pytest.raises(SigmaInputError, match=r"settings\.seed: '12a' is not a whole number"):
        parse_seed("12a")


def test_crop_text_is_four_numbers_or_nothing():
    assert parse_crop(" 1, 2; 30 40 ", 1) == (1, 2, 30, 40)
    assert parse_crop("", 1) is None
    with pytest.raises(SigmaInputError, match=r"references\[slot 2\].crop"):
        parse_crop("1, 2, 3", 2)


def test_a_composition_with_gapped_slots_is_renumbered_into_the_form(tmp_path, images):
    comp = sigma_core.Composition(
        prompt="[2] beside [5]",
        references=(
            sigma_core.Reference(5, Path(images["blue"]), ("<subject>",)),
            sigma_core.Reference(2, Path(images["red"]), ("<id>",)),
        ),
    )
    draft = to_draft(comp, tmp_path, max_slots=8)
    assert draft.prompt == "[1] beside [2]"
    assert [s.attributes for s in draft.slots] == [("<id>",), ("<subject>",)]
    assert all(Path(s.image).parent == tmp_path for s in draft.slots)
    with pytest.raises(SigmaInputError, match="--max-references 2"):
        to_draft(comp, tmp_path, max_slots=1)


# ----------------------------------------------------------------------------- checking


def test_a_valid_draft_plans_into_chips(engine, images):
    result = compose.check(engine, two_slots(images))
    assert result.ok, result.problems
    kinds = [c.kind for c in result.chips]
    assert kinds == ["text", "image", "text", "image", "output"]
    first = result.chips[0]
    assert [(p.text, p.group) for p in first.parts] == [
        ("A photo of", None),
        ("<id>", 0),
        ("woman", None),
    ]
    assert result.chips[1].slot == 1 and result.chips[1].group == 0
    assert result.chips[-1].size == (64, 64)
    assert sum(c.tokens for c in result.chips) == result.length
    assert dict(result.token_counts)["special"] == 2
    html = views.sequence(result)
    assert html.count("sigma-chip") == 5 and "64×64" in html


def test_the_sequence_view_shows_the_layout_and_its_phantom_vit_blocks(engine, images):
    assert "SIGMA mask on; layout inference (auto)" in views.sequence(
        compose.check(engine, two_slots(images))
    )  # "auto" is the inferencer's layout for weights without a recorded one
    no_vit = replace(two_slots(images), settings=replace(FAST, layout="training-no-vit"))
    result = compose.check(engine, no_vit)
    assert [c.kind for c in result.chips] == ["text", "image", "text", "image", "output"]
    assert views.sequence(result).endswith("layout training-no-vit</small></div>")
    training = replace(two_slots(images), settings=replace(FAST, layout="training"))
    result = compose.check(engine, training)
    assert result.ok, result.problems
    kinds = [c.kind for c in result.chips]
    assert kinds == ["text", "image", "phantom", "text", "image", "phantom", "output"]
    phantom = result.chips[2]
    assert (phantom.slot, phantom.group, phantom.tokens) == (1, 0, 3)
    assert phantom.stands_for == (phantom.size[0] // 14) * (phantom.size[1] // 14) > 1
    assert sum(c.tokens for c in result.chips) == result.length
    html = views.sequence(result)
    assert html.count("sigma-chip image phantom") == 2
    assert f"ViT [1] {phantom.size[0]}×{phantom.size[1]}, {phantom.stands_for} as one" in html
    assert "layout training</small>" in html


def test_a_bad_layout_shows_next_to_the_settings(engine, images):
    draft = replace(two_slots(images), settings=replace(FAST, layout="trainign"))
    (problem,) = compose.check(engine, draft).problems
    assert problem.where == "settings" and "did you mean 'training'" in problem.message


@pytest.mark.parametrize(
    ("prompt", "where", "text"),
    [
        ("A photo of [1] and [3]", "prompt", "slot 3, which does not exist"),
        ("", "prompt", "is empty"),
        ("<idd> woman <image_1>", "prompt", "did you mean '<id>'"),
        ("[1] and <image_2>", "prompt", "use one syntax"),
        ("[1] <style> and [2]", "prompt", "write [k:style]"),
    ],
)
def test_prompt_problems_show_next_to_the_prompt(engine, images, prompt, where, text):
    result = compose.check(engine, two_slots(images, prompt))
    problems, _ = result.at(where)
    assert any(text in p for p in problems), result.problems
    assert not result.chips


def test_a_template_naming_an_empty_slot_is_refused(engine, images):
    draft = replace(two_slots(images), slots=(SlotForm(images["red"], ("<id>",)), SlotForm()))
    problems, _ = compose.check(engine, draft).at("prompt")
    assert any("slot 2, which has no image" in p for p in problems)


@pytest.mark.parametrize(
    ("image", "crop", "text"),
    [
        ("text", "", "is not an image"),
        ("truncated", "", "truncated or corrupt"),
        ("huge", "", "over the limit of 50.0 MB"),
        ("red", "0, 0, 500, 10", "is outside the image"),
        ("red", "a, b", "is not four whole numbers"),
    ],
)
def test_bad_images_show_next_to_their_slot(engine, images, image, crop, text):
    draft = two_slots(images)
    bad = replace(draft.slots[1], image=images[image], crop=crop)
    result = compose.check(engine, replace(draft, slots=(draft.slots[0], bad)))
    problems, _ = result.at("slot 2")
    assert any(text in p for p in problems), result.problems
    assert result.at("slot 1") == ([], [])


def test_every_problem_is_reported_at_once(engine, images):
    draft = two_slots(images)
    draft = replace(
        draft,
        slots=(
            replace(draft.slots[0], entity="woman <image_2>"),
            replace(draft.slots[1], crop="x"),
        ),
        settings=replace(FAST, seed="-1"),
    )
    result = compose.check(engine, draft)
    assert {p.where for p in result.problems} == {"slot 1", "slot 2", "settings"}


def test_warnings_name_their_slot(engine, images):
    result = compose.check(engine, two_slots(images, "A photo of [1]"))
    assert result.ok
    _, warnings = result.at("slot 2")
    assert any("never uses it" in w for w in warnings)


def test_the_mask_picture_is_drawn_on_demand(engine, images, tmp_path):
    path = compose.mask_picture(compose.check(engine, two_slots(images)), tmp_path)
    assert Image.open(path).format == "PNG"
    with pytest.raises(SigmaInputError, match="fix the problems"):
        compose.mask_picture(compose.check(engine, two_slots(images, "")), tmp_path)


def test_auto_compose_places_every_slot_with_an_image(engine, images):
    assert set(compose.ROLES) == set(sigma_core.ATTRIBUTES)
    draft = Draft(
        slots=(
            SlotForm(images["red"], ("<id>",), "woman"),
            SlotForm(images["blue"], ("<style>",), "the painting"),
            SlotForm(),
            SlotForm(images["red"], (), ""),
            SlotForm(images["blue"], ("<background>",), "a beach"),
        ),
        settings=FAST,
    )
    prompt = compose.auto_compose(draft)
    assert prompt == ("A photo of [1] and [4:subject], in front of [5], in the style of [2]")
    assert compose.check(engine, replace(draft, prompt=prompt)).ok
    with pytest.raises(SigmaInputError, match="at least one slot with an image"):
        compose.auto_compose(Draft(slots=(SlotForm(),)))


# ----------------------------------------------------------------------------- slots


def test_slots_are_added_up_to_the_maximum():
    draft = slots.add_slot(Draft(), 2)
    assert len(draft.slots) == 2
    with pytest.raises(SigmaInputError, match="at most 2 slots"):
        slots.add_slot(draft, 2)


def test_moving_a_slot_keeps_the_prompts_meaning(engine, images):
    draft = two_slots(images, "A photo of [1] holding [2:subject]")
    moved = slots.move_slot(draft, 2, -1)
    assert moved.prompt == "A photo of [2] holding [1:subject]"
    assert moved.slots == (draft.slots[1], draft.slots[0])
    before, after = compose.check(engine, draft), compose.check(engine, moved)
    assert before.plan.raw_prompt.replace("_1", "_X").replace("_2", "_1").replace("_X", "_2") == (
        after.plan.raw_prompt
    )
    assert slots.move_slot(draft, 1, -1) == draft  # the top slot stays
    assert slots.move_slot(draft, 2, +1) == draft


def test_removing_a_slot_renumbers_the_later_ones(images):
    draft = replace(two_slots(images, "Just [2]"), slots=(SlotForm(), *two_slots(images).slots))
    draft = replace(draft, prompt="Just [3] and [2]")
    out = slots.remove_slot(draft, 1)
    assert out.prompt == "Just [2] and [1]"
    assert len(out.slots) == 2


def test_a_slot_the_prompt_places_or_the_last_slot_is_not_removed(images):
    with pytest.raises(SigmaInputError, match=r"take \[2\]"):
        slots.remove_slot(two_slots(images), 2)
    with pytest.raises(SigmaInputError, match="at least one slot"):
        slots.remove_slot(Draft(), 1)


def test_dragging_a_slot_to_a_new_place_renumbers_the_prompt(images):
    third = SlotForm(images["red"], ("<style>",), "poster")
    draft = replace(two_slots(images, "[1] holding [2] in the style of [3]"))
    draft = replace(draft, slots=(*draft.slots, third))
    moved = slots.reorder_slots(draft, [3, 1, 2])  # the strip's order after dropping 3 on 1
    assert moved.slots == (third, draft.slots[0], draft.slots[1])
    assert moved.prompt == "[2] holding [3] in the style of [1]"
    assert slots.reorder_slots(moved, [2, 3, 1]) == draft
    assert slots.move_slot(draft, 3, -1) == slots.reorder_slots(draft, [1, 3, 2])


@pytest.mark.parametrize(
    "order", [[1, 2], [1, 1, 2], [1, 2, 4], ["1", 2, 3], "123", None, [1.0, 2, 3], [True, 2, 3]]
)
def test_a_new_order_from_the_browser_is_checked(images, order):
    draft = replace(two_slots(images), slots=(*two_slots(images).slots, SlotForm()))
    with pytest.raises(SigmaInputError, match="name slots 1 to 3 once each"):
        slots.reorder_slots(draft, order)


def test_the_slot_strip_shows_each_slot_in_order(images):
    draft = replace(two_slots(images), slots=(*two_slots(images).slots, SlotForm()))
    items = views.slot_strip(draft)
    assert [i["slot"] for i in items] == [1, 2, 3]
    assert items[0]["label"] == "<id> woman" and items[2]["label"] == "—"
    assert items[0]["thumb"].startswith("data:image/jpeg;base64,") and items[2]["thumb"] == ""


def test_insert_places_the_reference_at_the_cursor():
    assert slots.insert_reference("A photo of", 2) == ("A photo of [2]", 14)
    assert slots.insert_reference("A photo", 1, 1) == ("A [1] photo", 5)
    assert slots.insert_reference("<id> <image_1> and", 2)[0] == "<id> <image_1> and <image_2>"


def test_the_thumbnail_is_what_the_model_sees(images):
    thumb = slots.thumbnail(SlotForm(images["red"], crop="0, 0, 32, 48"), 1)
    assert thumb.problem is None
    assert "cropped to 32×48" in thumb.caption
    assert "the model sees 512×768" in thumb.caption  # BAGEL's resize: short side 512 ...
    assert "48×32 latent tokens (+2 markers = 1538 tokens)" in thumb.caption  # 16 px a token
    assert max(thumb.image.size) <= 256
    bad = slots.thumbnail(SlotForm(images["text"]), 3)
    assert bad.image is None and "references[slot 3].image" in bad.problem


# ----------------------------------------------------------------------------- runs


def test_a_run_reports_each_step_and_saves_a_png_with_its_composition(engine, images, tmp_path):
    sessions = Sessions()
    sessions.arm("a")
    steps, outcome = finish(
        runs.generate(engine, sessions, "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert outcome.error is None
    assert [(p.step, p.steps) for p in steps] == [(1, 2), (2, 2)]
    assert all(p.preview is not None and max(p.preview.size) == 256 for p in steps)
    (entry,) = outcome.entries
    assert entry["seed"] == 42 and entry["size"] == [64, 64] and entry["preview"] is True
    assert set(entry["timings"]) >= {"encode_s", "denoise_s", "total_s"}
    path = runs.result_file(entry, tmp_path)
    stored = sigma_core.read_png_composition(path)
    assert stored.prompt == "A photo of [1] holding [2]"
    assert stored.settings.seed == 42
    assert len(json.dumps(entry)) < 20_000  # a thumbnail, not the image
    assert "data:" not in entry["preset"]  # ... and the composition without its images
    info = views.result_info(entry)
    assert "Seed 42" in info and "W_tau on · layout inference" in info  # what "auto" ran as
    older = dict(entry, settings={k: v for k, v in entry["settings"].items() if k != "layout"})
    assert "layout" not in views.result_info(older)  # a result from before layouts


def test_images_per_run_use_consecutive_seeds(engine, images, tmp_path):
    draft = replace(two_slots(images), settings=replace(FAST, seed="7", images_per_run=2))
    _, outcome = finish(
        runs.generate(engine, Sessions(), "a", draft, files=tmp_path, time_limit_s=60)
    )
    assert [e["seed"] for e in outcome.entries] == [8, 7]  # newest first
    random = replace(draft, settings=replace(draft.settings, seed_mode="random"))
    _, outcome = finish(
        runs.generate(engine, Sessions(), "a", random, files=tmp_path, time_limit_s=60)
    )
    second, first = (e["seed"] for e in outcome.entries)
    assert second == first + 1


def test_a_run_records_its_layout_and_its_png_restores_it(engine, images, tmp_path):
    draft = replace(two_slots(images), settings=replace(FAST, layout="training"))
    _, outcome = finish(
        runs.generate(engine, Sessions(), "a", draft, files=tmp_path, time_limit_s=60)
    )
    (entry,) = outcome.entries
    assert outcome.error is None and entry["settings"]["layout"] == "training"
    assert "layout training" in views.result_info(entry)
    png = runs.result_file(entry, tmp_path)
    assert presets.open_composition(png, tmp_path, max_slots=8).settings.layout == "training"


def test_a_bad_draft_never_starts_a_run(engine, images, tmp_path):
    items = list(
        runs.generate(
            engine, Sessions(), "a", two_slots(images, "[3]"), files=tmp_path, time_limit_s=60
        )
    )
    assert len(items) == 1 and "slot 3" in items[0].error
    assert not (tmp_path / runs.RESULTS).exists()


def test_cancel_stops_only_its_own_session_within_one_step(engine, images, tmp_path):
    sessions = Sessions()
    sessions.arm("a")
    sessions.arm("b")
    draft = replace(two_slots(images), settings=replace(FAST, steps=30))
    items = runs.generate(engine, sessions, "a", draft, files=tmp_path, time_limit_s=60)
    seen = []
    for item in items:
        seen.append(item)
        if isinstance(item, runs.Progress) and item.step == 1:
            sessions.cancel("b")  # another session's Cancel
        if isinstance(item, runs.Progress) and item.step == 3:
            assert sessions.cancel("a")
    outcome = seen[-1]
    steps = [i.step for i in seen if isinstance(i, runs.Progress)]
    assert outcome.cancelled and "cancelled after step" in outcome.error
    assert max(steps) <= 4
    assert "composition is unchanged" in outcome.error


def test_a_cancel_pressed_while_queued_stops_the_run(engine, images, tmp_path):
    sessions = Sessions()
    sessions.arm("a")
    sessions.cancel("a")
    steps, outcome = finish(
        runs.generate(engine, sessions, "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert outcome.cancelled and not steps and not outcome.entries
    assert not Sessions().cancel("never-armed")


def test_the_time_limit_stops_a_run(engine, images, tmp_path):
    _, outcome = finish(
        runs.generate(engine, Sessions(), "a", two_slots(images), files=tmp_path, time_limit_s=0)
    )
    assert "time limit of 0 s" in outcome.error


def test_an_abandoned_run_is_cancelled(engine, images, tmp_path):
    sessions = Sessions()
    draft = replace(two_slots(images), settings=replace(FAST, steps=40))
    items = runs.generate(engine, sessions, "a", draft, files=tmp_path, time_limit_s=60)
    next(item for item in items if isinstance(item, runs.Progress))
    items.close()  # the page went away
    assert sessions.token("a").is_set()


class FaultyEngine(Engine):
    """An engine whose runs fail, as out-of-memory or a bug would."""

    def __init__(self, pipe, error: Exception) -> None:
        super().__init__(pipe, weights="faulty", options=StudioOptions())
        self.error = error

    def generate(self, composition, *, cancel, on_step=None):
        raise self.error


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (SigmaOutOfMemoryError("denoising", "cuda:0"), "To fit: In Settings › Engine choose"),
        (RuntimeError("CUDA error: an illegal memory access"), "engine error (RuntimeError"),
        (GenerationCancelled("cancelled after step 2 of 9", step=2), "cancelled after step 2"),
    ],
)
def test_engine_failures_become_messages_and_the_studio_goes_on(
    pipe, images, tmp_path, error, text
):
    faulty = FaultyEngine(pipe, error)
    _, outcome = finish(
        runs.generate(faulty, Sessions(), "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert text in outcome.error and not outcome.entries
    if not isinstance(error, GenerationCancelled):  # a mode needing less than fp32, and how
        assert "precision int8 and offload none, then reload the engine" in outcome.error


def test_run_tokens_trip_on_cancel_or_deadline():
    event = threading.Event()
    assert not RunToken(event, float("inf")).is_set()
    assert RunToken(event, 0).is_set() and RunToken(event, 0).timed_out()
    event.set()
    assert RunToken(event, float("inf")).is_set()


# ----------------------------------------------------------------------------- history


@pytest.fixture(scope="module")
def made(engine, images, tmp_path_factory):
    """One finished result: (its history entry, the files folder)."""
    files = tmp_path_factory.mktemp("files")
    _, outcome = finish(
        runs.generate(engine, Sessions(), "a", two_slots(images), files=files, time_limit_s=60)
    )
    return outcome.entries[0], files


def test_history_keeps_new_results_first_and_drops_junk(made):
    entry, _ = made
    junk = [{"file": 3}, "x", None, {"thumb": "data:"}]
    history = runs.add_to_history([*junk, entry], [dict(entry, seed=1)])
    assert [e["seed"] for e in history] == [1, 42]
    assert len(runs.add_to_history([entry] * 100, [])) == runs.HISTORY_LIMIT
    assert runs.valid_history("not a list") == []


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", ".hidden.png", "a/b.png", ""])
def test_history_entries_cannot_name_files_outside_the_results(made, name):
    entry, files = made
    assert runs.result_file(dict(entry, file=name), files) is None


def test_the_gallery_falls_back_to_the_thumbnail(made):
    entry, files = made
    items = runs.gallery_items([entry, dict(entry, file="gone.png")], files)
    assert items[0][0].endswith(entry["file"])
    assert isinstance(items[1][0], Image.Image) and "seed 42" in items[1][1]


def test_a_result_restores_its_composition(made, tmp_path):
    entry, files = made
    comp = runs.entry_composition(entry, files)
    draft = to_draft(comp, tmp_path, max_slots=8)
    assert draft.prompt == "A photo of [1] holding [2]" and all(s.image for s in draft.slots)
    bare = runs.entry_composition(dict(entry, file="gone.png"), files)
    assert bare.prompt == comp.prompt and all(r.image is None for r in bare.references)


def test_compare_a_result_with_a_reference(made):
    entry, files = made
    reference, result = runs.compare_with_reference(entry, 2, files)
    assert reference.size == result.size == (64, 64)
    assert runs.placed_references(entry) == [1, 2]
    with pytest.raises(SigmaInputError, match="no reference 5"):
        runs.compare_with_reference(entry, 5, files)


def test_leakage_ab_runs_the_same_seed_with_the_mask_flipped(engine, made):
    entry, files = made
    (twin,) = runs.ab_compositions(entry, files)
    assert twin.settings.seed == 42 and twin.settings.mask is False
    _, outcome = finish(runs.stream(engine, Sessions(), "a", [twin], files=files, time_limit_s=60))
    other = outcome.entries[0]
    mask_on, mask_off = runs.ab_pair(entry, other, files)
    assert mask_on.endswith(entry["file"]) and mask_off.endswith(other["file"])
    assert runs.ab_pair(other, entry, files) == (mask_on, mask_off)


# ----------------------------------------------------------------------------- presets


def test_every_shipped_preset_opens_and_plans(engine, tmp_path):
    entries = presets.list_presets(PRESETS_DIR)
    assert len(entries) == len(list(PRESETS_DIR.glob("*.json"))) >= 4
    assert all(e.cover is not None and max(e.cover.size) <= 256 for e in entries)
    for entry in entries:
        draft = presets.open_composition(entry.path, tmp_path, max_slots=8)
        assert compose.check(engine, draft).ok, entry.path


def test_a_generated_png_opens_as_its_composition(made, tmp_path):
    entry, files = made
    draft = presets.open_composition(runs.result_file(entry, files), tmp_path, max_slots=8)
    assert draft.settings.seed == "42" and len(draft.slots) == 2
    assert draft.settings.layout == "inference"  # the layout "auto" ran as


def test_bad_uploads_are_refused_with_the_cores_message(images, tmp_path):
    with pytest.raises(PresetError, match=r"^red.png: this PNG holds no SIGMA Studio composition"):
        presets.open_composition(images["red"], tmp_path, max_slots=8)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "sigma-studio/preset", "version": 1, "prompt": 3}')
    with pytest.raises(PresetError, match="prompt: expected a string"):
        presets.open_composition(broken, tmp_path, max_slots=8)
    with pytest.raises(SigmaInputError, match="choose a preset"):
        presets.open_composition(None, tmp_path, max_slots=8)


def test_a_preset_with_a_layout_sets_the_layout_dropdown(tmp_path):
    comp = sigma_core.Composition(
        prompt="A red cube", settings=sigma_core.Settings(layout="training")
    )
    path = tmp_path / "training.json"
    path.write_text(sigma_core.dumps_preset(comp))
    draft = presets.open_composition(path, tmp_path, max_slots=8)
    assert draft.settings.layout == "training"


def test_a_saved_composition_is_self_contained(images, tmp_path):
    settings = replace(FAST, layout="training-no-vit")
    draft = replace(two_slots(images), name="Red & blue!", settings=settings)
    path = presets.save_draft(draft, tmp_path)
    assert path.name == "red-blue.json"
    data = json.loads(path.read_text())
    assert data["settings"]["layout"] == "training-no-vit"
    assert all(r["image"].startswith("data:image/png;base64,") for r in data["references"])
    loaded = sigma_core.loads_preset(path.read_text())
    reopened = to_draft(loaded, tmp_path / "again", max_slots=8)
    assert reopened.prompt == draft.prompt and reopened.settings == draft.settings
    assert Path(reopened.slots[0].image).read_bytes() == Path(images["red"]).read_bytes()


# ----------------------------------------------------------------------------- API


def preset_text(images: dict[str, str]) -> str:
    return sigma_core.dumps_preset(to_composition(two_slots(images)), embed_images=True)


def test_api_generate_returns_the_png_and_its_metadata(engine, images, tmp_path):
    path, meta = api.api_generate(
        engine, Sessions(), "api", preset_text(images), files=tmp_path, time_limit_s=60
    )
    assert meta["seed"] == 42 and meta["preview"] is True and meta["size"] == [64, 64]
    assert sigma_core.read_png_composition(path).prompt == meta["prompt"]


def test_api_reads_no_server_paths(engine, images, tmp_path):
    data = json.loads(preset_text(images))
    data["references"][0]["image"] = images["red"]  # an absolute path on the server
    with pytest.raises(PresetError, match="absolute path"):
        api.api_generate(
            engine, Sessions(), "api", json.dumps(data), files=tmp_path, time_limit_s=60
        )


def test_api_inspect_and_validate(engine, images):
    report = api.api_inspect(engine, preset_text(images))
    assert [s["kind"] for s in report["segments"]][-1] == "noise"
    good = api.api_validate_preset(engine, preset_text(images))
    assert good["valid"] and good["tokens"] == report["length"]
    assert good["layout"] == "inference"  # what "auto" resolves to with these weights
    bad = api.api_validate_preset(engine, preset_text(images).replace("[2]", "[3]"))
    assert not bad["valid"] and "slot 3" in bad["problems"][0]
    assert not api.api_validate_preset(engine, "{")["valid"]


def test_api_run_failures_raise(pipe, images, tmp_path):
    faulty = FaultyEngine(pipe, SigmaOutOfMemoryError("denoising", "cpu"))
    with pytest.raises(api.RunFailed, match="out of memory"):
        api.api_generate(
            faulty, Sessions(), "a", preset_text(images), files=tmp_path, time_limit_s=9
        )


# ----------------------------------------------------------------------------- the engine


def test_the_banner_makes_the_preview_engine_unmistakable(engine):
    assert engine.info.preview and engine.info.precision == "fp32" and engine.info.device == "cpu"
    html = views.banner(engine.info, engine.memory_in_use())
    assert "PREVIEW ENGINE" in html and "random weights" in html and "process memory" in html
    assert "fp32 on cpu · offload none · VAE fp32" in html


# ----------------------------------------------------------------------------- engine modes


@pytest.fixture
def fresh(pipe, tiny_checkpoint) -> Engine:
    """An engine of its own: a switch changes it for whoever holds it."""
    return tiny_engine(pipe, tiny_checkpoint)


def test_the_modes_this_machine_cannot_run_are_marked_with_the_engines_reason():
    refused = refusals("cpu")
    choices = dict((value, label) for label, value in modes.precision_choices(refused))
    assert list(choices) == list(sigma_core.PRECISIONS)
    assert choices["int8"] == "int8" and choices["nf4"] == "nf4"  # bitsandbytes runs on CPU
    assert choices["fp8"].startswith("fp8 (not here: fp8 runs on NVIDIA GPUs of compute")
    offloads = dict((v, label) for label, v in modes.offload_choices(refused, "int8"))
    assert offloads["none"] == "none"
    assert "int8 layers cannot move between devices" in offloads["model"]
    assert "sequential streams full-precision layers" in offloads["sequential"]
    assert [label for label, _ in modes.offload_choices(refused, "bf16")] == list(
        sigma_core.OFFLOAD_MODES
    )


def test_a_mode_whose_trial_load_fails_otherwise_is_refused_too(monkeypatch):
    real = sigma_core.SigmaPipeline.preview_engine

    def no_kernels(*, precision, **options):
        if precision == "nf4":
            raise RuntimeError("no kernel image is available for execution on the device")
        return real(precision=precision, **options)

    monkeypatch.setattr(sigma_core.SigmaPipeline, "preview_engine", no_kernels)
    refused = refusals.__wrapped__("cpu")  # uncached
    assert "no kernel image" in refused[("nf4", "none")]
    assert ("int8", "none") not in refused
    label = dict((v, label) for label, v in modes.precision_choices(refused))["nf4"]
    assert label.startswith("nf4 (not here: loading fails (RuntimeError")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # no GPU to try outside a run
    assert refusals.__wrapped__("cuda") == {}


def test_switching_precision_and_offload_reloads_the_engine_for_everyone(fresh, images, tmp_path):
    message = modes.switch_engine(fresh, "nf4", "model")
    assert "now runs nf4 with offload model (was fp32, offload none)" in message
    assert "for everyone" in message
    assert (fresh.info.precision, fresh.info.offload) == ("nf4", "model")
    assert fresh.pipe.precision.name == "nf4" and fresh.options.precision == "nf4"
    assert "nf4 on cpu · offload model · VAE fp32" in views.banner(fresh.info, "")
    _, outcome = finish(
        runs.generate(fresh, Sessions(), "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert outcome.error is None and outcome.entries
    assert "already runs nf4" in modes.switch_engine(fresh, "nf4", "model")


@pytest.mark.parametrize(
    ("precision", "offload", "text"),
    [
        ("fp8", "none", "precision: fp8 runs on NVIDIA GPUs"),
        ("int8", "sequential", "offload: sequential streams full-precision layers"),
        ("fp64", "none", "precision: 'fp64' is not one of"),
    ],
)
def test_a_mode_that_cannot_load_keeps_the_old_engine(fresh, precision, offload, text):
    pipe, info = fresh.pipe, fresh.info
    with pytest.raises(SigmaInputError, match=text):
        modes.switch_engine(fresh, precision, offload)
    assert fresh.pipe is pipe and fresh.info == info and fresh.options.precision is None


def test_a_locked_studio_refuses_to_switch_and_says_how(fresh):
    fresh.options = replace(fresh.options, share=True)
    with pytest.raises(SigmaInputError, match=r"restart it with --precision int8 --offload none"):
        modes.switch_engine(fresh, "int8", "none")
    assert fresh.info.precision == "fp32" and "--share" in fresh.lock


def test_when_both_engines_do_not_fit_the_old_one_is_released_first(fresh, monkeypatch):
    real, calls = studio_engine.load_pipeline, []

    def tight(options):  # the new engine fits only once the old one is gone
        calls.append((options.precision, fresh.pipe is None))
        if fresh.pipe is not None:
            raise SigmaOutOfMemoryError("loading the weights", "cuda:0")
        return real(options)

    monkeypatch.setattr(studio_engine, "load_pipeline", tight)
    modes.switch_engine(fresh, "bf16", "none")
    assert calls == [("bf16", False), ("bf16", True)]
    assert fresh.info.precision == "bf16" and fresh.plan is not None


def test_when_the_new_engine_fails_alone_too_the_old_one_is_loaded_again(fresh, monkeypatch):
    real, calls = studio_engine.load_pipeline, []

    def never(options):
        calls.append(options.precision)
        if options.precision == "bf16":
            raise SigmaOutOfMemoryError("loading the weights", "cuda:0")
        return real(options)

    monkeypatch.setattr(studio_engine, "load_pipeline", never)
    with pytest.raises(SigmaOutOfMemoryError):
        modes.switch_engine(fresh, "bf16", "none")
    assert calls == ["bf16", "bf16", None]  # beside, alone, then the old options again
    assert fresh.info.precision == "fp32" and fresh.pipe is not None
    assert fresh.plan(to_composition(Draft(prompt="a cat")), {}).length > 0


def test_a_switch_waits_for_the_run_in_progress(fresh, images):
    started, gate = threading.Event(), threading.Event()

    def hold(step, steps, preview):
        started.set()
        gate.wait(30)

    run = threading.Thread(
        target=fresh.generate,
        args=(to_composition(two_slots(images)),),
        kwargs={"cancel": threading.Event(), "on_step": hold},
    )
    run.start()
    assert started.wait(30)
    switch = threading.Thread(target=modes.switch_engine, args=(fresh, "bf16", "none"))
    switch.start()
    switch.join(0.5)
    assert switch.is_alive() and fresh.info.precision == "fp32"  # queued behind the run
    gate.set()
    run.join(30)
    switch.join(30)
    assert fresh.info.precision == "bf16"


def test_user_text_is_escaped_on_the_page(engine, images):
    draft = replace(two_slots(images), prompt="<b>bold</b> [1] and [2]")
    html = views.sequence(compose.check(engine, draft))
    assert "<b>" not in html and "&lt;b&gt;" in html
    assert "<script>" not in views.messages(["<script>x</script>"], [])


def test_sessions_are_isolated():
    sessions = Sessions()
    a, b = sessions.arm("a"), sessions.arm("b")
    assert sessions.cancel("a") and a.is_set() and not b.is_set()
    assert not sessions.arm("a").is_set()  # Generate arms a fresh token
    sessions.forget("b")
    assert b.is_set() and not sessions.cancel("b")


# ----------------------------------------------------------------------------- memory

GIB = 2**30


def fake_estimates(**peaks_gib: float):
    """An estimator giving each "precision_offload" its peak (GiB); others 100 GiB."""

    def estimate(precision: str, offload: str) -> sigma_core.MemoryEstimate:
        peak = int(peaks_gib.get(f"{precision}_{offload}", 100) * GIB)
        return sigma_core.MemoryEstimate(
            weights=peak // 2, vae_weights=0, kv_cache=peak // 4, activations=peak // 4,
            vae_activations=0, peak=peak, per_device={"cuda:0": peak}, offload=offload,
        )  # fmt: skip

    return estimate


FP8_REFUSED = {("fp8", "none"): "precision: fp8 needs compute capability 8.9 or later"}


def test_a_run_that_fits_shows_its_predicted_peak():
    fit = modes.check_fit(
        fake_estimates(bf16_none=15.2), ("bf16", "none"), 22 * GIB, "cuda:0", {}, None
    )
    assert fit.fits and fit.proposal is None
    assert fit.text.startswith("Predicted peak about 15.2 GiB: weights 7.6")
    assert fit.text.endswith("22.0 GiB available on cuda:0.")
    assert "GiB" in views.memory(fit) and "sigma-problems" not in views.memory(fit)


@pytest.mark.parametrize(
    ("peaks", "refused", "proposal"),
    [
        ({"fp8_none": 9, "int8_none": 8}, {}, ("fp8", "none")),  # best quality first
        ({"fp8_none": 9, "int8_none": 8}, FP8_REFUSED, ("int8", "none")),  # not on this GPU
        ({"int8_none": 12, "nf4_none": 9}, {}, ("nf4", "none")),
        ({"nf4_none": 11, "nf4_model": 6}, {}, ("nf4", "model")),
        ({"nf4_model": 11, "bf16_sequential": 4}, {}, ("bf16", "sequential")),
    ],
)
def test_a_run_that_does_not_fit_proposes_the_first_mode_that_would(peaks, refused, proposal):
    fit = modes.check_fit(
        fake_estimates(bf16_none=15, **peaks), ("bf16", "none"), 10 * GIB, "cuda:0", refused,
        None,
    )  # fmt: skip
    assert not fit.fits and fit.proposal == proposal
    assert "This run does not fit, so it will not start." in fit.text
    assert f"choose precision {proposal[0]} and offload {proposal[1]}" in fit.text
    assert "sigma-problems" in views.memory(fit)


def test_a_locked_studio_proposes_the_flags_instead():
    fit = modes.check_fit(
        fake_estimates(bf16_none=15, int8_none=8), ("bf16", "none"), 10 * GIB, "cuda:0", {},
        "this studio is shared through a public link (--share)",
    )  # fmt: skip
    assert "Restart the studio with --precision int8 --offload none (about 8.0 GiB)" in fit.text


def test_off_cuda_offloading_is_never_proposed():
    fit = modes.check_fit(
        fake_estimates(fp32_none=15, nf4_model=1, bf16_sequential=1), ("fp32", "none"),
        10 * GIB, "cpu", FP8_REFUSED, None,
    )  # fmt: skip
    assert not fit.fits and fit.proposal is None
    assert "No precision or offload fits it here: use a smaller size or fewer references" in (
        fit.text
    )


def test_without_a_known_budget_the_run_goes_ahead():  # ZeroGPU: a GPU per run only
    fit = modes.check_fit(fake_estimates(bf16_none=15), ("bf16", "none"), None, "cuda:0", {}, None)
    assert fit.fits and fit.text.startswith("Predicted peak about 15.0 GiB")


def test_the_engine_predicts_its_runs_and_knows_the_memory_it_may_use(engine, images):
    comp = to_composition(two_slots(images))
    estimate = engine.estimate(comp, "fp32", "none")
    assert estimate.peak > estimate.weights > 0
    assert estimate.peak == engine.pipe.estimate_memory(comp).peak
    assert engine.estimate(comp, "int8", "none").weights < estimate.weights
    assert engine.memory_available() > engine.info.weights_bytes
    fit = modes.fit_for(engine, comp)
    assert fit.fits and "available on cpu" in fit.text


def test_a_run_that_does_not_fit_is_not_started(fresh, images, tmp_path, monkeypatch):
    comp = to_composition(two_slots(images))
    fp32, int8 = (fresh.estimate(comp, p, "none").peak for p in ("fp32", "int8"))
    assert int8 < fp32
    monkeypatch.setattr(fresh, "memory_available", lambda: (int8 + fp32) // 2)
    steps, outcome = finish(
        runs.generate(fresh, Sessions(), "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert not steps and not outcome.entries and not (tmp_path / runs.RESULTS).exists()
    assert "does not fit, so it will not start" in outcome.error
    assert "choose precision int8 and offload none" in outcome.error
    modes.switch_engine(fresh, "int8", "none")  # what the message proposes
    _, outcome = finish(
        runs.generate(fresh, Sessions(), "a", two_slots(images), files=tmp_path, time_limit_s=60)
    )
    assert outcome.error is None and outcome.entries
