"""The fixtures the studio's handler tests share (the engine, the reference images), as a pytest
plugin: a test module names it in ``pytest_plugins`` and never imports it (pytest warns about a
plugin imported before it registers it); the helpers are in tests/studio_helpers.py."""

from __future__ import annotations

import pytest
from PIL import Image

from studio.engine import Engine, Sessions, Studio
from studio.options import PRESETS_DIR, StudioOptions
from tests.studio_helpers import tiny_engine


@pytest.fixture(scope="module")
def engine(pipe, tiny_checkpoint) -> Engine:
    return tiny_engine(pipe, tiny_checkpoint)


@pytest.fixture(scope="module")
def studio(pipe, tiny_checkpoint, tmp_path_factory) -> Studio:
    """A whole studio (engine, sessions, options, its files) for building and serving the
    page: the tiny checkpoint, 3 slots, a 60 s time limit."""
    options = StudioOptions(
        model=str(tiny_checkpoint), device="cpu", max_references=3, presets=PRESETS_DIR,
        time_limit_s=60,
    )  # fmt: skip
    files = tmp_path_factory.mktemp("studio-files")
    engine = Engine(pipe, weights="tiny test checkpoint", options=options)
    return Studio(engine, Sessions(), options, files)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    """Small reference images, and files that are not usable images."""
    folder = tmp_path_factory.mktemp("images")
    out = {}
    for name, color, size in (("red", (200, 30, 30), (64, 48)), ("blue", (30, 30, 200), (48, 64))):
        Image.new("RGB", size, color).save(folder / f"{name}.png")
        out[name] = str(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    out["text"] = str(folder / "notes.txt")
    whole = (folder / "red.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    out["truncated"] = str(folder / "cut.png")
    with open(folder / "huge.png", "wb") as f:  # sparse: over the 50 MB limit, nothing written
        f.truncate(51 * 2**20)
    out["huge"] = str(folder / "huge.png")
    return out
