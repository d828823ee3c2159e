"""The small things a first look catches: a fresh page that shows how to start instead of
errors, chips whose text reads on their colour, a long paste told rather than cut, a banner
that says a thing once, uploads bounded by the core's image limit."""

from __future__ import annotations

from sigma_core import frontend
from studio import compose, views
from studio.engine import EngineInfo
from studio.forms import Draft, SlotForm

pytest_plugins = ["tests.studio_fixtures"]


def test_a_fresh_page_shows_how_to_start_not_errors(engine):
    fresh = compose.check(engine, Draft())
    assert fresh.untouched and not fresh.problems
    panel = views.problems_panel(fresh)
    assert "✖" not in panel and "drop a reference image into slot 1" in panel
    assert fresh.at("prompt") == ([], [])
    typed = compose.check(engine, Draft(prompt="A red fox [1]", slots=(SlotForm(),)))
    assert not typed.untouched and any("slot 1" in p.message for p in typed.problems)


def test_every_group_colour_has_readable_ink():
    for rgb in frontend.GROUP_COLORS:
        ink = views.ink_for(rgb)
        lum, ink_lum = views.luminance(rgb), 0.0 if ink == "#000" else 1.0
        ratio = (max(lum, ink_lum) + 0.05) / (min(lum, ink_lum) + 0.05)
        assert ratio >= 4.5, (rgb, ink, ratio)  # WCAG AA for normal text
    assert views.ink_for((255, 255, 0)) == "#000" and views.ink_for((0, 0, 128)) == "#fff"


def test_a_long_paste_is_told_by_its_length_not_cut(engine):
    result = compose.check(engine, Draft(prompt="x" * 100_000, slots=(SlotForm(),)))
    assert "prompt: 100,000 characters, over the limit of 4,000" in result.at("prompt")[0][0]


def test_the_preview_banner_says_random_weights_once():
    info = EngineInfo("preview engine (random weights): tiny", True, "fp32", "none", "fp32",
                      "cpu", 2**20)  # fmt: skip
    assert views.banner(info, "1 GiB in use").count("random") == 1


def test_uploads_are_bounded_by_the_cores_image_limit(studio):
    import httpx

    from studio.main import serve

    demo = serve(studio, prevent_thread_lock=True, quiet=True, server_port=None)
    try:
        assert demo.max_file_size == frontend.MAX_IMAGE_BYTES == 50 * 2**20
        url = f"{demo.local_url}gradio_api/upload"
        small = httpx.post(url, files={"files": ("a.png", b"x" * 1000)}, timeout=60)
        assert small.status_code == 200
        big = httpx.post(url, files={"files": ("b.png", b"x" * (51 * 2**20))}, timeout=60)
        assert big.status_code == 413 or "too large" in big.text.lower(), big.text[:200]
    finally:
        demo.close()
