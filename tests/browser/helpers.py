"""What the browser tests share: driving the studio's controls by their elem_id (upload, pick
an attribute, type, add a slot, set the run), composing the usual drafts, and starting and
waiting on runs.

Waits are on the page's own text (the progress line, the problems panel, the slot captions)
and on recorded page states, not on fixed sleeps.
"""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from sigma_core import frontend
from sigma_core.inputs import PROJECT_ASSETS

CAT = PROJECT_ASSETS / "chelsea.png"  # 451x300: the model sees 768x512
TEMPLATE = "A photo of [1] holding [2]"
RUN_TIMEOUT_MS = 120_000

# Records every state of the progress line and the live preview while a run goes, so a step
# that shows for a few milliseconds is still seen.
WATCH_JS = """() => {
  const log = [];
  window.__sigmaLog = log;
  const snap = () => {
    const img = document.querySelector('#live-preview img');
    log.push({text: document.querySelector('#progress').innerText,
              preview: img ? img.getAttribute('src') : null, t: Date.now()});
  };
  const seen = new MutationObserver(snap);
  for (const id of ['progress', 'live-preview']) {
    seen.observe(document.getElementById(id),
                 {subtree: true, childList: true, characterData: true, attributes: true});
  }
  window.__sigmaObserver && window.__sigmaObserver.disconnect();
  window.__sigmaObserver = seen;
}"""
RUN_ENDED_JS = """(end) => {
  const log = window.__sigmaLog || [];
  const start = log.findIndex(e => e.text.includes('Starting the run'));
  const now = document.querySelector('#progress').innerText;
  return start >= 0 && new RegExp(end, 'i').test(now);
}"""


def prompt_box(page: Page):
    return page.locator("#prompt textarea")


def upload(page: Page, k: int, path: Path) -> None:
    page.locator(f"#slot-{k}-image input[type=file]").set_input_files(path)


def open_file(page: Page, path: Path) -> None:
    """Open a preset JSON or a PNG through the toolbar's open button (a file chooser)."""
    with page.expect_file_chooser() as chooser:
        page.locator("#preset-upload").click()
    chooser.value.set_files(path)


def drop_file(page: Page, selector: str, path: Path, mime: str) -> dict[str, bool]:
    """Drag ``path`` from the desktop onto the middle of ``selector`` (see :func:`drop_files`)."""
    return drop_files(page, selector, [(path, mime)])


def drop_files(page: Page, selector: str, files: list[tuple[Path, str]]) -> dict[str, bool]:
    """Drag ``files`` (path, type) from the desktop onto the middle of ``selector`` at once:
    dragenter, dragover and drop on the element a person's pointer would be over, as a browser
    sends them. Says for each whether the page took it (cancelled it); a drop nobody takes
    opens the file in the tab, leaving the page."""
    return page.evaluate(
        """async ([selector, files]) => {
          document.querySelector(selector).scrollIntoView({block: 'center'});
          const box = document.querySelector(selector).getBoundingClientRect();
          const x = box.left + box.width / 2, y = box.top + box.height / 2;
          const target = document.elementFromPoint(x, y);
          const data = new DataTransfer();
          for (const [name, bytes, mime] of files) {
            data.items.add(new File([new Uint8Array(bytes)], name, {type: mime}));
          }
          const taken = {};
          for (const type of ['dragenter', 'dragover', 'drop']) {
            const event = new DragEvent(type, {bubbles: true, cancelable: true,
              composed: true, dataTransfer: data, clientX: x, clientY: y});
            target.dispatchEvent(event);
            taken[type] = event.defaultPrevented;
          }
          return taken;
        }""",
        [selector, _file_list(files)],
    )


def paste_file(page: Page, path: Path, mime: str) -> bool:
    """Paste ``path`` (see :func:`paste_files`)."""
    return paste_files(page, [(path, mime)])


def paste_files(page: Page, files: list[tuple[Path, str]]) -> bool:
    """Paste ``files`` (Ctrl+V with files on the clipboard) into the focused element; says
    whether the page took them."""
    return page.evaluate(
        """(files) => {
          const data = new DataTransfer();
          for (const [name, bytes, mime] of files) {
            data.items.add(new File([new Uint8Array(bytes)], name, {type: mime}));
          }
          const event = new ClipboardEvent('paste', {clipboardData: data, bubbles: true,
            cancelable: true, composed: true});
          (document.activeElement || document.body).dispatchEvent(event);
          return event.defaultPrevented;
        }""",
        _file_list(files),
    )


def _file_list(files: list[tuple[Path, str]]) -> list[list[object]]:
    return [[path.name, list(path.read_bytes()), mime] for path, mime in files]


def upload_ok(page: Page, k: int, path: Path) -> None:
    """Upload a usable image to slot k and wait for its thumbnail and caption."""
    upload(page, k, path)
    expect(page.locator(f"#slot-{k}-info")).to_contain_text("the model sees")
    expect(page.locator(f"#slot-{k}-image img")).to_be_visible()
    expect(page.locator(f"#slot-order [data-slot='{k}'] img")).to_be_visible()


