"""The studio's HTTP API (``/generate``, ``/inspect``, ``/validate_preset``): preset JSON in,
plain data out. A preset given here may embed its images or name the shipped assets; paths on
the server are never read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import sigma_core
from sigma_core import Composition, SigmaError, frontend
from studio.engine import Engine, Sessions
from studio.runs import Outcome, Progress, result_file, stream


class RunFailed(SigmaError):
    """A run through the API that made no image: cancelled, out of memory, an engine error."""


def read_preset(text: str) -> Composition:
    """A preset from an API caller: relative image paths resolve in the shipped assets only."""
    if not isinstance(text, str) or not text.strip():
        raise sigma_core.PresetError("preset: expected the preset's JSON text")
    return frontend.loads_preset(text, where="preset")


def api_generate(
    engine: Engine, sessions: Sessions, session: str, preset: str, *, files: Path,
    time_limit_s: float,
) -> Iterator[Progress | tuple[str, dict[str, Any]]]:  # fmt: skip
    """Generate a preset: its progress (the newest step each time the caller takes one), then
    the PNG (its composition embedded) and what it was made with. Closing this generator (the
    caller cancelled, or went away) stops the run within a step."""
    comp = read_preset(preset)
    outcome = Outcome()
    items = stream(engine, sessions, session, comp, files=files, time_limit_s=time_limit_s)
    with closing(items):
        for item in items:
            if isinstance(item, Outcome):
                outcome = item
            else:
                yield item
    if outcome.error or not outcome.entries:
        raise RunFailed(outcome.error or "the run made no image")
    entry = outcome.entries[0]
    path = result_file(entry, files)
    if path is None:  # saved a moment ago; only a cleaner racing us could remove it
        raise RunFailed("the result was removed before it could be sent")
    meta = {
        k: entry[k]
        for k in ("seed", "size", "settings", "timings", "references", "preview", "warnings")
    }
    yield str(path), {**meta, "name": comp.name, "prompt": comp.prompt, "file": entry["file"]}


def api_inspect(engine: Engine, preset: str) -> dict[str, Any]:
    """The interleaved sequence the engine would run, as ``python -m sigma_core inspect
    --json`` reports it (with this engine's tokenizer)."""
    comp = read_preset(preset)
    return frontend.plan_report(engine.plan(comp, comp.load_images()), comp)


def api_validate_preset(engine: Engine, preset: str) -> dict[str, Any]:
    """Whether a preset would run here: every problem, or the plan's size, warnings and
    layout (the one it runs in: what "auto" means with these weights)."""
    try:
        comp = read_preset(preset)
        plan = engine.plan(comp, comp.load_images())
    except SigmaError as e:
        return {"valid": False, "problems": str(e).splitlines(), "warnings": []}
    return {
        "valid": True,
        "problems": [],
        "warnings": list(plan.warnings),
        "tokens": plan.length,
        "output_size": list(plan.output_size),
        "layout": plan.layout,
    }
