"""The settings' spec table: the one place a setting's bounds, default and words live."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, strategies as st

from sigma_core import SigmaInputError
from sigma_core.cli import build_parser
from sigma_core.errors import PresetError
from sigma_core.inputs.settings import (
    LAYOUT_CHOICES,
    LAYOUTS,
    SETTING_SPECS,
    SPECS,
    Settings,
    check_layout_name,
    parse_size,
    resolve_layout,
    settings_from_text,
    size_text,
)


def test_the_table_is_the_dataclass():
    fields = dataclasses.fields(Settings)
    assert [f.name for f in fields] == [s.name for s in SETTING_SPECS]
    assert all(f.default == SPECS[f.name].default for f in fields)
    assert Settings().problems() == []


@pytest.mark.parametrize("spec", [s for s in SETTING_SPECS if s.kind in ("int", "number")])
def test_bounds_are_inclusive_and_checked(spec):
    for value in (spec.low, spec.high):
        Settings().replace(**{spec.name: value})
    step = 1 if spec.kind == "int" else 1e-3
    for value in (spec.low - step, spec.high + step):
        with pytest.raises(PresetError, match=rf"settings\.{spec.name}: .* from {spec.low} to"):
            Settings().replace(**{spec.name: value})


def test_every_problem_is_reported_with_its_field():
    with pytest.raises(PresetError) as info:
        Settings(size=(65, 2000), num_timesteps=1, cfg_interval=(0.5, 0.2), mask="yes")
    lines = str(info.value).splitlines()
    assert lines == [
        "settings.size: width 65 must be a multiple of 16 between 64 and 1024",
        "settings.size: height 2000 must be a multiple of 16 between 64 and 1024",
        "settings.num_timesteps: 1 must be an integer from 2 to 1000",
        "settings.cfg_interval: (0.5, 0.2) must be [start, end] with 0 <= start <= end <= 1",
        "settings.mask: 'yes' must be true or false",
    ]


@given(st.integers(1, 99_999), st.integers(1, 99_999))
def test_parse_size_reads_what_size_text_writes(w, h):
    assert parse_size(size_text((w, h))) == (w, h)
    assert parse_size(f" {w} × {h} ") == (w, h)


@given(st.text(max_size=60))
def test_parse_size_never_fails_other_than_clearly(text):
    try:
        size = parse_size(text)
    except SigmaInputError as e:
        assert str(e).startswith("settings.size: ")
    else:
        assert size is None or len(size) == 2
    assert parse_size("last-reference") is None and size_text(None) == "last-reference"


def test_text_values_are_parsed_by_their_spec_then_checked():
    s = settings_from_text({"num_timesteps": "30", "seed": "7", "size": "128x64"})
    assert (s.num_timesteps, s.seed, s.size) == (30, 7, (128, 64))
    with pytest.raises(SigmaInputError, match=r"settings\.seed: '-1' is not a whole number"):
        settings_from_text({"seed": "-1"})
    with pytest.raises(SigmaInputError, match=r"settings\.num_timesteps: '1e9' is not a whole"):
        settings_from_text({"num_timesteps": "1e9"})
    with pytest.raises(PresetError, match=r"settings\.num_timesteps: 1 must be an integer"):
        settings_from_text({"num_timesteps": "1"})


def test_layouts_are_one_table():
    assert ("auto", *LAYOUTS) == LAYOUT_CHOICES
    assert SPECS["layout"].choices == LAYOUT_CHOICES
    assert resolve_layout("auto").name == "inference"
    assert resolve_layout("auto", "training") is LAYOUTS["training"]
    assert [LAYOUTS[n].rope_per_reference for n in LAYOUTS] == [1, 2, 2]
    assert [LAYOUTS[n].phantom for n in LAYOUTS] == [False, True, False]
    assert check_layout_name("auto", auto=True) == "auto"
    for bad in ("auto", ["training"], "trainig", None):
        with pytest.raises(SigmaInputError, match=r"layout: .* is not one of inference, training"):
            check_layout_name(bad)


def test_cli_setting_options_come_from_the_table():
    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    options = {a.option_strings[0]: a for a in generate._actions if a.option_strings}
    for spec in SETTING_SPECS:
        if spec.flag is None:
            continue
        action = options[f"--{spec.flag}"]
        assert spec.help in action.help
        if spec.kind == "int":
            assert f"{spec.low:g} to {spec.high:g}" in action.help
        assert tuple(action.choices or ()) == spec.choices
