"""The arms of an ablation (``--vary KEY=A,B``): each changes only what it names.

The paper's ablation table compares the full model with one change at a time, so several
``--vary`` keys give one arm per key and value (never their cross product): ``--vary mask=on,off
--vary tokens=on,off`` runs mask=on, mask=off, tokens=on and tokens=off, each with the other
keys as the preset (and the engine options) say. Without ``--vary`` there is one arm, "base".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sigma_core.errors import SigmaInputError
from sigma_core.inputs.attributes import strip_tokens
from sigma_core.inputs.composition import Composition
from sigma_core.inputs.settings import LAYOUTS
from sigma_core.model.modes import PRECISIONS

ON_OFF = ("on", "off")
VARY: dict[str, tuple[str, ...]] = {
    "mask": ON_OFF,
    "attribute_projection": ON_OFF,
    "tokens": ON_OFF,  # off: the same prompt with its attribute tokens stripped
    "layout": tuple(LAYOUTS),
    "precision": PRECISIONS,  # an engine mode: the engine loads once per precision
}
_SETTINGS = ("mask", "attribute_projection", "layout")


@dataclass(frozen=True)
class Arm:
    """One arm: its name ("base" or "key=value") and what it changes."""

    name: str
    vary: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        """run.json's form of the arm."""
        return {"name": self.name, "vary": dict(self.vary)}

    def precision(self, default: str) -> str:
        """The engine precision this arm runs in (``default``: the --precision given)."""
        return self.vary.get("precision", default)

    def apply(self, comp: Composition) -> Composition:
        """``comp`` with this arm's change, and nothing else changed."""
        changes: dict[str, Any] = {}
        for key in _SETTINGS:
            if key in self.vary:
                value = self.vary[key]
                changes[key] = value if key == "layout" else value == "on"
        if changes:
            comp = replace(comp, settings=comp.settings.replace(**changes))
        if self.vary.get("tokens") == "off":
            comp = replace(comp, prompt=strip_tokens(comp.raw_prompt()[0]))
        return comp


def parse_arms(vary: list[str]) -> tuple[Arm, ...]:
    """The arms ``--vary KEY=A,B`` (repeatable) asks for, in the order given; each key and
    value is checked, and a key given twice or a value repeated is refused."""
    if not vary:
        return (Arm("base", {}),)
    arms: list[Arm] = []
    seen: set[str] = set()
    for text in vary:
        key, sep, values = text.partition("=")
        if not sep or key not in VARY:
            raise SigmaInputError(
                f"--vary {text[:60]!r}: expected KEY=A,B with KEY one of {', '.join(VARY)}"
            )
        if key in seen:
            raise SigmaInputError(f"--vary: {key} is given twice; list its values once: {key}=A,B")
        seen.add(key)
        names = values.split(",")
        for value in names:
            if value not in VARY[key]:
                raise SigmaInputError(
                    f"--vary {key}: {value[:40]!r} is not one of {', '.join(VARY[key])}"
                )
            if names.count(value) > 1:
                raise SigmaInputError(f"--vary {key}: {value} is listed twice")
        arms += [Arm(f"{key}={value}", {key: value}) for value in names]
    return tuple(arms)
