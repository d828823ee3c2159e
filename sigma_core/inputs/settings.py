"""Sampling settings: one table of specs, and the frozen, validated :class:`Settings` built on it.

Each setting is written out once, in :data:`SETTING_SPECS` (name, kind, label, help, bounds,
step, default, CLI flag). The settings' validation, the preset parser, the studio's controls and
the CLI's flags are all made from that table, so a bound or a default never differs between
them. Settings are frozen and validated when made: whoever holds one holds a valid one; change a
value with :meth:`Settings.replace`, which validates again.

The sequence layouts (what each does: :mod:`sigma_core.planning.layout`) are specified here too,
as :data:`LAYOUTS`: a layout is a setting, and everything that offers one reads this table.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sigma_core.errors import PresetError, SigmaInputError
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

FOLLOW_LAST_REFERENCE = "last-reference"  # settings.size: the last reference's VAE size


# ------------------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class Layout:
    """A sequence layout: where reference blocks sit (see sigma_core.planning.layout)."""

    name: str
    description: str
    rope_per_reference: int  # 1: SIGMA's released inferencer; 2: SIGMA's training code
    phantom: bool  # a phantom ViT block after each reference's VAE block

    @property
    def keeps_holes(self) -> bool:
        """Whether a context without the references keeps their rope positions (cfg_img)."""
        return self.rope_per_reference > 1


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("inference", "SIGMA's released inferencer: rope +1 per reference", 1, False),
        Layout(
            "training",
            "SIGMA's training sequence: rope +2 per reference and a phantom ViT block",
            2,
            True,
        ),
        Layout(
            "training-no-vit",
            "SIGMA's training rope (+2 per reference) without the phantom block",
            2,
            False,
        ),
    )
}
DEFAULT_LAYOUT = "inference"  # what "auto" means for weights without a recorded layout
AUTO_LAYOUT = "auto"  # the layout the weights were trained in (their model card), else default
AUTO_DESCRIPTION = "the layout the weights were trained in (their model card), else inference"
LAYOUT_CHOICES = (AUTO_LAYOUT, *LAYOUTS)


def describe_layout(name: str) -> str:
    """One line on what a layout choice lays out, "auto" included."""
    return AUTO_DESCRIPTION if name == AUTO_LAYOUT else LAYOUTS[name].description


def resolve_layout(setting: str, weights_layout: str | None = None) -> Layout:
    """The layout a run uses: the setting, or for "auto" the one the weights were trained in
    (``weights_layout``, from their model card), else SIGMA's released inferencer."""
    if setting == AUTO_LAYOUT:
        setting = weights_layout or DEFAULT_LAYOUT
    return LAYOUTS[setting]


