"""The studio's gradio app: the page (:mod:`studio.page`) built, then wired to its handlers
(:mod:`studio.wiring`). ``python app.py`` at the repository root serves it (studio.main)."""

from __future__ import annotations

import gradio as gr

from studio import presets
from studio.engine import Studio
from studio.page import build_page
from studio.wiring import wire


def build_app(studio: Studio) -> gr.Blocks:
    """The page, wired to the handlers; the shipped presets read once, for the page and its
    events alike."""
    preset_entries = presets.list_presets(studio.options.presets)
    with gr.Blocks(title="SIGMA Studio") as demo:
        page = build_page(studio, preset_entries)
        wire(studio, page, demo, preset_entries)
    return demo
