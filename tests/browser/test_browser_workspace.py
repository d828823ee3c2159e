"""The workspace (issue 19, sections 2, 3 and defect 5): four slots and the result fit the
screen on a desktop and a phone, a reorder is one consistent render, and a reference is
cropped with the mouse or to its face."""

from __future__ import annotations

import itertools
import json
import re
import time

from playwright.sync_api import Page, expect

from sigma_core.inputs import PROJECT_ASSETS
from tests.browser.conftest import save_screenshot
from tests.browser.helpers import (
    add_slot,
    drop_file,
    drop_files,
    open_file,
    paste_file,
    paste_files,
    pick_attribute,
    prompt_box,
    toast,
    type_into,
    type_prompt,
    upload_ok,
)

FOUR = [PROJECT_ASSETS / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")]
TOKENS = ("<id>", "<subject>", "<subject>", "<style>")
# What each painted frame shows of the slot-1 card, the strip and the sequence view: a
# requestAnimationFrame loop runs just before every paint, so it sees what a person sees.
RECORD_JS = """() => {
  const log = [];
  window.__sigmaStates = log;
  const snap = (t) => {
    log.push({t,
      info: document.querySelector('#slot-1-info').innerText,
      strip: document.querySelector('#slot-order [data-slot="1"]').innerText,
      seq: document.querySelector('#sequence-view').innerText,
      prompt: document.querySelector('#prompt textarea').value});
    if (log.length < 2000) requestAnimationFrame(snap);
  };
  requestAnimationFrame(snap);
}"""


def fill_four(page: Page) -> None:
    for k, (path, token) in enumerate(zip(FOUR, TOKENS, strict=True), start=1):
        if k > 1:
            add_slot(page, k)
        upload_ok(page, k, path)
        pick_attribute(page, k, token)
    type_prompt(page, "[1] holds [2] beside [3], painted like [4]")
    expect(page.locator("#problems")).to_contain_text("ready to generate")


def bottom(page: Page, selector: str) -> float:
    return page.evaluate(
        "(s) => document.querySelector(s).getBoundingClientRect().bottom + window.scrollY",
        selector,
    )


def test_four_slots_and_the_result_fit_a_desktop_and_a_phone(page: Page) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    fill_four(page)
    save_screenshot(page, "workspace_desktop_1280x900")
    ends = [bottom(page, s) for s in ("#prompt", "#slot-4", "#generate", "#gallery")]
    assert max(ends) <= 1.5 * 900, ends  # the composition and the result: 1.5 screens at most
    # the result panel sits beside the slots, not below them
    assert bottom(page, "#gallery") < bottom(page, "#slot-4"), ends
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(500)
    save_screenshot(page, "workspace_phone_390x844")
    below = bottom(page, "#prompt")
    assert bottom(page, "#generate") - below <= 844, "Generate is more than a screen down"
    assert (
        page.evaluate(
            "() => document.querySelector('#gallery').getBoundingClientRect().top + window.scrollY"
        )
        - below
        <= 844
    ), "the result panel is more than a screen down"


def test_a_reorder_is_one_consistent_render(page: Page) -> None:
    """Between the old order and the new, no painted frame mixes them for longer than a blink
    (100 ms): once slot 1's card shows the cat, the strip and the renumbered prompt and
    sequence do too (before, they followed one by one over seconds)."""
    fill_four(page)
    page.evaluate(RECORD_JS)
    strip = page.locator("#slot-order")
    strip.locator("[data-slot='2']").drag_to(strip.locator("[data-slot='1']"))
    expect(prompt_box(page)).to_have_value("[2] holds [1] beside [3], painted like [4]")
    expect(page.locator("#slot-1-info")).to_contain_text("451×300")
    page.wait_for_timeout(1500)
    frames = page.evaluate("() => window.__sigmaStates")

    def new(s: dict) -> list[bool]:
        seq = re.search(r"image \[2\]\s*<id>", s["seq"]) if "image [" in s["seq"] else True
        checks = ["451×300" in s["info"], "<subject>" in s["strip"]]
        return [*checks, s["prompt"].startswith("[2] holds [1]"), bool(seq)]

    mixed = [(a["t"], b["t"]) for a, b in itertools.pairwise(frames) if len(set(new(a))) > 1]
    assert any(all(new(f)) for f in frames), frames[-1]
    assert sum(end - start for start, end in mixed) < 100, [
        f for f in frames if len(set(new(f))) > 1
    ][:3]
    expect(page.locator("#problems")).to_contain_text("ready to generate")


def test_an_id_reference_is_cropped_to_its_face_and_the_crop_can_be_dragged(page: Page) -> None:
    upload_ok(page, 1, FOUR[0])  # the astronaut: 512x512
    expect(page.locator("#slot-1-info")).to_contain_text("512×512, the model sees")
    pick_attribute(page, 1, "<id>")  # an <id> image gets its face crop, once, on its own
    note = page.locator("#slot-1-upload-note")
    expect(note).to_contain_text("cropped to the face")
    expect(page.locator("#slot-1-info")).to_contain_text(re.compile(r"cropped to \d+×\d+"))
    page.locator("#slot-1-details").click()
    crop = page.locator("#slot-1-crop textarea")
    expect(crop).to_have_value(re.compile(r"^\d+, \d+, \d+, \d+$"))
    left, top, right, bottom_ = map(int, crop.input_value().split(", "))
    assert left < 175 and top < 66 and right > 273 and bottom_ > 163  # holds the face box
    # Drag a box over the top-left quarter of the picture: the crop follows, in its pixels.
    frame = page.locator("#slot-1-cropper .sigma-crop-frame")
    expect(frame).to_be_visible()
    box = frame.bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    expect(crop).to_have_value(re.compile(r"^\d{1,2}, \d{1,2}, 2[45]\d, 2[45]\d$"))
    expect(page.locator("#slot-1-info")).to_contain_text(re.compile(r"cropped to 2[45]\d×"))
    save_screenshot(page, "crop_with_the_mouse")
    # Undo: an empty crop is the whole image, and it stays so (no second face crop).
    crop.fill("")
    crop.blur()
    expect(page.locator("#slot-1-info")).to_contain_text("512×512, the model sees")
    page.locator("#slot-1-entity textarea").fill("astronaut")
    page.wait_for_timeout(1000)
    expect(crop).to_have_value("")


def test_a_slot_added_while_the_face_crop_runs_keeps_the_crop(page: Page) -> None:
    """Pick <id>, then add a slot at once: the add's answer (it started before the face crop
    came back) leaves slot 1's crop alone."""
    upload_ok(page, 1, FOUR[0])
    box = page.locator("#slot-1-attributes")
    box.locator("input").click()
    box.locator("li[role=option]", has_text="<id>:").click()
    page.keyboard.press("Escape")
    page.locator("#add-slot").click()  # no wait: both answers are in flight
    expect(page.locator("#slot-2")).to_be_visible()
    expect(page.locator("#slot-1-upload-note")).to_contain_text("cropped to the face")
    page.wait_for_timeout(1500)  # every answer in by now
    expect(page.locator("#slot-1-info")).to_contain_text(re.compile(r"cropped to \d+×\d+"))
    page.locator("#slot-1-details").click()
    expect(page.locator("#slot-1-crop textarea")).to_have_value(re.compile(r"^\d+, \d+, \d+, \d+$"))


def test_background_removal_says_what_to_install_here(page: Page) -> None:
    """No U²-Net model on this machine (as in CI): the button answers with what to install,
    and the slot keeps its image."""
    upload_ok(page, 1, FOUR[1])
    page.locator("#slot-1-details").click()
    page.locator("#slot-1-background").click()
    expect(toast(page, "rembg")).to_be_visible()
    expect(page.locator("#slot-1-info")).to_contain_text("451×300")
    text = page.locator("[data-testid=toast-text]").first.inner_text()
    assert "/root" not in text and "site-packages" not in text, text


def test_a_file_of_the_wrong_type_is_refused_once(page: Page, tmp_path) -> None:
    """A text file dropped on a slot or opened as a preset: gradio's one notice naming the
    file and what is allowed (it came twice before), and nothing else changes."""
    notes = tmp_path / "notes.txt"
    notes.write_text("just text")
    page.locator("#slot-1-image input[type=file]").set_input_files(notes)
    expect(toast(page, "Invalid file type: notes.txt. Only image/* allowed.")).to_have_count(1)
    open_file(page, notes)
    expect(toast(page, "Only .json, .png allowed.")).to_have_count(1)
    page.wait_for_timeout(1500)  # a second notice would have come by now
    shown = page.locator("[data-testid=toast-text]").all_inner_texts()
    assert sum("Invalid file type" in t for t in shown) <= 2, shown
    assert sum("image/*" in t for t in shown) <= 1, shown
    expect(page.locator("#slot-1-upload-note")).to_have_text("")
    expect(prompt_box(page)).to_have_value("")


def test_a_file_dropped_on_a_slot_with_an_image_never_empties_it(page: Page, tmp_path) -> None:
    """Dropped on a slot that shows an image, a text file gets gradio's one notice and a
    broken image file our reader's note; both leave the image (and the server's draft) as it
    was. An image dropped there replaces it. (Failed before: gradio's drop handler emptied the
    slot first, then dropped the text file without a word.)"""
    upload_ok(page, 1, FOUR[0])
    image = page.locator("#slot-1-image img")
    kept = image.get_attribute("src")
    notes, fake = tmp_path / "notes.txt", tmp_path / "fake.png"
    notes.write_text("just text")
    fake.write_text("not a picture")
    drop_file(page, "#slot-1-image", notes, "text/plain")
    expect(toast(page, "Invalid file type: notes.txt. Only image/* allowed.")).to_have_count(1)
    drop_file(page, "#slot-1-image", fake, "image/png")
    expect(page.locator("#slot-1-upload-note")).to_contain_text("That file was not used")
    page.wait_for_timeout(1500)  # an emptied slot would show by now
    expect(image).to_have_attribute("src", kept)
    expect(page.locator("#slot-1-info")).to_contain_text("512×512")
    expect(page.locator("#slot-order [data-slot='1'] img")).to_be_visible()
    drop_file(page, "#slot-1-image", FOUR[1], "image/png")
    expect(page.locator("#slot-1-info")).to_contain_text("451×300")
    expect(image).not_to_have_attribute("src", kept)
    expect(page.locator(".sigma-drop-here")).to_have_count(0)  # no highlight left on


def test_a_file_dropped_on_a_slot_card_goes_to_its_image(page: Page) -> None:
    """Anywhere on a slot's card (its caption, its attributes) a dropped image is that slot's
    image; outside every card and upload area the page refuses a file, where the browser
    would leave the studio to open it. (Failed before: nothing took either drop.)"""
    upload_ok(page, 1, FOUR[0])
    add_slot(page, 2)
    assert drop_file(page, "#slot-1-info", FOUR[1], "image/png")["drop"]
    expect(page.locator("#slot-1-info")).to_contain_text("451×300")
    assert drop_file(page, "#slot-2-attributes", FOUR[2], "image/png")["drop"]
    expect(page.locator("#slot-2-info")).to_contain_text("600×400")
    expect(page.locator("#slot-1-info")).to_contain_text("451×300")
    for outside in ("#engine-banner", "#prompt textarea", "#live-preview", "#toolbar"):
        taken = drop_file(page, outside, FOUR[3], "image/jpeg")
        assert taken["dragover"] and taken["drop"], (outside, taken)
    page.wait_for_timeout(1000)  # a drop taken by a slot would show by now
    expect(page.locator("#slot-1-info")).to_contain_text("451×300")
    expect(page.locator("#slot-2-info")).to_contain_text("600×400")
    expect(page.locator("#slot-3")).to_be_hidden()


def test_several_images_at_once_each_get_a_slot(page: Page, pictures, tmp_path) -> None:
    """Several images dropped at once on a card, a file dropped on the order strip, several
    pasted, several picked with "+ Add images": each image fills a slot with no image, else a
    new slot, up to the studio's 8; a file our reader refuses, and those past the last slot,
    are named in one notice, a line each, and the others still come in. (Failed before: a slot kept
    the first of several files, without a word for the rest, and the strip took no file.)"""
    upload_ok(page, 1, FOUR[0])
    dropped = [(FOUR[1], "image/png"), (pictures["text"], "image/png"), (FOUR[2], "image/png")]
    assert drop_files(page, "#slot-1-info", dropped)["drop"]
    expect(page.locator("#slot-2-info")).to_contain_text("451×300")
    expect(page.locator("#slot-3-info")).to_contain_text("600×400")
    expect(page.locator("#slot-1-info")).to_contain_text("512×512")
    expect(toast(page, "notes.png was not used: references[slot 3].image")).to_have_count(1)
    assert drop_file(page, "#slot-order", FOUR[3], "image/jpeg")["drop"]
    expect(page.locator("#slot-4-info")).to_contain_text("640×427")
    page.locator("body").click(position={"x": 5, "y": 5})
    assert paste_files(page, [(FOUR[1], "image/png"), (FOUR[2], "image/png")])
    expect(page.locator("#slot-6-info")).to_contain_text("600×400")
    with page.expect_file_chooser() as chooser:
        page.locator("#add-images").click()
    notes = tmp_path / "notes.txt"
    notes.write_text("just text")
    chooser.value.set_files([FOUR[3], notes, FOUR[0], FOUR[1]])
    expect(page.locator("#slot-8-info")).to_contain_text("512×512")
    expect(toast(page, "Invalid file type: notes.txt. Only image/* allowed.")).to_have_count(1)
    expect(toast(page, "1 more file was not used: this studio offers at most 8")).to_have_count(1)
    expect(page.locator("#slot-5-info")).to_contain_text("451×300")
    expect(page.locator("#slot-7-info")).to_contain_text("640×427")
    expect(page.locator("#slot-1-info")).to_contain_text("512×512")


def test_a_removed_or_cleared_slot_comes_back_with_undo(page: Page) -> None:
    """✕ removes a slot with its image, attributes and entity, and offers the undo, named for
    the removal; the undo brings the slot back where it was, whole. Clearing a slot's image
    offers its undo too. (Failed before: a removed slot, or a cleared image, was gone for
    good.)"""
    for k, picture in enumerate(FOUR[:3], start=1):
        if k > 1:
            add_slot(page, k)
        upload_ok(page, k, picture)
    pick_attribute(page, 2, "<subject>")
    type_into(page, "#slot-2-entity textarea", "tabby cat")
    page.locator("#slot-2-remove").click()
    expect(page.locator("#slot-3")).to_be_hidden()
    expect(page.locator("#slot-2-info")).to_contain_text("600×400")
    undo = page.locator("#undo")
    expect(undo).to_have_text("↶ Undo removing [2]")
    undo.click()
    expect(page.locator("#slot-2-info")).to_contain_text("451×300")
    expect(page.locator("#slot-2-attributes")).to_contain_text("<subject>")
    expect(page.locator("#slot-2-entity textarea")).to_have_value("tabby cat")
    expect(page.locator("#slot-3-info")).to_contain_text("600×400")
    expect(undo).to_be_hidden()
    page.locator("#slot-1-image button[aria-label='Remove Image']").click()
    expect(page.locator("#slot-1-image img")).to_have_count(0)
    expect(undo).to_have_text("↶ Undo clearing [1]")
    undo.click()
    expect(page.locator("#slot-1-info")).to_contain_text("512×512")
    expect(page.locator("#slot-1-image img")).to_be_visible()
    expect(page.locator("#slot-2-entity textarea")).to_have_value("tabby cat")


def test_a_pasted_image_goes_to_the_focused_card_or_the_first_empty_slot(page: Page) -> None:
    """Ctrl+V with an image on the clipboard: into the first slot with no image; with a slot's
    card focused, into that slot; in a text field, never (a text paste stays a text paste)."""
    upload_ok(page, 1, FOUR[0])
    add_slot(page, 2)
    page.locator("body").click(position={"x": 5, "y": 5})
    assert paste_file(page, FOUR[1], "image/png")
    expect(page.locator("#slot-2-info")).to_contain_text("451×300")
    expect(page.locator("#slot-1-info")).to_contain_text("512×512")
    page.locator("#slot-1-up").focus()
    assert paste_file(page, FOUR[2], "image/png")
    expect(page.locator("#slot-1-info")).to_contain_text("600×400")
    prompt_box(page).focus()
    assert not paste_file(page, FOUR[3], "image/jpeg")
    page.wait_for_timeout(1000)  # a slot that took it would show by now
    expect(page.locator("#slot-1-info")).to_contain_text("600×400")
    expect(page.locator("#slot-2-info")).to_contain_text("451×300")


def test_the_webcam_source_fits_a_slot_card(page: Page) -> None:
    """The slot's webcam source shows its "Click to Access Webcam" above the source buttons.
    (Failed before: gradio's prompt asks for 240 px, and in a 130 px card its words were
    under the buttons.)"""
    page.locator("#slot-1-image button[aria-label='Capture from camera']").click()
    expect(page.locator("#slot-1-image").get_by_text("Click to Access Webcam")).to_be_visible()
    fits = """() => {
      const card = document.querySelector('#slot-1-image');
      const bar = card.querySelector('.source-selection').getBoundingClientRect();
      const walk = document.createTreeWalker(card, NodeFilter.SHOW_TEXT);
      while (walk.nextNode() && !walk.currentNode.data.includes('Click to Access Webcam'));
      const words = document.createRange();
      words.selectNodeContents(walk.currentNode);
      const text = words.getBoundingClientRect();
      return text.top >= card.getBoundingClientRect().top && text.bottom <= bar.top + 1;
    }"""
    page.wait_for_function(fits, timeout=10_000)  # the page's stylesheet may come a little late


def test_an_image_dropped_before_the_page_finished_opening_stays(browser, studio_url) -> None:
    """The page asks on load for the draft this browser kept; a fresh browser kept none. An
    image dropped before that answer arrives (a slow link, a busy server: held back 3 s
    here) stays. (Failed before: the answer, the empty draft, replaced the form.)"""
    context = browser.new_context(viewport={"width": 1280, "height": 900})

    def hold_the_draft_request(route) -> None:
        body = json.loads(route.request.post_data or "{}")
        if body.get("data") == [None]:  # the draft kept in this browser: none yet
            time.sleep(3)
        route.continue_()

    page = context.new_page()
    page.route("**/gradio_api/queue/join*", hold_the_draft_request)
    page.goto(studio_url)
    page.wait_for_selector("#engine-banner")
    upload_ok(page, 1, FOUR[1])
    page.wait_for_timeout(4000)  # past the held answer
    expect(page.locator("#slot-1-info")).to_contain_text("the model sees")
    context.close()
