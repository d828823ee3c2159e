"""Composing in chromium: references, attributes, the template and its insert buttons, the
sequence view, reordering the slots, and every bad input the page can reach (a message next to
its cause or a toast, the composition kept)."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.browser.conftest import save_screenshot
from tests.browser.helpers import (
    TEMPLATE,
    add_slot,
    chips,
    close_toasts,
    compose_one,
    compose_two,
    fill_two_slots,
    open_file,
    prompt_box,
    start_run,
    toast,
    type_prompt,
    upload,
    upload_ok,
    wait_run,
)


def test_compose_two_references_with_attributes_and_a_template(page: Page, pictures) -> None:
    """Upload a generated PNG and a shipped asset, pick attributes (with their help text),
    write the template with the insert buttons, see the thumbnails' size and token captions
    and the sequence view's chips."""
    banner = page.locator("#engine-banner")
    expect(banner).to_contain_text("PREVIEW ENGINE")
    fill_two_slots(page, pictures)
    expect(page.locator("#slot-1-info")).to_have_text(
        "256×256, the model sees 512×512 · 1026 tokens (32×32 latents + 2 markers)"
    )
    expect(page.locator("#slot-2-info")).to_contain_text("451×300, the model sees")
    expect(page.locator("#slot-2-info")).to_contain_text("latents + 2 markers")
    # The template: typed, with each reference inserted at the cursor by its button.
    type_prompt(page, "A photo of holding")
    prompt_box(page).press("Home")
    for _ in range(len("A photo of")):
        prompt_box(page).press("ArrowRight")
    page.locator("#insert-1").click()
    expect(prompt_box(page)).to_have_value("A photo of [1] holding")
    prompt_box(page).click()
    prompt_box(page).press("End")
    page.locator("#insert-2").click()
    expect(prompt_box(page)).to_have_value(TEMPLATE)
    expect(page.locator("#problems")).to_contain_text("ready to generate")
    expect(page.locator("#sequence-view .sigma-chip")).to_have_count(5)
    seq = chips(page)
    assert seq[0].startswith("A photo of <id> woman"), seq
    assert seq[1].startswith("image [1] <id> · 512×512 · 1026 tok"), seq
    assert "holding <subject> tabby cat" in seq[2], seq
    assert seq[3].startswith("image [2] <subject>"), seq
    assert seq[4].startswith("output"), seq
    expect(page.locator("#sequence-view")).to_contain_text("SIGMA mask on")
    # The attention-mask picture, on demand.
    page.locator("#mask-button").click()
    expect(page.locator("#mask-image img")).to_be_visible()
    save_screenshot(page, "compose_two_references")
    # Auto-compose writes a template from the slots' attributes.
    page.locator("#auto-compose").click()
    expect(prompt_box(page)).to_have_value("A photo of [1] and [2]")


def test_reordering_slots_renumbers_the_template_and_the_sequence(page: Page, pictures) -> None:
    compose_two(page, pictures)
    assert chips(page)[1].startswith("image [1] <id>")
    page.locator("#slot-2-up").click()
    expect(prompt_box(page)).to_have_value("A photo of [2] holding [1]")
    # The cat is slot 1 now, the red square slot 2, each with its attribute and entity.
    expect(page.locator("#slot-1-info")).to_contain_text("451×300")
    expect(page.locator("#slot-2-info")).to_contain_text("256×256")
    expect(page.locator("#slot-1-attributes")).to_contain_text("<subject>")
    expect(page.locator("#slot-2-entity textarea")).to_have_value("woman")
    expect(page.locator("#sequence-view .sigma-chip").nth(1)).to_contain_text("image [2] <id>")
    seq = chips(page)
    assert seq[0].startswith("A photo of <id> woman"), seq  # the meaning is the same
    assert seq[3].startswith("image [1] <subject>"), seq
    expect(page.locator("#problems")).to_contain_text("ready to generate")
    save_screenshot(page, "reordered_slots")
    page.locator("#slot-1-down").click()
    expect(prompt_box(page)).to_have_value(TEMPLATE)
    expect(page.locator("#sequence-view .sigma-chip").nth(1)).to_contain_text("image [1] <id>")
    expect(page.locator("#slot-1-info")).to_contain_text("256×256")
    # The slot strip: drag the cat's thumbnail onto the first one; the same renumbering.
    strip = page.locator("#slot-order")
    expect(strip.locator("[data-slot='2']")).to_contain_text("<subject> tabby cat")
    strip.locator("[data-slot='2']").drag_to(strip.locator("[data-slot='1']"))
    expect(prompt_box(page)).to_have_value("A photo of [2] holding [1]")
    expect(page.locator("#slot-1-info")).to_contain_text("451×300")
    expect(strip.locator("[data-slot='1']")).to_contain_text("<subject> tabby cat")
    expect(page.locator("#sequence-view .sigma-chip").nth(1)).to_contain_text("image [2] <id>")


