"""Runs in chromium: progress and the live preview, the result and the image slider, the
leakage A/B, switching the engine, Cancel, and two browser sessions kept apart. Runs are kept
cheap: 64x64 outputs and a few timesteps (a long run only where a Cancel must land in the
middle of it)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageOps
from playwright.sync_api import Page, expect

from tests.browser.conftest import save_screenshot
from tests.browser.helpers import (
    CAT,
    RUN_TIMEOUT_MS,
    compose_one,
    compose_two,
    gallery_captions,
    generate,
    open_settings,
    prompt_box,
    run_log,
    set_run,
    start_run,
    toast,
    type_prompt,
    wait_first_step,
    wait_run,
    watch,
)


def test_generate_shows_progress_live_preview_result_and_slider(page: Page, pictures) -> None:
    compose_two(page, pictures)
    set_run(page, steps=40)
    generate(page)
    log = run_log(page)
    # the newest step each time the page takes one: it advances (a fast run may skip some)
    steps_seen = {int(m) for e in log for m in re.findall(r"step (\d+)/39", e["text"])}
    assert len(steps_seen) >= 2, log
    previews = [e["preview"] for e in log if e["preview"] and "step" in e["text"]]
    assert previews, f"no live preview during the run: {log}"
    expect(page.locator("#live-preview img")).to_be_visible()
    # The result: in the gallery, with its seed, settings and timings.
    expect(page.locator("#gallery img").first).to_be_visible()
    assert any("seed 42 · 64×64 · preview engine" in c for c in gallery_captions(page))
    info = page.locator("#result-info")
    expect(info).to_contain_text("Seed 42 · 64×64")
    expect(info).to_contain_text("steps 40")
    expect(info).to_contain_text("mask on")
    expect(info).to_contain_text("timings:")
    expect(page.locator("#download")).to_be_visible()
    # Compare with reference [2] in the image slider, and drag its handle.
    page.locator("#compare-with input").click()
    options = page.locator("#compare-with li[role=option]")
    expect(options).to_have_text([re.compile(r"reference \[1\]$"), re.compile(r"reference \[2\]$")])
    options.nth(1).click()
    halves = page.locator("#slider [data-testid=imageslider-image]")
    expect(halves).to_have_count(2)
    expect(halves.nth(1)).to_have_attribute("style", re.compile(r"inset\(0px 0px 0px 50%\)"))
    # The left half is reference [2] fitted to the result's frame, the right half the result.
    left, right = (slider_picture(page, halves.nth(i)) for i in range(2))
    assert left.size == right.size == (64, 64)
    with Image.open(CAT) as cat:
        expected = ImageOps.fit(cat.convert("RGB"), (64, 64))
    assert mean_difference(left, expected) < 12, "the slider's left image is not reference [2]"
    assert mean_difference(right, expected) > 20
    # Drag the handle left (the slider spans the block; the picture sits in its middle): the
    # reference shows up to there.
    handle = page.locator("#slider [data-testid=slider]")
    handle.scroll_into_view_if_needed()
    frame = halves.nth(0).bounding_box()
    start = handle.bounding_box()
    y = start["y"] + start["height"] / 2
    page.mouse.move(start["x"] + start["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(frame["x"] + frame["width"] * 0.4, y, steps=8)
    page.mouse.up()
    expect(halves.nth(1)).not_to_have_attribute("style", re.compile(r"inset\(0px 0px 0px 50%\)"))
    clip = re.search(r"inset\(0px 0px 0px ([\d.]+)%\)", halves.nth(1).get_attribute("style"))
    assert clip and 30 < float(clip[1]) < 48, halves.nth(1).get_attribute("style")
    save_screenshot(page, "generated_result_and_slider")
    # Leakage A/B: the same seed with the mask off, into the slider.
    start_run_ab(page)
    expect(info).to_contain_text("mask off")
    assert sum("seed 42" in c for c in gallery_captions(page)) == 2
    expect(halves).to_have_count(2)


def choose_engine(page: Page, precision: str, offload: str = "none") -> None:
    """Settings › Engine: pick a precision and an offload, reload, wait until it says so."""
    open_settings(page)
    box = page.locator("#precision input")
    box.click()
    box.press("ControlOrMeta+a")
    box.press_sequentially(precision)  # typing opens the list, filtered
    page.locator("#precision li[role=option]").filter(
        has_text=re.compile(rf"^\W*{precision}$")
    ).click()
    page.locator("#offload label", has_text=re.compile(rf"^\s*{offload}$")).click()
    page.locator("#engine-apply").click()
    expect(page.locator("#engine-status")).to_contain_text(
        re.compile(rf"(now|already) runs {precision} with offload {offload}"), timeout=60_000
    )


def encode_seconds(page: Page) -> float:
    """The last result's encode time, from its info ("timings: plan 0.01 s, encode 0.35 s")."""
    text = page.locator("#result-info").inner_text()
    return float(re.search(r"encode (\d+\.\d+) s", text).group(1))


