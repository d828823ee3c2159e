"""The studio in a real browser: `python app.py` on the preview engine, driven by playwright
through Debian's chromium (never `playwright install`).

Without chromium the suite is skipped locally; CI sets SIGMA_REQUIRE_BROWSER=1, where a missing
browser is a failure. Screenshots go to artifacts/screenshots/ (kept by CI as test artifacts);
each is checked not to be blank (a one-colour picture means the page did not render).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 180
VIEWPORT = {"width": 1400, "height": 1000}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require_chromium() -> None:
    if Path(CHROMIUM).is_file():
        return
    message = "chromium is not installed (apt-get install -y chromium)"
    if os.environ.get("SIGMA_REQUIRE_BROWSER") == "1":
        pytest.fail(message + "; CI must run the browser suite")
    pytest.skip(message)


def assert_not_blank(path: Path) -> None:
    """A screenshot shows something: more than one colour, and not nearly all one colour."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").resize((200, 200))
    colours = small.getcolors(maxcolors=200 * 200) or []
    assert len(colours) > 8, f"{path.name}: the screenshot is blank ({len(colours)} colours)"
    top = max(n for n, _ in colours)
    assert top < 0.98 * 200 * 200, f"{path.name}: the screenshot is almost one colour"


def save_screenshot(page: object, name: str, *, full_page: bool = True) -> Path:
    """``page`` as artifacts/screenshots/<name>.png, checked not to be blank."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    assert_not_blank(path)
    return path


@pytest.fixture(scope="session")
def studio_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A studio server on a free port, its cache in a temporary folder; stopped at the end."""
    _require_chromium()
    port = _free_port()
    home = tmp_path_factory.mktemp("studio_home")
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(home),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(home / "gradio"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(home / "hf"),
    }
    log_path = home / "app.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port), "--outputs", str(home / "outputs")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"app.py did not serve {url} in {START_TIMEOUT_S} s")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    if proc.returncode not in (0, -15):
        print(f"app.py ended with {proc.returncode}:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def browser(studio_url: str) -> Iterator[object]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # a loaded 2-core machine: generous, never a sleep
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser: object, studio_url: str) -> Iterator[Callable[[], object]]:
    """Opens the studio in a new browser context (its own studio session and browser storage)
    each call; every context is closed at the end of the test."""
    contexts = []

    def open_one() -> object:
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(studio_url)
        page.wait_for_selector("#engine-banner")
        return page

    yield open_one
    for context in contexts:
        context.close()


@pytest.fixture
def page(open_page: Callable[[], object], request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser context (its own studio session) on the studio page; a screenshot of
    the final state is saved under the test's name."""
    page = open_page()
    yield page
    save_screenshot(page, request.node.name)


@pytest.fixture
def pictures(tmp_path: Path) -> dict[str, Path]:
    """Small reference PNGs, and the bad files of section 6."""
    from PIL import Image

    out = {}
    for name, colour in (("red", (220, 40, 40)), ("blue", (40, 60, 220)), ("green", (30, 160, 60))):
        out[name] = tmp_path / f"{name}.png"
        image = Image.new("RGB", (256, 256), colour)
        image.paste((255, 255, 255), (64, 64, 192, 192))  # not one flat colour
        image.save(out[name])
    out["text"] = tmp_path / "notes.png"  # a text file named .png
    out["text"].write_text("these are notes, not an image\n")
    whole = out["red"].read_bytes()
    out["truncated"] = tmp_path / "truncated.png"
    out["truncated"].write_bytes(whole[: len(whole) // 2])
    out["malformed"] = tmp_path / "malformed.json"
    out["malformed"].write_text('{"prompt": "A photo of [1]", "references": [')
    out["invalid"] = tmp_path / "invalid.json"
    out["invalid"].write_text(  # well-formed, but an attribute that does not exist
        json.dumps(
            {
                "format": "sigma-studio/preset",
                "version": 1,
                "prompt": "A photo of [1]",
                "references": [{"slot": 1, "attributes": ["<idd>"]}],
            }
        )
    )
    out["plain"] = tmp_path / "plain.png"  # a PNG that SIGMA Studio did not make
    Image.new("RGB", (64, 64), (0, 128, 0)).save(out["plain"])
    return out
