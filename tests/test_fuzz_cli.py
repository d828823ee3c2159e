"""Fuzzing the CLI: mutated presets, prompts, entities and arguments never end in exit 1.

Hypothesis drives ``validate``, ``inspect`` and ``generate`` (preview engine, tiny sizes, few
steps) in-process. Every call must exit 0 or 2 (never 1: an internal error) and finish within a
bound. The example budget is fixed and the search derandomized, so CI runs the same cases.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from PIL import Image

from sigma_core import cli

CALL_BOUND_S = 60.0  # generous: CI machines are slow and noisy; a hang is what this catches


def _png_uri(size: tuple[int, int], colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


BASE: dict[str, Any] = {
    "format": "sigma-studio/preset",
    "version": 1,
    "name": "fuzz",
    "prompt": "A photo of [1] next to [2]",
    "references": [
        {
            "slot": 1,
            "image": _png_uri((64, 48), (200, 40, 40)),
            "attributes": ["<id>"],
            "entity": "woman",
            "crop": None,
        },
        {
            "slot": 2,
            "image": _png_uri((48, 64), (40, 200, 40)),
            "attributes": ["<subject>"],
            "entity": "dog",
            "crop": [0, 0, 40, 40],
        },
    ],
    "settings": {"size": [64, 64], "num_timesteps": 2, "seed": 1},
}

FRAGMENTS = (
    "[1]", "[2]", "[3]", "[0]", "[1:style]", "[2:id+clothing]", "[1:idd]", "[1:]",
    "<image_1>", "<image_2>", "<image_9>", "<Image_1>", "<image 2>",
    "<style>", "<id>", "<identity>", "<idd>", "<foo>",
    "<|im_end|>", "<|vision_start|>", "<|endoftext|>", "<tool_call>",
    "\u202e", "\u2066", "\x00", "\x1b[31m", "\n", "  ", "a cat", "on a beach", "日本語", "🐱",
    "[", "]", "<", ">", "|",
)  # fmt: skip
text = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=12), max_size=10).map("".join)
numbers = st.sampled_from(
    [0, 1, 2, 3, -1, 0.5, -0.0, 4.0, 20.0, 20.5, 1000, 1001, 10**9, 2**63, 2**70, 10**400,
     1e308, float("nan"), float("inf")]
)  # fmt: skip
json_value = st.recursive(
    st.none() | st.booleans() | numbers | st.integers() | st.floats() | text,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
SETTINGS = (
    "size", "num_timesteps", "cfg_text_scale", "cfg_img_scale", "cfg_interval", "timestep_shift",
    "cfg_renorm_type", "cfg_renorm_min", "seed", "mask", "attribute_projection", "colour",
)  # fmt: skip
REFERENCE_KEYS = ("slot", "image", "attributes", "entity", "crop", "extra")
TOP_KEYS = ("format", "version", "name", "prompt", "references", "settings", "extra")


@st.composite
def mutation(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], Any]:
    """One edit: (kind, path, value)."""
    where = draw(st.sampled_from(("top", "settings", "reference", "prompt", "entity", "drop")))
    if where == "prompt":
        return ("set", ("prompt",), draw(text))
    if where == "entity":
        return ("set", ("references", draw(st.integers(0, 1)), "entity"), draw(text))
    if where == "settings":
        value = draw(json_value | numbers)
        return ("set", ("settings", draw(st.sampled_from(SETTINGS))), value)
    if where == "reference":
        key = draw(st.sampled_from(REFERENCE_KEYS))
        value = draw(
            json_value | st.sampled_from(["a\0b.png", "x" * 3000, "../x.png", "/etc/passwd"])
        )
        return ("set", ("references", draw(st.integers(0, 1)), key), value)
    if where == "drop":
        return ("drop", (draw(st.sampled_from(TOP_KEYS)),), None)
    return ("set", (draw(st.sampled_from(TOP_KEYS)),), draw(json_value))


def apply(data: dict[str, Any], edits: list[tuple[str, tuple[Any, ...], Any]]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for kind, path, value in edits:
        try:  # an earlier edit may have replaced a container by a value: then skip this one
            node: Any = data
            for key in path[:-1]:
                node = node[key]
            if kind == "drop":
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError, AttributeError):
            continue
    return data


@st.composite
def preset_text(draw: st.DrawFn, max_edits: int = 4) -> str:
    """A mutated preset, sometimes broken as text (truncated, deeply nested, not JSON)."""
    data = apply(BASE, draw(st.lists(mutation(), max_size=max_edits)))
    body = json.dumps(data)  # NaN and Infinity are written as JSON extensions on purpose
    damage = draw(st.sampled_from(("none",) * 6 + ("truncate", "nest", "garbage")))
    if damage == "truncate":
        return body[: draw(st.integers(0, len(body)))]
    if damage == "nest":
        depth = draw(st.sampled_from([31, 33, 5000]))
        return body[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    if damage == "garbage":
        return draw(st.text(max_size=40))
    return body


# Mostly valid values, so that generation runs to the end often enough to be exercised too.
STEPS = st.sampled_from(["2"] * 6 + ["3", "1", "0", "-1", "1000000", str(2**70), "x"])
SIZES = st.sampled_from(["64x64"] * 6 + ["96x64", "0x0", "65x64", "64x99999", "big", "x64"])
SEEDS = st.sampled_from([None] * 6 + ["0", "7", "-1", str(2**63), str(2**70)])
DEVICES = st.sampled_from([None] * 8 + ["cpu", "foo", "meta", "cuda:99", ""])


def call(*argv: object) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    elapsed = time.perf_counter() - start
    event(f"{argv[0]} exit {code}")  # --hypothesis-show-statistics: how often each end is reached
    assert elapsed < CALL_BOUND_S, f"{argv[0]} took {elapsed:.0f} s"
    return code, err.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache_fuzz"))
    monkeypatch.delenv("SIGMA_DEBUG", raising=False)


FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(body=preset_text())
def test_validate_and_inspect_never_exit_1(workdir: Path, body: str) -> None:
    path = workdir / "p.json"
    path.write_text(body, encoding="utf-8", errors="surrogatepass")
    for argv in (("validate", path), ("inspect", path), ("inspect", path, "--json")):
        code, err = call(*argv)
        assert code in (0, 2), err


@settings(FUZZ, max_examples=25)
@given(body=preset_text(max_edits=2), steps=STEPS, size=SIZES, seed=SEEDS, device=DEVICES)
def test_generate_never_exits_1(
    workdir: Path, body: str, steps: str, size: str, seed: str | None,
    device: str | None,
) -> None:  # fmt: skip
    path = workdir / "g.json"
    path.write_text(body, encoding="utf-8", errors="surrogatepass")
    argv: list[object] = ["generate", path, "-o", workdir / "out.png", "--overwrite"]
    # Keep the work small: steps and size are always given (tiny, or a bad value).
    argv += ["--steps", steps, "--size", size]
    argv += ["--seed", seed] if seed is not None else []
    argv += ["--device", device] if device is not None else []
    code, err = call(*argv)
    assert code in (0, 2), err
