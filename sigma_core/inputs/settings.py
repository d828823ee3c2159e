"""Sampling settings: SIGMA's defaults, their bounds and the one place they are checked.

Settings are frozen and validated when made, so whoever holds one holds a valid one: change a
value with :meth:`Settings.replace`, which validates again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sigma_core.errors import PresetError
from sigma_core.geometry import MAX_SIDE, MIN_SIDE, TOKEN_STRIDE
from sigma_core.inputs.fields import (
    Problems,
    check_keys,
    did_you_mean,
    is_int,
    is_number,
    is_pair,
    kind_of,
    shown,
)
from sigma_core.limits import (
    MAX_CFG_SCALE,
    MAX_SEED,
    MAX_SHIFT,
    MAX_TIMESTEPS,
    MIN_SHIFT,
    MIN_TIMESTEPS,
)

RENORM_TYPES = ("global", "channel", "text_channel")
FOLLOW_LAST_REFERENCE = "last-reference"
# Sequence layouts (what each does: sigma_core.planning.layout). "auto" is the layout the weights
# were trained in, as their model card records it, and SIGMA's released inferencer otherwise.
LAYOUTS = ("inference", "training", "training-no-vit")
AUTO_LAYOUT = "auto"
LAYOUT_CHOICES = (AUTO_LAYOUT, *LAYOUTS)
LAYOUT_DESCRIPTIONS = {
    "auto": "the layout the weights were trained in (their model card), else inference",
    "inference": "SIGMA's released inferencer: rope +1 per reference (the default)",
    "training": "SIGMA's training sequence: rope +2 per reference and a phantom ViT block",
    "training-no-vit": "SIGMA's training rope (+2 per reference) without the phantom block",
}


@dataclass(frozen=True)
class Settings:
    """Sampling settings. Defaults are those of SIGMA's inference code."""

    size: tuple[int, int] | None = None  # (width, height); None follows the last reference
    num_timesteps: int = 50
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 2.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    timestep_shift: float = 3.0
    cfg_renorm_type: str = "text_channel"
    cfg_renorm_min: float = 0.0
    seed: int | None = 42  # None draws a fresh seed per run
    mask: bool = True  # SIGMA's intra-group attention mask
    attribute_projection: bool = True  # W_tau; a no-op for checkpoints without it
    layout: str = AUTO_LAYOUT  # one of LAYOUT_CHOICES; "auto" is "inference" for SIGMA's weights

    def __post_init__(self) -> None:
        for name in ("size", "cfg_interval"):  # JSON and callers give lists
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        problems = self.problems()
        if problems:
            raise PresetError("\n".join(problems))

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated; unknown names are refused."""
        unknown = sorted(set(changes) - set(SETTINGS_FIELDS))
        if unknown:
            raise PresetError(
                f"settings.{unknown[0]}: unknown setting{did_you_mean(unknown[0], SETTINGS_FIELDS)}"
            )
        return dataclasses.replace(self, **changes)

    def problems(self, prefix: str = "settings") -> list[str]:
        """Every invalid value, each with its field path and the fix."""
        out: list[str] = []
        for check in _CHECKS:
            out += [f"{prefix}.{line}" for line in check(self)]
        return out

    def to_dict(self) -> dict[str, Any]:
        """As written in a preset's "settings" object."""
        return {
            "size": list(self.size) if self.size is not None else FOLLOW_LAST_REFERENCE,
            "num_timesteps": self.num_timesteps,
            "cfg_text_scale": float(self.cfg_text_scale),
            "cfg_img_scale": float(self.cfg_img_scale),
            "cfg_interval": [float(self.cfg_interval[0]), float(self.cfg_interval[1])],
            "timestep_shift": float(self.timestep_shift),
            "cfg_renorm_type": self.cfg_renorm_type,
            "cfg_renorm_min": float(self.cfg_renorm_min),
            "seed": self.seed,
            "mask": self.mask,
            "attribute_projection": self.attribute_projection,
            "layout": self.layout,
        }

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> Settings:
        """Parse a preset's "settings" object; problems are added to ``problems``."""
        if not isinstance(raw, dict):
            problems.add("settings", f"expected an object, got {kind_of(raw)}")
            return cls()
        check_keys(raw, SETTINGS_FIELDS, "settings.", problems)
        values = {k: raw[k] for k in SETTINGS_FIELDS if k in raw}
        if values.get("size", FOLLOW_LAST_REFERENCE) in (FOLLOW_LAST_REFERENCE, None):
            values["size"] = None
        try:
            return cls(**values)
        except PresetError as e:
            problems.items.extend(str(e).splitlines())
            return cls()


