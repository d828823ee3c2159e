"""What ``inspect`` and the mask picture show of a sequence layout: the layout itself, each
block's rope position, and the training layout's phantom ViT blocks with their N."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sigma_core import Composition, Reference, Settings, cli
from sigma_core.inputs import load_composition
from sigma_core.inputs.settings import LAYOUTS, describe_layout
from sigma_core.planning import Expert, Plan, TokenType, build_plan
from sigma_core.planning.layout import vit_grid, vit_size
from sigma_core.planning.mask import dense_mask
from sigma_core.report import mask_png, plan_report, render_report
from sigma_core.report.mask_picture import _INK, ALLOWED, PHANTOM, TYPE_COLORS, mask_cells
from tests.phantoms import literal_phantoms

ROOT = Path(__file__).resolve().parent.parent
BEACH = ROOT / "presets" / "layout_beach_sketch.json"
SOURCES = {1: (768, 512), 2: (300, 500)}  # two references of different ViT sizes
PROMPT = "Put the ball [1:subject] on a beach next to the person [2:id] at sunset"


def _comp(layout: str) -> Composition:
    refs = [Reference(slot, Image.new("RGB", size, "gray")) for slot, size in SOURCES.items()]
    return Composition(PROMPT, refs, Settings(layout=layout))


def _plan(tokenizer, layout: str, **kwargs) -> tuple[Plan, Composition]:
    comp = _comp(layout)
    return build_plan(comp, tokenizer, SOURCES, **kwargs), comp


def _report(plan: Plan, comp: Composition) -> dict:
    return {"source": "x.json", "tokenizer": "tiny", **plan_report(plan, comp)}


# ----------------------------------------------------------------------------- the report


@pytest.mark.parametrize("layout", LAYOUTS)
def test_report_names_the_layout_and_its_rope(tokenizer, layout: str) -> None:
    plan, comp = _plan(tokenizer, layout)
    report = json.loads(json.dumps(plan_report(plan, comp)))  # as inspect --json prints it
    assert report["layout"] == layout and report["layout_auto"] is False
    assert report["layout_description"] == describe_layout(layout)
    step = 1 if layout == "inference" else 2
    assert report["rope_per_reference"] == step
    segs = report["segments"]
    images = [i for i, s in enumerate(segs) if s["kind"] == "image"]
    assert len(images) == 2
    for i in images:
        after = next(s for s in segs[i + 1 :] if s["kind"] != "phantom")
        assert after["positions"][0] == segs[i]["positions"][0] + step
    holes = [segs[i]["positions"][0] + 1 for i in images] if layout == "training-no-vit" else []
    assert report["rope_holes"] == holes


def test_report_phantom_rows_carry_n_vit_size_and_bias(tokenizer) -> None:
    plan, comp = _plan(tokenizer, "training")
    report = plan_report(plan, comp)
    segs = report["segments"]
    phantoms = [s for s in segs if s["kind"] == "phantom"]
    assert [s["slot"] for s in phantoms] == [1, 2]
    for s in phantoms:
        image = segs[s["index"] - 1]
        assert image["kind"] == "image" and image["slot"] == s["slot"]
        assert s["positions"] == [image["positions"][0] + 1, image["positions"][0] + 2]
        rows, cols = vit_grid(*SOURCES[s["slot"]])
        assert s["grid"] == [rows, cols] and s["phantom_tokens"] == rows * cols
        assert s["size"] == list(vit_size(*SOURCES[s["slot"]]))
        assert s["count"] == 3 and s["group"] == image["group"]
        assert s["key_bias"] == pytest.approx(math.log(rows * cols))
        assert float(plan.key_bias[s["start"] + 1]) == pytest.approx(s["key_bias"], rel=1e-6)
    assert vit_grid(*SOURCES[1]) != vit_grid(*SOURCES[2])  # each block has its own N
    for s in segs:
        if s["kind"] != "phantom":
            assert s["phantom_tokens"] is None and s["key_bias"] is None


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("literal", [False, True])
def test_report_counts_equal_the_tensors(tokenizer, layout: str, literal: bool) -> None:
    plan, comp = _plan(tokenizer, layout)
    if literal:
        plan = literal_phantoms(plan)
    report = plan_report(plan, comp)
    for t in TokenType:
        assert report["token_counts"][t.name.lower()] == int((plan.token_type == t).sum())
    for e in Expert:
        assert report["experts"][e.name.lower()] == int((plan.expert == e).sum())
    assert sum(report["token_counts"].values()) == sum(report["experts"].values()) == plan.length
    for g in report["groups"]:
        ph = g["phantom_tokens"]
        if layout != "training":
            assert ph is None
            continue
        inside = slice(ph["start"], ph["end"])
        assert ph["end"] - ph["start"] == (ph["n"] if literal else 1)
        assert (plan.token_type[inside] == TokenType.IMAGE).all()
        assert (plan.group[inside] == g["group"]).all()
        assert (plan.expert[inside] == Expert.UND).all()


def test_report_phantom_summary_against_the_literal_block(tokenizer) -> None:
    plan, comp = _plan(tokenizer, "training")
    summary = plan_report(plan, comp)["phantom_blocks"]
    ns = [math.prod(vit_grid(*size)) for size in SOURCES.values()]
    literal = literal_phantoms(plan)
    assert summary == {
        "blocks": 2,
        "tokens": 6,
        "literal_tokens": sum(ns) + 4,
        "saved": sum(ns) - 2,
        "literal_length": literal.length,
    }
    assert plan_report(literal, comp)["phantom_blocks"]["saved"] == 0
    for layout in ("inference", "training-no-vit"):
        assert plan_report(*_plan(tokenizer, layout))["phantom_blocks"] is None


def test_text_shows_layout_phantom_blocks_and_n(tokenizer) -> None:
    plan, comp = _plan(tokenizer, "training")
    report = _report(plan, comp)
    text = render_report(report)
    lines = text.splitlines()
    assert f"layout: training - {describe_layout('training')}" in lines
    saved = report["phantom_blocks"]["saved"]
    assert f"  phantom blocks: 2, 3 tokens each here, N+2 each literally ({saved:,} tokens" in text
    for s in report["segments"]:
        row = next(ln for ln in lines if ln.split()[:2] == [str(s["index"]), s["kind"]])
        if s["kind"] != "phantom":
            continue
        (w, h), (rows, cols), n = s["size"], s["grid"], s["phantom_tokens"]
        assert f" {s['positions'][0]} " in row  # its one rope position
        assert (
            f"phantom ViT block: {w}x{h} px -> {rows}x{cols} ViT patches, N = {n} zero tokens "
            f"as 1 (logit bias ln N = {math.log(n):.2f})"
        ) in row
        assert "latents" not in row
        assert f"(N = {n})" in text  # on its group's line
    assert "text, markers and phantom ViT tokens" in text

    literal = render_report(_report(literal_phantoms(plan), comp))
    assert literal.count("zero tokens, literal (no logit bias)") == 2


def test_text_for_the_other_layouts(tokenizer) -> None:
    text = render_report(_report(*_plan(tokenizer, "auto")))
    assert f"layout: inference (auto) - {describe_layout('inference')}" in text
    assert "phantom" not in text and "rope holes" not in text
    plan, comp = _plan(tokenizer, "training-no-vit")
    text = render_report(_report(plan, comp))
    holes = ", ".join(str(s.position + 1) for s in plan.segments if s.kind == "image")
    assert f"  rope holes: {holes} (positions no token holds; rope +2 per reference)" in text
    assert "phantom ViT" not in text and "phantom blocks" not in text


def test_inspect_cli_shows_the_layout(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the tiny tokenizer's cache
    assert cli.main(["inspect", str(BEACH), "--layout", "training", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "training" and report["phantom_blocks"]["blocks"] == 1
    (phantom,) = [s for s in report["segments"] if s["kind"] == "phantom"]
    source = load_composition(BEACH).load_images()[1].size  # as placed, after any crop
    assert phantom["phantom_tokens"] == math.prod(vit_grid(*source))
    assert cli.main(["inspect", str(BEACH)]) == 0
    assert "layout: inference (auto) - " in capsys.readouterr().out


# ----------------------------------------------------------------------------- the mask picture


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _where(arr: np.ndarray, color: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.nonzero((arr == np.array(color, dtype=np.uint8)).all(axis=2))


def _matrix_rows(arr: np.ndarray) -> tuple[int, int, int]:
    """(x0, top, bottom) of the matrix: key 0 is seen by every query, so the matrix's first
    column is the leftmost ALLOWED one and runs from its top to its bottom."""
    ys, xs = _where(arr, ALLOWED)
    x0 = int(xs.min())
    column = ys[xs == x0]
    return x0, int(column.min()), int(column.max())


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0], strict=True))


def _small_plan(tokenizer, layout: str) -> Plan:
    """Two references with 2x2 latent blocks: short enough for one cell per token."""
    comp = _comp(layout)
    return build_plan(comp, tokenizer, SOURCES, resize=lambda w, h: (32, 32))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mask_picture_cells_are_the_mask(tokenizer, layout: str) -> None:
    plan = _small_plan(tokenizer, layout)
    cells = mask_cells(plan, np.arange(plan.length))
    assert np.array_equal(cells == 1, dense_mask(plan).numpy())


def test_mask_picture_marks_the_phantom_tokens_in_the_strips(tokenizer, tmp_path) -> None:
    plan = _small_plan(tokenizer, "training")
    arr = _pixels(mask_png(plan, tmp_path / "training.png", max_px=600))
    x0, top, bottom = _matrix_rows(arr)
    ys, xs = _where(arr, PHANTOM)
    strip = ys < top  # the type strip above the matrix
    y = int(ys[strip].min()) + 1
    row = arr[y, x0:]
    width = int(np.nonzero((row != 255).any(axis=1))[0].max()) + 1  # the strip's last token
    assert width % plan.length == 0  # one cell of width // L px per token
    scale = width // plan.length
    inside = [s.start + 1 for s in plan.segments if s.kind == "phantom"]
    for t in range(plan.length):
        cell = row[t * scale : (t + 1) * scale]
        colours = {tuple(int(v) for v in c) for c in cell}
        if t in inside:
            assert PHANTOM in colours and colours <= {PHANTOM, _INK}  # hatched
        else:
            assert colours == {TYPE_COLORS[TokenType(int(plan.token_type[t]))]}
    left = (xs < x0) & (ys >= top) & (ys <= bottom)  # the type strip left of the matrix
    assert sorted({(int(v) - top) // scale for v in ys[left]}) == inside
    assert (ys > bottom).any()  # the legend's swatch


def test_mask_picture_phantom_blocks_against_inference(tokenizer, tmp_path) -> None:
    """A downsampled plan keeps each phantom block visible, widened like an attribute token;
    the default layout's picture has no phantom colour at all."""
    pictures = {}
    for layout in LAYOUTS:
        plan, _ = _plan(tokenizer, layout)
        pictures[layout] = _pixels(mask_png(plan, tmp_path / f"{layout}.png", max_px=1024))
        assert max(pictures[layout].shape[:2]) <= 1024
    for layout in ("inference", "training-no-vit"):
        assert not _where(pictures[layout], PHANTOM)[0].size
    arr = pictures["training"]
    x0, top, bottom = _matrix_rows(arr)
    ys = _where(arr, PHANTOM)[0]
    y = int(ys[ys < top].min()) + 1
    row = arr[y, x0:]
    marked = (row == PHANTOM).all(axis=1) | (row == _INK).all(axis=1)
    runs = _runs(marked)
    assert len(runs) == 2 and all(end - start >= 2 for start, end in runs)
    # each run sits between its reference's block and the text after it
    plain, image, text = (
        TYPE_COLORS[t] for t in (TokenType.PLAIN, TokenType.IMAGE, TokenType.TEXT)
    )
    for start, end in runs:
        assert tuple(int(v) for v in row[start - 1]) in {plain, image}
        assert tuple(int(v) for v in row[end]) in {plain, text}
    assert (ys > bottom).any()  # the legend's swatch
