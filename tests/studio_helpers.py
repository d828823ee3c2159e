"""What the studio's handler tests share: fast settings, a two-slot draft, an engine on the
tiny checkpoint, a run's outcome. The fixtures (the engine, the reference images) are in
tests/studio_fixtures.py.

The tests call the handlers' functions without a browser: plain data in, plain data out. Runs
use the tiny random checkpoint of conftest.py, 64x64 outputs and 3 timesteps, so each
generation takes well under a second after the first.
"""

from __future__ import annotations

from studio import runs
from studio.engine import Engine
from studio.forms import Draft, SettingsForm, SlotForm
from studio.options import StudioOptions

FAST = SettingsForm().replace(size="64x64", num_timesteps=3)


def tiny_engine(pipe, checkpoint) -> Engine:
    """An engine on the tiny checkpoint that knows how to load it again (for a switch)."""
    options = StudioOptions(model=str(checkpoint), device="cpu")
    return Engine(pipe, weights="tiny test checkpoint", options=options)


def two_slots(images: dict[str, str], prompt: str = "A photo of [1] holding [2]") -> Draft:
    return Draft(
        prompt=prompt,
        slots=(
            SlotForm(images["red"], ("<id>",), "woman"),
            SlotForm(images["blue"], ("<subject>",), "tabby cat"),
        ),
        settings=FAST,
    )


def finish(items) -> tuple[list[runs.Progress], runs.Outcome]:
    """A run's denoising steps and its outcome (the phases' reports left out)."""
    items = list(items)
    assert isinstance(items[-1], runs.Outcome)
    steps = [i for i in items if isinstance(i, runs.Progress) and i.phase == "denoise"]
    return [p for p in steps if p.step > 0], items[-1]