def test_a_new_seed_or_prompt_word_reuses_the_encoded_references(
    page: Page, tmp_path: Path
) -> None:
    """Issue 19 section 4 in the page: a second run with a new seed, and a third with a new
    prompt word, take the reference's latent from the engine's cache: the result says so
    ("1 reused from an earlier run") and its encode time drops. The reference is new to the shared
    server (random pixels), so the first run must encode it."""
    picture = tmp_path / "noise.png"
    noise = np.random.default_rng().integers(0, 256, (384, 384, 3), dtype=np.uint8)
    Image.fromarray(noise).save(picture)
    compose_one(page, picture, "A portrait of [1]")
    set_run(page, steps=2)
    info = page.locator("#result-info")
    generate(page)
    expect(info).to_contain_text(re.compile(r"references: 1 encoded(?!,)"))
    first = encode_seconds(page)
    page.locator("#seed textarea").fill("43")
    page.locator("#seed textarea").press("Tab")
    generate(page)
    expect(info).to_contain_text("Seed 43")
    expect(info).to_contain_text("references: 1 reused from an earlier run")
    reused = encode_seconds(page)
    type_prompt(page, "A smiling portrait of [1]")
    generate(page)
    expect(info).to_contain_text("A smiling portrait of")
    expect(info).to_contain_text("references: 1 reused from an earlier run")
    assert max(reused, encode_seconds(page)) < first / 2, (first, reused)
    save_screenshot(page, "reused_references")


def test_switching_the_engine_to_int8_reloads_it_and_runs(page: Page, pictures) -> None:
    """Settings › Engine on the preview engine: fp8 is marked as not runnable here, int8
    reloads the engine (the banner follows), a run predicts its memory and generates."""
    compose_one(page, pictures["green"], "A photo of [1]")
    set_run(page, steps=3)
    memory = page.locator("#memory-estimate")
    expect(memory).to_contain_text(re.compile(r"Predicted peak about [\d.]+ GiB: weights"))
    expect(memory).to_contain_text("available on cpu")
    expect(page.locator("#engine-banner")).to_contain_text("fp32 on cpu · offload none · VAE fp32")
    page.locator("#precision input").click()
    expect(page.locator("#precision li[role=option]", has_text="fp8")).to_contain_text(
        "not here: fp8 runs on NVIDIA GPUs"
    )
    page.keyboard.press("Escape")
    try:
        choose_engine(page, "int8")
        expect(page.locator("#engine-banner")).to_contain_text("int8 on cpu · offload none")
        expect(page.locator("#offload")).to_contain_text("model (not here: bitsandbytes int8")
        expect(memory).to_contain_text("Predicted peak")
        save_screenshot(page, "engine_int8")
        generate(page)
        expect(page.locator("#gallery .caption-label").first).to_contain_text("seed")
    finally:
        choose_engine(page, "fp32")  # the server is shared by the whole suite
    expect(page.locator("#engine-banner")).to_contain_text("fp32 on cpu · offload none")


def slider_picture(page: Page, image) -> Image.Image:
    """An image the slider shows, as the server sends it."""
    response = page.request.get(image.get_attribute("src"))
    assert response.ok, response.status
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    diff = ImageChops.difference(a, b).convert("L")
    return sum(i * n for i, n in enumerate(diff.histogram())) / (a.width * a.height)


def start_run_ab(page: Page) -> None:
    watch(page)
    page.locator("#ab-button").click()
    page.wait_for_function(
        """() => (window.__sigmaLog || []).some(e => e.text.includes('A/B'))
                 && /^\\s*Done\\.\\s*$/.test(document.querySelector('#progress').innerText)""",
        timeout=RUN_TIMEOUT_MS,
    )


def test_cancel_stops_a_run_and_the_studio_keeps_working(page: Page, pictures) -> None:
    compose_one(page, pictures["blue"], "A portrait of [1]")
    set_run(page, steps=1000, size="480x480")  # about 30 s: the Cancel lands in the middle
    start_run(page)
    wait_first_step(page)
    page.locator("#cancel").click()
    wait_run(page, "cancelled")
    status = page.locator("#progress")
    expect(status).to_contain_text("the composition is unchanged, press Generate to run it again")
    log = [e["text"] for e in run_log(page)]
    assert any("Cancelling: the run stops after the current step" in t for t in log), log
    match = re.search(r"cancelled \D*(\d+)", status.inner_text())
    assert match and int(match[1]) < 900, status.inner_text()  # stopped early, not at the end
    expect(toast(page, "cancelled")).to_be_visible()
    expect(page.locator("#gallery img")).to_have_count(0)  # nothing half-made in the history
    save_screenshot(page, "cancelled_run")
    # The composition is kept and a new run works.
    expect(prompt_box(page)).to_have_value("A portrait of [1]")
    set_run(page, steps=3, size="64x64")
    generate(page)
    expect(page.locator("#result-info")).to_contain_text("steps 3")
    expect(page.locator("#gallery img").first).to_be_visible()


