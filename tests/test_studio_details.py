"""The small things a first look catches: a fresh page that shows how to start instead of
errors, chips whose text reads on their colour, a long paste told rather than cut, a banner
that says a thing once, uploads bounded by the core's image limit."""

from __future__ import annotations

import tempfile

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


def test_messages_never_show_this_machines_folders(tmp_path) -> None:
    """A missing file is named, its folder on the server is not (before: the install path and
    /tmp/gradio/... showed in toasts and under slots)."""
    from pathlib import Path

    from studio import slots, views

    root = Path(views.__file__).resolve().parents[1]
    missing = root / "assets" / "nope.png"
    _, note = slots.check_upload(2, str(missing), None)
    shown = views.messages([note], [])
    assert str(root) not in shown and "…/assets/nope.png" in shown
    upload = Path(tempfile.gettempdir()) / "gradio" / "abc123" / "notes.png"
    assert (
        views.redact(f"file not found: '{upload}'") == "file not found: '…/gradio/abc123/notes.png'"
    )
    assert views.redact("a plain message, 5/8 done") == "a plain message, 5/8 done"


def test_background_removal_says_what_to_install_when_it_cannot_run(tmp_path) -> None:
    """No rembg model on this machine (as in CI): the core's message, naming what to install."""
    import pytest
    from PIL import Image

    from sigma_core import SigmaInputError, frontend
    from studio import slots
    from studio.forms import SlotForm

    if frontend.background_removal_available()[0]:
        pytest.skip("rembg and its model are installed here")  # never in CI
    path = tmp_path / "cat.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(path)
    with pytest.raises(SigmaInputError, match="rembg"):
        slots.without_background(SlotForm(image=str(path)), 2, tmp_path / "files")
    assert not (tmp_path / "files").exists()


def test_a_removed_background_becomes_the_slots_image_file(tmp_path, monkeypatch) -> None:
    """With a faked remover (rembg's model cannot be shipped): the result is written by
    content into the studio's files and the note says how to go back."""
    from PIL import Image

    from sigma_core import frontend
    from studio import slots
    from studio.forms import SlotForm

    path = tmp_path / "cat.png"
    Image.new("RGB", (64, 48), (10, 200, 10)).save(path)
    monkeypatch.setattr(
        frontend, "remove_background", lambda image, name: Image.new("RGB", (64, 48), "white")
    )
    new, note = slots.without_background(SlotForm(image=str(path)), 2, tmp_path / "files")
    assert new.startswith(str(tmp_path / "files" / "backgrounds")) and new.endswith(".png")
    with Image.open(new) as im:
        assert im.size == (64, 48) and im.getpixel((0, 0)) == (255, 255, 255)
    assert note == "slot 2: background removed; drop the original in again to go back"
    again, _ = slots.without_background(SlotForm(image=str(path)), 2, tmp_path / "files")
    assert again == new  # by content: one file
