"""The README's Hugging Face Space front matter agrees with the project."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _front_matter() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "the README must start with the Space's front matter"
    block = text[4 : text.index("\n---\n", 4)]
    return dict(re.findall(r"^(\w+): ?(.*)$", block, flags=re.MULTILINE))


def test_sdk_version_is_the_pinned_gradio() -> None:
    meta = _front_matter()
    pin = re.search(r"^gradio==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pin, "requirements.txt must pin gradio exactly (the Space's sdk_version)"
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pin[1]


def test_space_points_at_the_app_and_the_weights() -> None:
    meta = _front_matter()
    assert (ROOT / meta["app_file"]).is_file()
    assert meta["python_version"].strip('"').startswith("3.")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "  - ByteDance-Seed/BAGEL-7B-MoT llm_config.json," in text  # preload_from_hub
    for name in ("suggested_hardware", "models", "preload_from_hub", "license"):
        assert name in meta