def check_layout_name(value: Any, field: str = "layout", *, auto: bool = False) -> str:
    """``value`` as a layout name, or a SigmaInputError naming ``field`` (a list of names
    included); ``auto`` also accepts "auto"."""
    names = LAYOUT_CHOICES if auto else tuple(LAYOUTS)
    if not isinstance(value, str) or value not in names:
        raise SigmaInputError(
            f"{field}: {shown(value, 40)} is not one of {', '.join(names)}"
            + did_you_mean(value, names)
        )
    return value


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class SettingSpec:
    """One sampling setting, everything every front end needs to offer and check it.

    ``kind`` picks the check and the control: "size" (a [width, height] pair or None, for the
    last reference), "int", "number", "interval" (a [start, end] pair in [low, high]),
    "choice", "seed" (None for a random seed per run) or "bool". ``flag`` is the CLI option
    of ``generate`` that sets it, if any.
    """

    name: str
    kind: str
    label: str
    help: str
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` ("name: message"), or None when it is valid."""
        return _PROBLEMS[self.kind](self, value)

    def parse(self, text: str) -> Any:
        """A value typed as text (a CLI flag, a text box), checked for its form only: bounds
        are :meth:`problem`'s. A SigmaInputError names the setting."""
        return _PARSERS.get(self.kind, _as_is)(self, text.strip())

    def text(self, value: Any) -> str:
        """``value`` as :meth:`parse` reads it back ("" for a random seed)."""
        if self.kind == "size":
            return size_text(value)
        return "" if value is None else str(value)

    def bounds(self) -> tuple[float, float]:
        """(low, high) of an "int", "number" or "interval" setting; other kinds have none."""
        if self.low is None or self.high is None:
            raise ValueError(f"{self.name}: a {self.kind} setting has no bounds")
        return self.low, self.high

    def bounds_text(self) -> str:
        """The bounds as users read them, e.g. "2 to 1000"."""
        return f"{self.low:g} to {self.high:g}" if self.low is not None else ""


RENORM_TYPES = ("global", "channel", "text_channel")

SETTING_SPECS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "size", "size", "Size",
        f"output WIDTHxHEIGHT, multiples of {TOKEN_STRIDE} from {MIN_SIDE} to {MAX_SIDE}, or "
        f"'{FOLLOW_LAST_REFERENCE}' (the last reference's VAE size, as BAGEL does)",
        None, MIN_SIDE, MAX_SIDE, TOKEN_STRIDE, flag="size",
    ),
    SettingSpec(
        "num_timesteps", "int", "Timesteps",
        "N timesteps make N-1 Euler steps", 50, MIN_TIMESTEPS, MAX_TIMESTEPS, 1, flag="steps",
    ),
    SettingSpec(
        "cfg_text_scale", "number", "Text guidance (cfg_text)",
        "classifier-free guidance on the text", 4.0, 0, MAX_CFG_SCALE, 0.1,
    ),
    SettingSpec(
        "cfg_img_scale", "number", "Image guidance (cfg_img)",
        "classifier-free guidance on the references", 2.0, 0, MAX_CFG_SCALE, 0.1,
    ),
    SettingSpec(
        "cfg_interval", "interval", "Guidance interval",
        "guidance applies for t in [start, end]", (0.0, 1.0), 0, 1, 0.05,
    ),
    SettingSpec(
        "timestep_shift", "number", "Timestep shift",
        "shifts the schedule toward high noise", 3.0, MIN_SHIFT, MAX_SHIFT, 0.05,
    ),
    SettingSpec(
        "cfg_renorm_type", "choice", "CFG renorm",
        "how the guided velocity is renormalised", "text_channel", choices=RENORM_TYPES,
    ),
    SettingSpec(
        "cfg_renorm_min", "number", "Renorm min",
        "the renormalisation's lower bound", 0.0, 0, 1, 0.05,
    ),
    SettingSpec(
        "seed", "seed", "Seed", "0 to 2^63 - 1 (a preset's null draws one per run)", 42,
        flag="seed",
    ),
    SettingSpec(
        "mask", "bool", "SIGMA's attention mask (attribute tokens see only their own image)",
        "on: an attribute token never sees another reference's image, B = (C and M) or S",
        True,
    ),
    SettingSpec(
        "attribute_projection", "bool",
        "W_tau attribute projection (no-op for checkpoints without it)",
        "adds W_tau(attributes) to each reference's latent tokens, as SIGMA trains it", True,
    ),
    SettingSpec(
        "layout", "choice", "Sequence layout",
        "; ".join(f"{name}: {describe_layout(name)}" for name in LAYOUT_CHOICES),
        AUTO_LAYOUT, choices=LAYOUT_CHOICES, flag="layout",
    ),
)  # fmt: skip
SPECS: dict[str, SettingSpec] = {spec.name: spec for spec in SETTING_SPECS}
SETTINGS_FIELDS: tuple[str, ...] = tuple(SPECS)


def _default(name: str) -> Any:
    return SPECS[name].default


@dataclass(frozen=True)
class Settings:
    """Sampling settings. Defaults are those of SIGMA's inference code (see SETTING_SPECS)."""

    size: tuple[int, int] | None = _default("size")  # (width, height); None: the last reference
    num_timesteps: int = _default("num_timesteps")
    cfg_text_scale: float = _default("cfg_text_scale")
    cfg_img_scale: float = _default("cfg_img_scale")
    cfg_interval: tuple[float, float] = _default("cfg_interval")
    timestep_shift: float = _default("timestep_shift")
    cfg_renorm_type: str = _default("cfg_renorm_type")
    cfg_renorm_min: float = _default("cfg_renorm_min")
    seed: int | None = _default("seed")  # None draws a fresh seed per run
    mask: bool = _default("mask")  # SIGMA's intra-group attention mask
    attribute_projection: bool = _default("attribute_projection")  # W_tau; a no-op without it
    layout: str = _default("layout")  # a LAYOUT_CHOICES name; "auto" follows the weights

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
        found = (spec.problem(getattr(self, spec.name)) for spec in SETTING_SPECS)
        return [f"{prefix}.{line}" for text in found if text for line in text.splitlines()]

    def to_dict(self) -> dict[str, Any]:
        """As written in a preset's "settings" object."""
        return {spec.name: _to_json(spec, getattr(self, spec.name)) for spec in SETTING_SPECS}

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


assert tuple(f.name for f in dataclasses.fields(Settings)) == SETTINGS_FIELDS


def _to_json(spec: SettingSpec, value: Any) -> Any:
    if spec.kind == "size":
        return FOLLOW_LAST_REFERENCE if value is None else list(value)
    if spec.kind == "interval":
        return [float(value[0]), float(value[1])]
    return float(value) if spec.kind == "number" else value


# ------------------------------------------------------------------------------ checks


def _size_problem(spec: SettingSpec, size: Any) -> str | None:
    if size is None:
        return None
    if not is_pair(size, int):
        return f"{spec.name}: expected [width, height] or '{FOLLOW_LAST_REFERENCE}'"
    wrong = [
        f"{axis} {v} must be a multiple of {TOKEN_STRIDE} between {MIN_SIDE} and {MAX_SIDE}"
        for axis, v in zip(("width", "height"), size, strict=True)
        if v % TOKEN_STRIDE or not MIN_SIDE <= v <= MAX_SIDE
    ]
    return "\n".join(f"{spec.name}: {line}" for line in wrong) or None


def _int_problem(spec: SettingSpec, v: Any) -> str | None:
    low, high = spec.bounds()
    if is_int(v) and low <= v <= high:
        return None
    return f"{spec.name}: {shown(v)} must be an integer from {low} to {high}"


def _number_problem(spec: SettingSpec, v: Any) -> str | None:
    low, high = spec.bounds()
    if is_number(v) and low <= v <= high:
        return None
    return f"{spec.name}: {shown(v)} must be a number from {low} to {high}"


def _interval_problem(spec: SettingSpec, iv: Any) -> str | None:
    numbers = is_pair(iv, (int, float)) and all(map(is_number, iv))
    low, high = spec.bounds()
    if numbers and low <= iv[0] <= iv[1] <= high:
        return None
    return f"{spec.name}: {shown(iv)} must be [start, end] with {low} <= start <= end <= {high}"


def _choice_problem(spec: SettingSpec, v: Any) -> str | None:
    if isinstance(v, str) and v in spec.choices:
        return None
    return f"{spec.name}: {shown(v)} is not one of {', '.join(spec.choices)}" + did_you_mean(
        v, spec.choices
    )


def _seed_problem(spec: SettingSpec, v: Any) -> str | None:
    if v is None or (is_int(v) and 0 <= v < MAX_SEED):
        return None
    return f"{spec.name}: {shown(v)} must be null (random) or 0 <= seed < 2^63"


def _bool_problem(spec: SettingSpec, v: Any) -> str | None:
    return None if isinstance(v, bool) else f"{spec.name}: {shown(v)} must be true or false"


_PROBLEMS: dict[str, Callable[[SettingSpec, Any], str | None]] = {
    "size": _size_problem,
    "int": _int_problem,
    "number": _number_problem,
    "interval": _interval_problem,
    "choice": _choice_problem,
    "seed": _seed_problem,
    "bool": _bool_problem,
}


# ------------------------------------------------------------------------------ text


def parse_size(text: str, field: str = "settings.size") -> tuple[int, int] | None:
    """ "WIDTHxHEIGHT" (or "W×H") as (width, height), or None for "last-reference" or empty;
    the bounds are the settings' to check. A SigmaInputError names ``field``."""
    text = str(text).strip()
    if text in (FOLLOW_LAST_REFERENCE, ""):
        return None
    match = re.fullmatch(r"(\d{1,5})\s*[xX×]\s*(\d{1,5})", text)
    if not match:
        raise SigmaInputError(
            f"{field}: {text[:40]!r} is not WIDTHxHEIGHT (e.g. 1024x768) or "
            f"'{FOLLOW_LAST_REFERENCE}'"
        )
    return int(match[1]), int(match[2])


def size_text(size: tuple[int, int] | None) -> str:
    """What :func:`parse_size` reads back: "WxH", or "last-reference"."""
    return FOLLOW_LAST_REFERENCE if size is None else f"{size[0]}x{size[1]}"


def _parse_whole(spec: SettingSpec, text: str) -> int:
    """A whole number as text: digits only (browsers round integers past 2^53, seeds reach
    2^63), at most 19 of them, so a huge paste is refused before int() reads it."""
    if not re.fullmatch(r"\d{1,19}", text):
        raise SigmaInputError(
            f"settings.{spec.name}: {text[:30]!r} is not a whole number"
            + (f" from {spec.bounds_text()}" if spec.low is not None else "")
        )
    return int(text)


def _parse_number(spec: SettingSpec, text: str) -> float:
    try:
        return float(text[:40])
    except ValueError:
        raise SigmaInputError(f"settings.{spec.name}: {text[:30]!r} is not a number") from None


def _as_is(spec: SettingSpec, text: str) -> str:
    return text


_PARSERS: dict[str, Callable[[SettingSpec, str], Any]] = {
    "size": lambda spec, text: parse_size(text, f"settings.{spec.name}"),
    "int": _parse_whole,
    "seed": _parse_whole,
    "number": _parse_number,
}


def settings_from_text(values: dict[str, str], base: Settings | None = None) -> Settings:
    """``base`` (default settings when None) with the named settings given as text, e.g. the
    CLI's flags: each parsed by its spec, then all checked as a preset's values are."""
    changes = {name: SPECS[name].parse(text) for name, text in values.items()}
    return (base or Settings()).replace(**changes)
