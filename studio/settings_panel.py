"""The settings panel: one control per sampling setting, made from sigma_core's spec table.

Labels, help, bounds, steps, choices and defaults are the core's (``frontend.SETTING_SPECS``),
so a control never offers what the core refuses. This module only picks the kind of control
for each kind of setting and arranges them in rows; the studio adds its own two controls, the
seed mode and the images per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio.forms import MAX_IMAGES_PER_RUN, SEED_MODES, SIZE_CHOICES, SPECS, SettingsForm

# How the panel arranges the settings (every setting once; a test holds it to the table)
ROWS: tuple[tuple[str, ...], ...] = (
    ("size", "num_timesteps"),
    ("cfg_text_scale", "cfg_img_scale"),
    ("cfg_interval", "timestep_shift"),
    ("cfg_renorm_type", "cfg_renorm_min"),
    ("seed",),
    ("mask", "attribute_projection"),
    ("layout",),
)


def elem_id(name: str) -> str:
    """A setting's control id: its CLI flag where it has one (steps, seed...), else its name."""
    spec = SPECS[name]
    return spec.flag or name.replace("_", "-")


@dataclass(frozen=True)
class SettingsControls:
    """The panel's controls by setting name (an interval has two sliders, start and end)."""

    by_name: dict[str, tuple[gr.components.Component, ...]]
    seed_mode: gr.Radio
    images_per_run: gr.Slider

    def __getitem__(self, name: str) -> gr.components.Component:
        return self.by_name[name][0]

    @property
    def values(self) -> list[gr.components.Component]:
        """Every control, in the order :meth:`form_of` reads and :meth:`values_of` writes."""
        return [c for controls in self.by_name.values() for c in controls] + [
            self.seed_mode,
            self.images_per_run,
        ]

    def form_of(self, data: dict[Any, Any]) -> SettingsForm:
        """The form the controls hold (``data``: value by control, as gradio passes them)."""
        values = {
            name: data[controls[0]] if len(controls) == 1 else tuple(data[c] for c in controls)
            for name, controls in self.by_name.items()
        }
        return SettingsForm(
            values=values,
            seed_mode=data[self.seed_mode],
            images_per_run=data[self.images_per_run],
        )

    def values_of(self, form: SettingsForm) -> list[Any]:
        """Each control's value for ``form``, in :attr:`values`' order."""
        out: list[Any] = []
        for name, controls in self.by_name.items():
            out += [form[name]] if len(controls) == 1 else list(form[name])
        return [*out, form.seed_mode, form.images_per_run]


def settings_controls(defaults: SettingsForm | None = None) -> SettingsControls:
    """Build the panel's rows inside the current Blocks context."""
    defaults = defaults or SettingsForm()
    by_name: dict[str, tuple[gr.components.Component, ...]] = {}
    seed_mode = images_per_run = None
    for row in ROWS:
        with gr.Row():
            for name in row:
                if name == "seed":
                    seed_mode = gr.Radio(
                        list(SEED_MODES), value=defaults.seed_mode, label="Seed",
                        elem_id="seed-mode",
                    )  # fmt: skip
                by_name[name] = _controls(name, defaults[name])
                if name == "seed":
                    images_per_run = gr.Slider(
                        1, MAX_IMAGES_PER_RUN, value=defaults.images_per_run, step=1,
                        label="Images per run (seed, seed+1 ...)", elem_id="images-per-run",
                    )  # fmt: skip
    assert seed_mode is not None and images_per_run is not None
    return SettingsControls(by_name, seed_mode, images_per_run)


def _controls(name: str, value: Any) -> tuple[gr.components.Component, ...]:
    """The control(s) for one setting, by the kind its spec gives."""
    spec, key = SPECS[name], elem_id(name)
    common = {"label": spec.label, "info": spec.help, "elem_id": key}
    if spec.kind == "size":
        return (gr.Dropdown(list(SIZE_CHOICES), value=value, allow_custom_value=True, **common),)
    if spec.kind in ("int", "number"):
        return (gr.Slider(spec.low, spec.high, value=value, step=spec.step, **common),)
    if spec.kind == "interval":
        return tuple(
            gr.Slider(
                spec.low, spec.high, value=v, step=spec.step, label=f"{spec.label}: {end} t",
                info=spec.help, elem_id=f"{key}-{end}",
            )
            for end, v in zip(("from", "to"), value, strict=True)
        )  # fmt: skip
    if spec.kind == "choice":
        return (gr.Dropdown(list(spec.choices), value=value, **common),)
    if spec.kind == "seed":
        return (gr.Textbox(value=value, **{**common, "label": "Seed value"}),)
    return (gr.Checkbox(value=value, **common),)
