"""Saving and loading in chromium: a saved preset, the history after a reload, restoring a
result's composition, and a downloaded result PNG opened again."""

from __future__ import annotations

import base64
import json

from PIL import Image
from playwright.sync_api import Page, expect

import sigma_core
from tests.browser.conftest import save_screenshot
from tests.browser.helpers import (
    TEMPLATE,
    compose_one,
    compose_two,
    drop_file,
    generate,
    open_file,
    open_settings,
    prompt_box,
    set_run,
    toast,
    type_into,
    type_prompt,
)


def test_save_preset_reload_see_history_and_load_it_back(page: Page, pictures, tmp_path) -> None:
    compose_two(page, pictures)
    type_into(page, "#composition-name textarea", "Red and cat")
    set_run(page, steps=3)
    generate(page)
    expect(page.locator("#gallery img").first).to_be_visible()
    # Save: the preset file appears, downloadable, self-contained.
    page.locator("#save-preset").click()
    link = page.locator("#preset-file a[download]")
    expect(link).to_have_attribute("download", "red-and-cat.json")
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "saved.json"
    download.value.save_as(saved)
    preset = json.loads(saved.read_text())
    assert preset["prompt"] == TEMPLATE and preset["name"] == "Red and cat"
    assert [r["attributes"] for r in preset["references"]] == [["<id>"], ["<subject>"]]
    assert all(r["image"].startswith("data:image/") for r in preset["references"])
    # Reload: the draft and the history come back from this browser's storage.
    page.reload()
    page.wait_for_selector("#engine-banner")
    expect(page.locator("#gallery .caption-label").first).to_contain_text("seed 42 · 64×64")
    expect(prompt_box(page)).to_have_value(TEMPLATE)
    expect(page.locator("#composition-name textarea")).to_have_value("Red and cat")
    expect(page.locator("#slot-2-info")).to_contain_text("451×300")
    expect(page.locator("#slot-2-entity textarea")).to_have_value("tabby cat")
    save_screenshot(page, "reloaded_draft_and_history")
    # An example replaces the composition; the undo brings it back, whole.
    expect(page.locator("#undo")).to_be_hidden()
    page.locator("#examples img").first.click()
    expect(prompt_box(page)).not_to_have_value(TEMPLATE)
    expect(page.locator("#undo")).to_have_text("↶ Undo the load")
    page.locator("#undo").click()
    expect(prompt_box(page)).to_have_value(TEMPLATE)
    expect(page.locator("#slot-2-info")).to_contain_text("451×300")
    expect(page.locator("#slot-1-attributes")).to_contain_text("<id>")
    expect(page.locator("#undo")).to_be_hidden()
    # Load the saved preset: the prompt, both slots, their images and the settings return.
    open_file(page, saved)
    expect(prompt_box(page)).to_have_value(TEMPLATE)
    expect(page.locator("#composition-name textarea")).to_have_value("Red and cat")
    expect(page.locator("#slot-2")).to_be_visible()
    expect(page.locator("#slot-1-info")).to_contain_text("256×256")
    expect(page.locator("#slot-2-info")).to_contain_text("451×300")
    expect(page.locator("#slot-2-entity textarea")).to_have_value("tabby cat")
    expect(page.locator("#slot-1-attributes")).to_contain_text("<id>")
    expect(page.locator("#problems")).to_contain_text("ready to generate")
    open_settings(page)
    expect(page.locator("#steps input[type=number]")).to_have_value("3")
    expect(page.locator("#size input")).to_have_value("64x64")
    # A history entry restores its composition too (from its PNG, which the server keeps).
    page.locator("#gallery .thumbnail-item").first.click()
    expect(page.locator("#result-info")).to_contain_text("Seed 42 · 64×64")
    type_prompt(page, "")
    page.locator("#restore-composition").click()
    expect(prompt_box(page)).to_have_value(TEMPLATE)
    expect(page.locator("#slot-2-info")).to_contain_text("451×300")


def test_a_downloaded_result_png_loads_back(page: Page, pictures, tmp_path) -> None:
    compose_one(page, pictures["green"], "A studio portrait of [1]")
    set_run(page, steps=3)
    generate(page)
    with page.expect_download() as download:
        page.locator("#download").click()
    png = tmp_path / download.value.suggested_filename
    download.value.save_as(png)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (64, 64)
    stored = sigma_core.read_png_composition(png)
    assert stored.prompt == "A studio portrait of [1]"
    # Change the form, then open the PNG: its composition comes back.
    type_prompt(page, "something else entirely")
    open_file(page, png)
    expect(prompt_box(page)).to_have_value("A studio portrait of [1]")
    expect(page.locator("#slot-1-info")).to_contain_text("256×256")
    expect(page.locator("#slot-1-attributes")).to_contain_text("<id>")
    expect(page.locator("#problems")).to_contain_text("ready to generate")
    save_screenshot(page, "png_loaded_back")
    # Dropped on the toolbar, as from a file manager, it opens too.
    type_prompt(page, "changed again")
    assert drop_file(page, "#toolbar", png, "image/png")["drop"]
    expect(prompt_box(page)).to_have_value("A studio portrait of [1]")


def test_a_preset_json_dropped_anywhere_opens(page: Page, pictures, tmp_path) -> None:
    """A preset JSON dropped on the prompt or on a slot's card opens as if picked with the
    toolbar's opener; a broken one gets the opener's message, not an image's. (Failed before:
    the page refused the drop on the prompt, and a slot's card answered "Only image/*
    allowed.")"""
    image = base64.b64encode(pictures["red"].read_bytes()).decode()
    preset = tmp_path / "dropped.json"
    reference = {"slot": 1, "attributes": ["<id>"], "image": f"data:image/png;base64,{image}"}
    preset.write_text(
        json.dumps(
            {
                "format": "sigma-studio/preset",
                "version": 1,
                "prompt": "A photo of [1]",
                "references": [reference],
            }
        )
    )
    assert drop_file(page, "#prompt textarea", preset, "application/json")["drop"]
    expect(prompt_box(page)).to_have_value("A photo of [1]")
    expect(page.locator("#slot-1-info")).to_contain_text("256×256")
    expect(page.locator("#slot-1-attributes")).to_contain_text("<id>")
    assert drop_file(page, "#slot-1-info", pictures["malformed"], "application/json")["drop"]
    expect(toast(page, "malformed.json: malformed JSON")).to_have_count(1)
    expect(toast(page, "image/*")).to_have_count(0)
    expect(prompt_box(page)).to_have_value("A photo of [1]")
    expect(page.locator("#slot-1-info")).to_contain_text("256×256")
