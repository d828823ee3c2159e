"""The VAE's memory table (runtime.vae_memory): the shipped table against a fresh measurement
here, its lookup and fallback, and hostile table files refused whole."""

from __future__ import annotations

import json

import pytest

import sigma_core.runtime.vae_memory as vae_memory
from benchmarks.bench_memory import fit_line, measure, random_vae
from sigma_core.errors import SigmaError, SigmaInputError
from sigma_core.model.config import BAGEL_7B_MOT
from sigma_core.model.precision import DTYPES
from sigma_core.model.vae import TINY_VAE_CONFIG, flux_vae_config
from sigma_core.runtime import estimate_memory
from sigma_core.runtime.vae_memory import (
    FALLBACK_MARGIN,
    TABLE_PATH,
    parse_table,
    read_table,
    shipped_table,
    vae_shape,
)

TINY = {**flux_vae_config(), **TINY_VAE_CONFIG}


@pytest.fixture
def table_data() -> dict:
    return json.loads(TABLE_PATH.read_text(encoding="utf-8"))


def test_the_shipped_table_knows_flux_and_the_tiny_vae():
    table = shipped_table()
    names = {vae_shape(c).fingerprint: n for n, c in (("flux", flux_vae_config()), ("tiny", TINY))}
    assert {fp: table.vae[fp].name for fp in names} == names
    assert {"cpu", "torch", "diffusers", "date"} <= set(table.machine)


# The drift check: when torch or diffusers change what the VAE allocates, these fail and say
# to rerun `python -m benchmarks.bench_memory --write`. fp16 reads bf16's line.
@pytest.mark.parametrize(
    ("config", "dtype", "size"),
    [
        (TINY, "fp32", (96, 64)),
        (TINY, "bf16", (96, 64)),
        (TINY, "fp16", (64, 64)),
        (flux_vae_config(), "fp32", (96, 64)),
        (flux_vae_config(), "bf16", (64, 96)),
    ],
)
def test_the_table_matches_a_measurement_here(config, dtype, size):
    shape = vae_shape(config)
    measured = measure(random_vae(config, DTYPES[dtype]), size)
    pixels = size[0] * size[1]
    for phase, peak in measured.items():
        predicted = shipped_table().fit(shape, dtype, phase).at(pixels)
        assert abs(predicted - peak) <= 0.02 * peak, (phase, predicted, peak)


def test_the_fallback_scales_the_widest_measured_line_by_width():
    table = shipped_table()
    flux = vae_shape(flux_vae_config())
    wide = vae_memory.VAEShape(1, 1, fingerprint="not-measured", width=2 * flux.width)
    for phase in ("encode", "decode"):
        known = table.fit(flux, "fp32", phase)
        guess = table.fit(wide, "fp32", phase)
        assert guess.per_pixel >= 2 * FALLBACK_MARGIN * known.per_pixel - 1e-6


def test_the_fit_is_a_line_through_the_points():
    line, worst = fit_line([(100, 1000), (200, 1900), (400, 3700)])
    assert line == pytest.approx({"per_pixel": 9.0, "constant": 100.0})
    assert worst == pytest.approx(0.0, abs=1e-12)
    # a negative intercept is dropped: the line then over-predicts, never under
    line, _ = fit_line([(100, 900), (200, 1900)])
    assert line["constant"] == 0.0 and line["per_pixel"] == pytest.approx(10.0)


def test_a_config_diffusers_cannot_build_is_refused():
    with pytest.raises(SigmaInputError, match="vae_config"):
        estimate_memory(BAGEL_7B_MOT, "bf16", (512, 512), vae_config={"block_out_channels": "x"})
    with pytest.raises(SigmaInputError, match="vae_config"):
        vae_shape({"block_out_channels": [32], "weird": object()})


# --- hostile tables --------------------------------------------------------------------------


def _set(data: dict, path: str, value) -> dict:
    """``data`` with the key at dotted ``path`` ('vae.*' = every VAE entry) set to ``value``."""
    keys = path.split(".")
    targets = [data]
    for key in keys[:-1]:
        targets = [v for t in targets for v in (t.values() if key == "*" else [t[key]])]
    for target in targets:
        if value is _DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("format", 2, "format"),
        ("machine", ["AMD"], "machine"),
        ("machine.torch", 2.9, "machine.torch"),
        ("vae", {}, "no measured VAE"),
        ("vae", [], "vae"),
        ("vae.*.bytes.bf16", _DELETE, "bf16"),
        ("vae.*.bytes.fp32.decode.per_pixel", "3074", "per_pixel"),
        ("vae.*.bytes.fp32.decode.per_pixel", 0, "per_pixel"),
        ("vae.*.bytes.fp32.encode.constant", -1.0, "constant"),
        ("vae.*.bytes.fp32.encode.constant", True, "constant"),
        ("vae.*.config.block_out_channels", [128, -1], "block_out_channels"),
        ("vae.*.config.layers_per_block", 3, "fingerprint"),
        ("vae.*.name", None, "name"),
    ],
)
def test_a_table_with_wrong_fields_is_refused_whole(tmp_path, table_data, path, value, message):
    bad = tmp_path / "memory_table.json"
    bad.write_text(json.dumps(_set(table_data, path, value)), encoding="utf-8")
    with pytest.raises(SigmaError, match=message) as error:
        read_table(bad)
    assert str(bad) in str(error.value) and "bench_memory --write" in str(error.value)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b'"a table"',
        b"\xff\xfe not utf-8",
        b'{"format": NaN}',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser's recursion
        b" " * (vae_memory.MAX_TABLE_BYTES + 1),
    ],
)
def test_a_table_that_is_not_json_is_refused(tmp_path, content):
    bad = tmp_path / "memory_table.json"
    bad.write_bytes(content)
    with pytest.raises(SigmaError, match="not a usable memory table"):
        read_table(bad)


def test_nan_and_infinity_are_not_numbers(tmp_path, table_data):
    text = json.dumps(table_data)
    for constant in ("NaN", "Infinity", "-Infinity"):
        bad = tmp_path / "memory_table.json"
        bad.write_text(text.replace('"constant": 0.0', f'"constant": {constant}', 1))
        with pytest.raises(SigmaError, match=f"{constant} is not a number"):
            read_table(bad)
    assert parse_table(table_data).vae  # the intact data parses


def test_a_missing_shipped_table_stops_the_estimate_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(vae_memory, "TABLE_PATH", tmp_path / "gone.json")
    shipped_table.cache_clear()
    try:
        with pytest.raises(SigmaError, match=r"gone\.json: not a usable memory table"):
            estimate_memory(BAGEL_7B_MOT, "bf16", (512, 512))
    finally:
        monkeypatch.undo()
        shipped_table.cache_clear()
    assert estimate_memory(BAGEL_7B_MOT, "bf16", (512, 512)).vae_activations > 0
