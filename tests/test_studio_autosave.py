"""The draft kept in the browser: it comes back whole, and what the browser sends back is
read as hostile input (only this studio's own image files, known fields, plain types)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from studio import autosave
from studio.forms import Draft, SettingsForm, SlotForm


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "uploads" / "red.png"
    path.parent.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def test_a_stored_draft_comes_back_whole(image: Path) -> None:
    draft = Draft(
        prompt="A photo of [1]",
        slots=(SlotForm(str(image), ("<id>",), "woman", "1, 2, 40, 40"), SlotForm()),
        settings=SettingsForm().replace(num_timesteps=12, seed_mode="random", images_per_run=3),
        name="Red",
    )
    back, notes = autosave.restored(autosave.stored(draft), [image.parent], max_slots=8)
    assert back == draft and notes == []


def test_only_the_studios_own_readable_images_come_back(image: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    text = image.parent / "notes.png"
    text.write_text("not an image")
    link = image.parent / "link.png"
    link.symlink_to(outside)
    values = ["/etc/passwd", str(outside), str(text), str(link), str(image.parent / "gone.png"),
              str(image.parent / ".." / "elsewhere.png"), "x" * 5000, 7]  # fmt: skip
    stored = {"slots": [{"image": v} for v in values] + [{"image": str(image)}]}
    back, notes = autosave.restored(stored, [image.parent], max_slots=16)
    assert [s.image for s in back.slots] == [None] * len(values) + [str(image)]
    assert len(notes) == len(values) and "slot 1: its image is no longer" in notes[0]


def test_malformed_fields_fall_back_to_their_defaults(image: Path) -> None:
    stored = {
        "prompt": "p" * 100_000,
        "name": ["not", "text"],
        "slots": [{"attributes": ["<id>", "<bogus>", 3], "entity": {"a": 1}, "crop": 5}] * 20,
        "settings": {"values": {"num_timesteps": "many", "cfg_text_scale": 3.5, "nope": 1},
                     "seed_mode": "chaos", "images_per_run": 10**9},
    }  # fmt: skip
    back, _ = autosave.restored(stored, [image.parent], max_slots=8)
    defaults = SettingsForm()
    assert back.prompt == "" and back.name == "" and len(back.slots) == 8
    assert back.slots[0] == SlotForm(attributes=("<id>",))
    assert back.settings["num_timesteps"] == defaults["num_timesteps"]
    assert back.settings["cfg_text_scale"] == 3.5
    assert back.settings.seed_mode == defaults.seed_mode
    assert back.settings.images_per_run == defaults.images_per_run


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
    )
)
def test_anything_the_browser_sends_gives_a_draft(value: object) -> None:
    draft, _ = autosave.restored(value, [Path("/nonexistent")], max_slots=8)
    assert isinstance(draft, Draft) and 1 <= len(draft.slots) <= 8
