"""Cancel in the page: the run stops within a step of the click, and the status ends on what
happened last (the run's end), never on the "Cancelling..." reply."""

from __future__ import annotations

import re
import time

from playwright.sync_api import Page, expect

from tests.browser.helpers import compose_one, run_log, set_run, start_run, wait_run


def _shown_step(page: Page) -> int:
    match = re.search(r"step (\d+)/\d+", page.locator("#progress").inner_text())
    return int(match[1]) if match else 0


def test_cancel_stops_within_a_step_and_its_message_does_not_stick(page: Page, pictures) -> None:
    compose_one(page, pictures["blue"], "A portrait of [1]")
    set_run(page, steps=1000, size="1008x1008")
    start_run(page)
    expect(page.locator("#progress")).to_contain_text(re.compile(r"step \d+/"), timeout=120_000)
    clicked_at = _shown_step(page)
    start = time.monotonic()
    page.locator("#cancel").click()
    wait_run(page, "cancelled")
    latency = time.monotonic() - start
    status = page.locator("#progress").inner_text()
    stopped = int(re.search(r"cancelled \D*(\d+)", status)[1])
    assert stopped <= clicked_at + 2, (clicked_at, stopped, latency)
    page.wait_for_timeout(1500)  # a late "Cancelling..." reply would land by now
    assert "Cancelling" not in page.locator("#progress").inner_text()
    assert "cancelled" in page.locator("#progress").inner_text()
    texts = [e["text"] for e in run_log(page)]
    last = texts[-1] if texts else ""
    assert "cancelled" in last, texts[-5:]