def pick_attribute(page: Page, k: int, token: str) -> None:
    """Open slot k's attribute list, check the token's help text, and choose it."""
    box = page.locator(f"#slot-{k}-attributes")
    box.locator("input").click()
    option = box.locator("li[role=option]", has_text=f"{token}:")
    expect(option).to_have_count(1)
    help_text = option.inner_text().split(":", 1)[1].strip()
    assert help_text == frontend.DESCRIPTIONS[token].strip()
    option.click()
    page.keyboard.press("Escape")
    expect(box).to_contain_text(token)


def type_into(page: Page, selector: str, text: str) -> None:
    """Select what the box holds and type over it, key by key."""
    box = page.locator(selector)
    box.click()
    box.press("ControlOrMeta+a")
    box.press("Backspace")
    if text:
        box.press_sequentially(text)


def type_prompt(page: Page, text: str) -> None:
    type_into(page, "#prompt textarea", text)
    expect(prompt_box(page)).to_have_value(text)


def add_slot(page: Page, k: int) -> None:
    page.locator("#add-slot").click()
    expect(page.locator(f"#slot-{k}")).to_be_visible()


def open_settings(page: Page) -> None:
    if not page.locator("#steps").is_visible():
        page.locator("#settings button.label-wrap").click()
    expect(page.locator("#steps")).to_be_visible()


def set_run(page: Page, *, steps: int, size: str = "64x64") -> None:
    """Timesteps (the slider's number box) and the size (a custom WIDTHxHEIGHT)."""
    open_settings(page)
    number = page.locator("#steps input[type=number]")
    size_box = page.locator("#size input")
    width, height = size.split("x")
    # A slider the accordion has just mounted can still reset itself to its first value
    # right after an edit (seen about one time in ten, straight after opening): set both
    # again until they hold. A person never types that fast.
    for _ in range(4):
        number.fill(str(steps))
        number.press("Enter")
        size_box.fill(size)
        size_box.press("Enter")
        expect(page.locator("#sequence-view")).to_contain_text(f"output {width}×{height}")
        page.wait_for_timeout(200)
        if number.input_value() == str(steps) and size_box.input_value() == size:
            break
    expect(number).to_have_value(str(steps))
    expect(size_box).to_have_value(size)


def fill_two_slots(page: Page, pictures: dict[str, Path]) -> None:
    """Slot 1: a red square as <id> "woman"; slot 2: the cat asset as <subject> "tabby cat"."""
    upload_ok(page, 1, pictures["red"])
    pick_attribute(page, 1, "<id>")
    type_into(page, "#slot-1-entity textarea", "woman")
    add_slot(page, 2)
    upload_ok(page, 2, CAT)
    pick_attribute(page, 2, "<subject>")
    type_into(page, "#slot-2-entity textarea", "tabby cat")


def compose_two(page: Page, pictures: dict[str, Path], template: str = TEMPLATE) -> None:
    """Slot 1: a red square as <id> "woman"; slot 2: the cat asset as <subject> "tabby cat";
    the template typed; ready to generate."""
    fill_two_slots(page, pictures)
    type_prompt(page, template)
    expect(page.locator("#problems")).to_contain_text("ready to generate")


def compose_one(page: Page, picture: Path, prompt: str) -> None:
    upload_ok(page, 1, picture)
    pick_attribute(page, 1, "<id>")
    type_prompt(page, prompt)
    expect(page.locator("#problems")).to_contain_text("ready to generate")


def chips(page: Page) -> list[str]:
    return [
        " ".join(t.split()) for t in page.locator("#sequence-view .sigma-chip").all_inner_texts()
    ]


def watch(page: Page) -> None:
    page.evaluate(WATCH_JS)


def run_log(page: Page) -> list[dict]:
    return page.evaluate("() => window.__sigmaLog || []")


def start_run(page: Page) -> None:
    watch(page)
    page.locator("#generate").click()


def wait_run(page: Page, end: str = r"^\s*Done\.\s*$", timeout: int = RUN_TIMEOUT_MS) -> None:
    """Until this run (the one after :func:`start_run`) shows ``end`` (a regex)."""
    page.wait_for_function(RUN_ENDED_JS, arg=end, timeout=timeout)


def generate(page: Page) -> None:
    start_run(page)
    wait_run(page)


def wait_first_step(page: Page) -> None:
    expect(page.locator("#progress")).to_contain_text(
        re.compile(r"step \d+/\d+"), timeout=RUN_TIMEOUT_MS
    )


def toast(page: Page, text: str):
    return page.locator("[data-testid=toast-text]", has_text=text)


def close_toasts(page: Page) -> None:
    """Close every toast (stacked toasts overlap: each close button gets its own click event,
    as a person would click the one on top, then the next)."""
    for button in page.locator("[data-testid=toast-close]").all():
        if button.is_visible():
            button.dispatch_event("click")


def gallery_captions(page: Page) -> list[str]:
    return page.locator("#gallery .caption-label").all_inner_texts()