def test_bad_inputs_show_a_message_and_keep_the_composition(page: Page, pictures) -> None:
    """Each bad-input path of section 6 the page can reach: a message next to its cause or
    as a warning, the app still answering, the prompt text kept."""
    compose_one(page, pictures["red"], "A photo of [1]")
    prompt = "A photo of [1]"
    slot_problems = page.locator("#slot-2-problems")
    # An upload that is not an image (a text file named .png), then a truncated PNG: refused
    # with the core's message under the slot, once, no toast, and the slot keeps its image.
    add_slot(page, 2)
    upload_ok(page, 2, pictures["blue"])
    kept = re.search(
        r"\d+×\d+, the model sees .*markers\)", page.locator("#slot-2-info").inner_text()
    )[0]
    note = page.locator("#slot-2-upload-note")
    upload(page, 2, pictures["text"])
    expect(note).to_contain_text("That file was not used: references[slot 2].image: ")
    expect(note).to_contain_text("is not an image PIL can read")
    page.wait_for_timeout(1500)  # what the page settles on
    expect(page.locator("#slot-2-info")).to_contain_text(kept)  # still the blue square
    expect(page.locator("#slot-order [data-slot='2'] img")).to_be_visible()
    assert page.locator("body").inner_text().count("is not an image PIL can read") == 1
    expect(page.locator("[data-testid=toast-text]")).to_have_count(0)
    expect(prompt_box(page)).to_have_value(prompt)
    upload(page, 2, pictures["truncated"])
    expect(note).to_contain_text("truncated or corrupt")
    expect(prompt_box(page)).to_have_value(prompt)
    save_screenshot(page, "bad_image_upload")
    upload_ok(page, 2, pictures["red"])
    expect(note).to_have_text("")
    expect(slot_problems).not_to_contain_text("✖")
    # A template naming a missing slot, then an empty one.
    prompt_problems = page.locator("#prompt-problems")
    type_prompt(page, "A photo of [1] and [3]")
    expect(prompt_problems).to_contain_text("slot 3, which does not exist")
    expect(page.locator("#sequence-view")).to_contain_text("once the problems are fixed")
    add_slot(page, 3)
    expect(prompt_problems).to_contain_text("slot 3, which has no image")
    # An unknown attribute in raw syntax.
    type_prompt(page, "<idd> woman <image_1>")
    expect(prompt_problems).to_contain_text("did you mean '<id>'")
    raw = "<idd> woman <image_1>"
    # Generate with problems: refused with the message, nothing runs.
    start_run(page)
    wait_run(page, "prompt")
    expect(page.locator("#gallery img")).to_have_count(0)
    # A malformed preset JSON, a preset that fails validation, a PNG without metadata.
    for name, message in (
        ("malformed", "malformed.json: malformed JSON"),
        ("invalid", "invalid.json: references[0].attributes[0]"),
        ("plain", "this PNG holds no SIGMA Studio composition"),
    ):
        open_file(page, pictures[name])
        expect(toast(page, message)).to_be_visible()
        expect(prompt_box(page)).to_have_value(raw)
        expect(page.locator("#slot-3")).to_be_visible()
    save_screenshot(page, "bad_preset_uploads")
    close_toasts(page)
    # Removing a slot the prompt places; zero slots (removing the last one); more than the
    # maximum.
    page.locator("#slot-1-remove").click()
    expect(toast(page, "references[slot 1]: the prompt places this slot")).to_be_visible()
    expect(page.locator("#slot-3")).to_be_visible()
    page.locator("#slot-3-remove").click()
    expect(page.locator("#slot-3")).to_have_count(0)
    page.locator("#slot-2-remove").click()
    expect(page.locator("#slot-2")).to_have_count(0)
    page.locator("#slot-1-remove").click()
    expect(toast(page, "keeps at least one slot")).to_be_visible()
    expect(page.locator("#slot-1")).to_be_visible()
    for k in range(2, 9):
        add_slot(page, k)
    page.locator("#add-slot").click()
    expect(toast(page, "at most 8 slots")).to_be_visible()
    expect(page.locator("#slot-9")).to_have_count(0)
    # Still working: the first slot kept its image, and a valid prompt is ready.
    type_prompt(page, prompt)
    expect(page.locator("#slot-1-info")).to_contain_text("256×256")
    expect(page.locator("#prompt-problems")).not_to_contain_text("✖")


def test_warning_toasts_show_attribute_tokens_verbatim(page: Page, pictures) -> None:
    type_prompt(page, "kept as it is")
    open_file(page, pictures["invalid"])
    expect(toast(page, "invalid.json: references[0].attributes[0]")).to_be_visible()
    expect(prompt_box(page)).to_have_value("kept as it is")
    expect(toast(page, "'<idd>' is not an attribute; did you mean '<id>'?")).to_be_visible(
        timeout=5_000
    )
