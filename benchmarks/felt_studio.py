"""Benchmark: the studio as a person feels it, in a real browser, on the preview engine.

Starts ``python app.py`` on a free port, drives Debian's chromium through playwright, and
reports, with the machine's load at the time:

1. page heights with 4 reference slots filled: at 1280x900, where the composition and the
   result end, in screens (goal: at most 1.5); at 390x844, how far below the prompt the
   Generate button and the result panel are, in screens (goal: within one);
2. reorder latency: from the drop of slot 2's strip thumbnail on slot 1 (the browser's drop
   event) until the slot card, the strip and the sequence view all show the new order (goal:
   under 0.5 s), and until the last change on the page;
3. a run (512x512, 30 timesteps): click to the first progress text, to the first live
   preview, to the final image;
4. cancel latency: Cancel clicked during a 1000-step run, until the status says so;
5. four references in, from a fresh page, until the fourth slot's caption shows: one slot at a
   time (add a slot, pick its image: 7 actions) and all at once with "+ Add images" (1).

Run: python -m benchmarks.felt_studio   (from the repository root; needs chromium)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = [ROOT / "assets" / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")]
ATTRIBUTES = ("<id>", "<subject>", "<subject>", "<style>")
PROMPT = "[1] holds [2] beside [3], painted like [4]"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# the slot card, the strip and the sequence view in the order after the drop (the prompt is
# renumbered with it, so the sequence keeps its order: its <id> image is now slot 2's)
CONSISTENT_JS = r"""(want) => {
  const info = document.querySelector('#slot-1-info');
  const strip = document.querySelector('#slot-order [data-slot="1"]');
  const seq = document.querySelector('#sequence-view');
  const done = !!(info && strip && seq && info.innerText.includes(want)
    && strip.innerText.includes('<subject>') && /image \[2\]\s*<id>/.test(seq.innerText));
  if (done && !window.__sigmaConsistentAt) window.__sigmaConsistentAt = performance.now();
  return done;
}"""
# the time of the last change to the workspace since the drop: when the page settled
WATCH_JS = """() => {
  window.__sigmaLast = performance.now();
  document.querySelector('#slot-order').addEventListener(
    'drop', () => { window.__sigmaDropAt = performance.now(); }, true);
  new MutationObserver(() => { window.__sigmaLast = performance.now(); }).observe(
    document.querySelector('#workspace') || document.body,
    {subtree: true, childList: true, characterData: true, attributes: true});
  return performance.now();
}"""


@contextmanager
def studio() -> Iterator[str]:
    """``python app.py`` on a free port with a fresh cache; its URL until the block ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "XDG_CACHE_HOME": home, "GRADIO_TEMP_DIR": f"{home}/gradio"}
        env |= {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        try:
            for _ in range(600):
                try:
                    with urllib.request.urlopen(url, timeout=5):
                        break
                except OSError:
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def fill_four(page) -> None:
    """Four slots: the shipped photos, each with an attribute, and the prompt."""
    for k, (path, token) in enumerate(zip(ASSETS, ATTRIBUTES, strict=True), start=1):
        if k > 1:
            page.locator("#add-slot").click()
            page.locator(f"#slot-{k}").wait_for(state="visible")
        page.locator(f"#slot-{k}-image input[type=file]").set_input_files(path)
        page.wait_for_function(
            f"() => (document.querySelector('#slot-{k}-info') || {{}}).innerText"
            "?.includes('the model sees')"
        )
        box = page.locator(f"#slot-{k}-attributes")
        box.locator("input").click()
        box.locator("li[role=option]", has_text=f"{token}:").click()
        page.keyboard.press("Escape")
    page.locator("#prompt textarea").fill(PROMPT)
    page.wait_for_function(
        "() => document.querySelector('#problems').innerText.includes('ready to generate')"
    )


def bottom(page, selector: str) -> float:
    """Where ``selector`` ends, in page pixels."""
    return page.evaluate(
        "(s) => { const r = document.querySelector(s).getBoundingClientRect();"
        " return r.bottom + window.scrollY; }",
        selector,
    )


def heights(browser, url: str) -> dict[str, float]:
    out = {}
    for name, (w, h) in {"desktop": (1280, 900), "phone": (390, 844)}.items():
        page = browser.new_page(viewport={"width": w, "height": h})
        page.goto(url)
        page.wait_for_selector("#engine-banner")
        fill_four(page)
        page.wait_for_timeout(1000)
        ends = [bottom(page, s) for s in ("#generate", "#gallery", "#slot-4", "#prompt")]
        out[f"{name} page height (screens)"] = (
            page.evaluate("() => document.documentElement.scrollHeight") / h
        )
        if name == "desktop":
            out["desktop composition + result end (screens)"] = max(ends) / h
        else:
            prompt = bottom(page, "#prompt")
            out["phone Generate below the prompt (screens)"] = (ends[0] - prompt) / h
            out["phone results below the prompt (screens)"] = (ends[1] - prompt) / h
        page.close()
    return out


def reorder(browser, url: str) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_selector("#engine-banner")
    fill_four(page)
    page.wait_for_timeout(1000)
    strip = page.locator("#slot-order")
    strip.locator("[data-slot='2']").hover()
    page.evaluate(WATCH_JS)
    strip.locator("[data-slot='2']").drag_to(strip.locator("[data-slot='1']"))
    page.wait_for_function(CONSISTENT_JS, arg="451×300", polling="raf")
    page.wait_for_timeout(8000)  # long after the last event of the drop
    drop, consistent, last = page.evaluate(
        "() => [window.__sigmaDropAt, window.__sigmaConsistentAt, window.__sigmaLast]"
    )
    consistent, settled = (consistent - drop) / 1000, (last - drop) / 1000
    page.close()
    return {"reorder: consistent (s)": consistent, "reorder: last change on the page (s)": settled}


def run_and_cancel(browser, url: str) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_selector("#engine-banner")
    fill_four(page)
    out: dict[str, float] = {}
    for steps, size in ((30, "512x512"), (1000, "512x512")):
        if not page.locator("#steps").is_visible():
            page.locator("#settings button.label-wrap").click()
        page.locator("#steps input[type=number]").fill(str(steps))
        page.locator("#steps input[type=number]").press("Enter")
        page.locator("#size input").fill(size)
        page.locator("#size input").press("Enter")
        page.wait_for_timeout(500)
        shown = page.locator("#gallery img").count()
        start = time.perf_counter()
        page.locator("#generate").click()
        if steps == 1000:
            page.wait_for_function(
                r"() => /step ([3-9]|\d\d+)\//.test(document.querySelector('#progress').innerText)"
            )
            clicked = time.perf_counter()
            page.locator("#cancel").click()
            page.wait_for_function(
                "() => /cancelled/i.test(document.querySelector('#progress').innerText)"
            )
            out["cancel latency (s)"] = time.perf_counter() - clicked
            break
        page.wait_for_function(
            "() => /Starting|Encoding|Planning|step/.test("
            "document.querySelector('#progress').innerText)",
            polling=20,
        )
        out["click to first progress (s)"] = time.perf_counter() - start
        page.wait_for_selector("#live-preview img", timeout=120_000)
        out["click to first live preview (s)"] = time.perf_counter() - start
        page.wait_for_function(
            f"() => document.querySelectorAll('#gallery img').length > {shown}",
            timeout=300_000,
            polling=50,
        )
        out["click to final image, 30 timesteps at 512x512 (s)"] = time.perf_counter() - start
    page.close()
    return out


def adding(browser, url: str) -> dict[str, float]:
    out = {}
    for how in ("one slot at a time", "at once"):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector("#engine-banner")
        start = time.perf_counter()
        if how == "at once":
            page.locator("#slot-adders input[type=file]").set_input_files(ASSETS)
        else:
            for k, path in enumerate(ASSETS, start=1):
                if k > 1:
                    page.locator("#add-slot").click()
                    page.locator(f"#slot-{k}").wait_for(state="visible")
                page.locator(f"#slot-{k}-image input[type=file]").set_input_files(path)
                page.locator(f"#slot-{k}-info", has_text="the model sees").wait_for()
        page.locator("#slot-4-info", has_text="the model sees").wait_for()
        out[f"four references in, {how} (s)"] = time.perf_counter() - start
        page.close()
    return out


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    from playwright.sync_api import sync_playwright

    with studio() as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        figures = {**heights(browser, url), **reorder(browser, url)}
        figures |= run_and_cancel(browser, url) | adding(browser, url)
        browser.close()
    print(f"load average at the end: {Path('/proc/loadavg').read_text().split()[:3]}")
    for name, value in figures.items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
