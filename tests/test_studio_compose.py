"""The studio's composing handlers: the form's fields, checking a draft as it is typed (the
problems next to their causes, the sequence view), and the slots (add, move, remove, reorder,
insert [k], thumbnails)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

import sigma_core
from sigma_core import PresetError, SigmaInputError, frontend
from studio import compose, slots, views
from studio.forms import (
    Draft,
    SettingsForm,
    SlotForm,
    parse_crop,
    settings_form,
    to_composition,
    to_draft,
    to_settings,
)
from tests.studio_helpers import FAST, two_slots

pytest_plugins = ["tests.studio_fixtures"]


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
    assert SettingsForm()["layout"] == sigma_core.Settings().layout == "auto"
    for layout in frontend.LAYOUT_CHOICES:
        assert to_settings(FAST.replace(layout=layout)).layout == layout
    with pytest.raises(
        PresetError,
        match=r"^settings\.layout: 'trainign' is not one of auto, inference, training, "
        r"training-no-vit; did you mean 'training'\?$",
    ):
        to_settings(FAST.replace(layout="trainign"))


def test_seeds_are_text_so_large_ones_stay_exact():
    assert to_settings(FAST.replace(seed=str(2**63 - 1))).seed == 2**63 - 1
    with pytest.raises(PresetError, match="seed"):
        to_settings(FAST.replace(seed=str(2**63)))  # the core's bound
    with pytest.raises(SigmaInputError, match=r"settings\.seed: '12a' is not a whole number"):
        to_settings(FAST.replace(seed="12a"))
    assert to_settings(FAST.replace(seed="12a", seed_mode="random")).seed is None


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
    no_vit = replace(two_slots(images), settings=FAST.replace(layout="training-no-vit"))
    result = compose.check(engine, no_vit)
    assert [c.kind for c in result.chips] == ["text", "image", "text", "image", "output"]
    assert views.sequence(result).endswith("layout training-no-vit</small></div>")
    training = replace(two_slots(images), settings=FAST.replace(layout="training"))
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
    draft = replace(two_slots(images), settings=FAST.replace(layout="trainign"))
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
        settings=FAST.replace(seed="-1"),
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


def test_several_images_fill_the_empty_slots_then_new_ones(images):
    """Images added at once fill the slots with no image first (in order), then new slots;
    a slot that holds an image, and the prompt, are left as they were."""
    draft = Draft(
        prompt="A photo of [2]",
        slots=(SlotForm(), SlotForm(image=images["red"], attributes=("<id>",)), SlotForm()),
    )
    added, refused = slots.add_images(
        draft, [images["blue"], images["text"], images["red"], images["blue"]], 5
    )
    assert refused == [
        "notes.txt was not used: references[slot 3].image: is not an image PIL can read "
        "(PNG, JPEG, WebP, GIF, BMP or TIFF)"
    ]
    assert [s.image for s in added.slots] == [
        images["blue"], images["red"], images["red"], images["blue"]
    ]  # fmt: skip
    assert added.slots[1].attributes == ("<id>",) and added.prompt == "A photo of [2]"


def test_images_past_the_last_slot_are_counted_not_read(images):
    """Past ``max_slots`` the files are not read at all (a missing one is not reported as
    missing), and the message says how many were left out and how to get more slots."""
    added, refused = slots.add_images(
        Draft(), [images["red"], images["blue"], "/no/such/file.png", images["red"]], 2
    )
    assert [s.image for s in added.slots] == [images["red"], images["blue"]]
    assert len(refused) == 1
    assert refused[0].startswith("2 more files were not used: this studio offers at most 2 slots")
    assert "--max-references" in refused[0]
    one_left, refused = slots.add_images(added, [images["red"]], 2)
    assert one_left == added and refused[0].startswith("1 more file was not used")
    pasted, refused = slots.add_images(Draft(), ["data:image/png;base64,AAAA"], 2)
    assert pasted.slots == (SlotForm(),) and refused[0].startswith("a pasted image was not used")


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
    assert "1538 tokens (48×32 latents + 2 markers)" in thumb.caption  # 16 px a token
    assert max(thumb.image.size) <= 256
    bad = slots.thumbnail(SlotForm(images["text"]), 3)
    assert bad.image is None and "references[slot 3].image" in bad.problem


def test_a_file_that_is_not_an_image_is_refused_and_the_slot_keeps_its_image(images, tmp_path):
    from PIL import Image

    from studio import slots

    fake = tmp_path / "fake.png"
    fake.write_text("not an image at all\n")
    noise = tmp_path / "random.jpg"
    noise.write_bytes(bytes(range(256)) * 20)
    huge = tmp_path / "huge.png"
    Image.new("L", (20_000, 20_000)).save(huge, optimize=True)  # 400 MP in 0.4 MB
    good = images["red"]
    for path, needle in (
        (fake, "is not an image PIL can read"),
        (noise, "is not an image PIL can read"),
        (huge, "too large to decode safely"),
    ):
        kept, note = slots.check_upload(1, str(path), good)
        assert kept == good  # the slot's previous image, not the bad file
        assert note.startswith("That file was not used: references[slot 1].image: ")
        assert needle in note and str(tmp_path) not in note  # the core's words, no server path
        assert slots.check_upload(2, str(path), None) == (None, note.replace("slot 1", "slot 2"))
    assert slots.check_upload(1, good, None) == (good, "")
    assert slots.check_upload(1, None, good) == (None, "")  # a cleared slot stays cleared
