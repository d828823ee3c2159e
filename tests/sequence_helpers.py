"""The compositions shared by tests/test_sequence.py and tests/test_tokenizer.py."""

from __future__ import annotations

from sigma_core import Composition, Reference, Settings

# Image sizes per slot, given to build_plan instead of real files.
SMALL = {1: (512, 512), 2: (640, 480), 3: (300, 900), 4: (1024, 1024)}


def make_comp(prompt: str, settings: Settings | None = None, refs=None) -> Composition:
    """Three slots (<id> the woman, <subject> the dog, <background>) unless ``refs`` says."""
    refs = refs if refs is not None else [
        Reference(1, "one.png", ("<id>",), "the woman"),
        Reference(2, "two.png", ("<subject>",), "the dog"),
        Reference(3, "three.png", ("<background>",), ""),
    ]  # fmt: skip
    return Composition(prompt, refs, settings or Settings())