def test_ctrl_enter_generates(page: Page, pictures) -> None:
    """Ctrl+Enter in the prompt runs the composition, as the button does, and types nothing."""
    compose_one(page, pictures["blue"], "A portrait of [1]")
    set_run(page, steps=3, size="64x64")
    watch(page)
    prompt_box(page).press("Control+Enter")
    wait_run(page)
    expect(page.locator("#gallery img").first).to_be_visible()
    expect(prompt_box(page)).to_have_value("A portrait of [1]")


def test_two_browser_sessions_stay_apart(open_page, pictures) -> None:
    """Two contexts at once: different prompts and slots, neither sees the other's; a Cancel
    in one stops its own run and never the other's."""
    first, second = open_page(), open_page()
    compose_one(first, pictures["red"], "A photo of [1] in Paris")
    compose_two(second, pictures, "A cat [2] beside [1]")
    expect(prompt_box(first)).to_have_value("A photo of [1] in Paris")
    expect(first.locator("#slot-2")).to_have_count(0)
    expect(second.locator("#slot-2")).to_be_visible()
    expect(second.locator("#slot-1-info")).to_contain_text("256×256")
    set_run(first, steps=1000)  # a few seconds: long enough for the second to queue behind it
    set_run(second, steps=3)
    # The first runs; the second queues behind it, then cancels its own run.
    start_run(first)
    wait_first_step(first)
    start_run(second)
    expect(second.locator("#progress")).to_contain_text(re.compile(r"queue|Waiting", re.I))
    second.locator("#cancel").click()
    first_status = first.locator("#progress").inner_text()
    wait_run(second, "cancelled")
    wait_run(first)
    assert re.search(r"step \d+/999", first_status), f"the first was not running: {first_status}"
    expect(first.locator("#result-info")).to_contain_text("steps 1000")  # it ran to its end
    expect(first.locator("#gallery img").first).to_be_visible()
    expect(second.locator("#gallery img")).to_have_count(0)
    expect(second.locator("#result-info")).to_have_text("")
    # Each keeps its own composition.
    expect(prompt_box(first)).to_have_value("A photo of [1] in Paris")
    expect(prompt_box(second)).to_have_value("A cat [2] beside [1]")
    save_screenshot(first, "two_sessions_first")
    save_screenshot(second, "two_sessions_second")


def _first_step(page: Page, steps: int) -> int:
    """When the page first showed a step of a run of ``steps`` (ms, its clock)."""
    pattern = re.compile(rf"step \d+/{steps - 1}")
    return min(e["t"] for e in run_log(page) if pattern.search(e["text"]))


def _three_tabs(open_page, pictures) -> tuple[Page, Page, Page]:
    """One tab busy with a long run (about 30 s), two more ready to run 30 steps behind it."""
    busy, early, late = open_page(), open_page(), open_page()
    for page, colour in ((busy, "red"), (early, "blue"), (late, "green")):
        compose_one(page, pictures[colour], f"A {colour} photo of [1]")
    set_run(busy, steps=1000, size="480x480")
    set_run(early, steps=30)
    set_run(late, steps=30)
    start_run(busy)
    wait_first_step(busy)
    return busy, early, late


def _queued(page: Page) -> None:
    expect(page.locator("#progress")).to_contain_text(re.compile(r"queue|Waiting", re.I))


def test_runs_waiting_for_the_engine_start_first_come_first_served(open_page, pictures) -> None:
    """Three tabs: one runs; the second clicks Generate, the third two seconds later. The
    second starts first (reported: a tab that clicked 2.2 s earlier ran after a later one)."""
    busy, early, late = _three_tabs(open_page, pictures)
    start_run(early)
    _queued(early)
    late.wait_for_timeout(2000)
    start_run(late)
    _queued(late)
    busy.locator("#cancel").click()
    wait_run(early)
    wait_run(late)
    assert _first_step(early, 30) < _first_step(late, 30), "the later click ran first"


def test_a_tab_that_stalls_after_its_click_keeps_its_place(open_page, pictures) -> None:
    """A tab whose page stops running right after its click (as a tab sent to the background
    may; its script paused here through the DevTools protocol) still runs before a tab that clicked
    later: the click's own request queues the run. (Failed before: the run was queued by a
    second request the page sent once the first was answered, so the frozen tab's run queued
    only when it woke, behind the later click.)"""
    busy, early, late = _three_tabs(open_page, pictures)
    devtools = early.context.new_cdp_session(early)
    start_run(early)
    devtools.send("Debugger.enable")
    devtools.send("Debugger.pause")  # the page runs no script until it is resumed
    late.wait_for_timeout(1500)
    start_run(late)
    _queued(late)
    late.wait_for_timeout(1500)
    devtools.send("Debugger.resume")
    _queued(early)
    busy.locator("#cancel").click()
    wait_run(early)
    wait_run(late)
    assert _first_step(early, 30) < _first_step(late, 30), "the later click ran first"