SETTINGS_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Settings))


def _check_size(s: Settings) -> list[str]:
    if s.size is None:
        return []
    if not is_pair(s.size, int):
        return [f"size: expected [width, height] or '{FOLLOW_LAST_REFERENCE}'"]
    return [
        f"size: {axis} {v} must be a multiple of {TOKEN_STRIDE} between {MIN_SIDE} and {MAX_SIDE}"
        for axis, v in zip(("width", "height"), s.size, strict=True)
        if v % TOKEN_STRIDE or not MIN_SIDE <= v <= MAX_SIDE
    ]


def _check_steps(s: Settings) -> list[str]:
    if not is_int(s.num_timesteps) or not MIN_TIMESTEPS <= s.num_timesteps <= MAX_TIMESTEPS:
        return [
            f"num_timesteps: {shown(s.num_timesteps)} must be an integer from {MIN_TIMESTEPS} "
            f"to {MAX_TIMESTEPS}"
        ]
    return []


def _check_scales(s: Settings) -> list[str]:
    bounds = {"cfg_text_scale": MAX_CFG_SCALE, "cfg_img_scale": MAX_CFG_SCALE, "cfg_renorm_min": 1}
    return [
        f"{name}: {shown(getattr(s, name))} must be a number from 0 to {top}"
        for name, top in bounds.items()
        if not is_number(getattr(s, name)) or not 0 <= getattr(s, name) <= top
    ]


def _check_interval(s: Settings) -> list[str]:
    iv = s.cfg_interval
    if not is_pair(iv, (int, float)) or not all(map(is_number, iv)) or not 0 <= iv[0] <= iv[1] <= 1:
        return [f"cfg_interval: {shown(iv)} must be [start, end] with 0 <= start <= end <= 1"]
    return []


def _check_shift(s: Settings) -> list[str]:
    if not is_number(s.timestep_shift) or not MIN_SHIFT <= s.timestep_shift <= MAX_SHIFT:
        return [
            f"timestep_shift: {shown(s.timestep_shift)} must be a number from {MIN_SHIFT} "
            f"to {MAX_SHIFT}"
        ]
    return []


def _check_renorm_type(s: Settings) -> list[str]:
    if s.cfg_renorm_type not in RENORM_TYPES:
        return [
            f"cfg_renorm_type: {shown(s.cfg_renorm_type)} is not one of {', '.join(RENORM_TYPES)}"
            + did_you_mean(s.cfg_renorm_type, RENORM_TYPES)
        ]
    return []


def _check_layout(s: Settings) -> list[str]:
    if s.layout not in LAYOUT_CHOICES:
        return [
            f"layout: {shown(s.layout)} is not one of {', '.join(LAYOUT_CHOICES)}"
            + did_you_mean(s.layout, LAYOUT_CHOICES)
        ]
    return []


def _check_seed(s: Settings) -> list[str]:
    if s.seed is not None and (not is_int(s.seed) or not 0 <= s.seed < MAX_SEED):
        return [f"seed: {shown(s.seed)} must be null (random) or 0 <= seed < 2^63"]
    return []


def _check_flags(s: Settings) -> list[str]:
    return [
        f"{name}: {shown(getattr(s, name))} must be true or false"
        for name in ("mask", "attribute_projection")
        if not isinstance(getattr(s, name), bool)
    ]


_CHECKS = (
    _check_size,
    _check_steps,
    _check_scales,
    _check_interval,
    _check_shift,
    _check_renorm_type,
    _check_layout,
    _check_seed,
    _check_flags,
)
