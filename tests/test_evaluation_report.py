"""`evaluate report`: the numbers (hand-computed means and standard errors), the ablation
layout, the files it writes, comparing runs, --overwrite, and hostile run files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sigma_core.cli import main as cli_main
from sigma_core.errors import SigmaInputError
from sigma_core.evaluation.contact_sheet import TILE
from sigma_core.evaluation.metrics import METRIC_NAMES
from sigma_core.evaluation.run_record import write_run_record
from sigma_core.inputs.png import save_png_with_text
from sigma_core.inputs.preset import PNG_NOTICE_KEY
from sigma_core.inputs.records import Anything, Map, read_json_lines

ARMS = ("mask=on", "mask=off")
ITEMS = {"a": "combine", "b": "combine", "c": "select"}
SEEDS = (0, 1)
# Scores per arm, in the order (a,0) (a,1) (b,0) (b,1) (c,0) (c,1); None: null.
CLIP_T = {
    "mask=on": [0.30, 0.32, 0.28, 0.30, 0.26, 0.34],
    "mask=off": [0.20, 0.22, 0.24, 0.26, 0.28, 0.30],
}
DINO = {"mask=on": [0.5, 0.6, 0.5, 0.6, None, None], "mask=off": [0.4, 0.4, 0.4, 0.4, None, None]}
CLIP_ES = {"mask=on": [None] * 4 + [0.50, 0.60], "mask=off": [None] * 4 + [0.40, 0.40]}
PREVIEW_NOTICE = "preview engine (random weights)"
MODELS = {"clip_t": "openai/clip-vit-large-patch14", "clip_i": "openai/clip-vit-large-patch14",
          "dino": "facebook/dino-vits16", "clip_es": "openai/clip-vit-large-patch14"}  # fmt: skip


def _png(path: Path, color: tuple[int, int, int], notice: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (64, 48), color)
    save_png_with_text(image, path, {PNG_NOTICE_KEY: notice} if notice else {}, compressed=set())


def _lines(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _preset(item: str) -> dict[str, Any]:
    return {
        "format": "sigma-studio/preset",
        "version": 2,
        "prompt": "a photo of [1] with [2]",
        "references": [
            {"slot": 1, "image": f"refs/{item}1.png", "attributes": ["face"], "entity": "a man"},
            {"slot": 2, "image": f"refs/{item}2.png", "attributes": [], "entity": "a hat"},
        ],
    }


def make_run(
    folder: Path, *, checkpoint: str | None = "/models/BAGEL", notice: str | None = None
) -> Path:
    """A run of 2 arms x 3 items x 2 seeds, with every image scored."""
    folder.mkdir(parents=True)
    info = {
        "version": 1,
        "benchmark": "benchmarks/tiny.jsonl",
        "arms": [{"name": a, "vary": {"mask": a.split("=")[1]}} for a in ARMS],
        "seeds": list(SEEDS),
        "items": list(ITEMS),
        "engine": {"checkpoint": checkpoint, "precision": "bf16"},
        "settings_overrides": {},
    }
    write_run_record(folder, info)
    bench = []
    for i, (item, family) in enumerate(ITEMS.items()):
        _png(folder / f"refs/{item}1.png", (200, 40 * i, 0))
        _png(folder / f"refs/{item}2.png", (0, 40 * i, 200))
        roles = {
            "1": {"role": "wanted"},
            "2": {"role": "distractor" if family == "select" else "wanted"},
        }
        bench.append({"id": item, "family": family, "preset": _preset(item), "references": roles})
    _lines(folder / "benchmark.jsonl", bench)
    generated, scores = [], []
    for arm in ARMS:
        for k, (item, seed) in enumerate((i, s) for i in ITEMS for s in SEEDS):
            file = f"images/{arm}/{item}/{seed}.png"
            _png(folder / file, (20 * k, 100, 100 if arm == ARMS[0] else 250), notice)
            generated.append(
                {
                    "item": item,
                    "arm": arm,
                    "seed": seed,
                    "file": file,
                    "seconds": 2.0 + k,
                    "prompt": "p",
                }
            )
            scores.append(
                {
                    "item": item, "arm": arm, "seed": seed, "family": ITEMS[item],
                    "clip_t": CLIP_T[arm][k], "clip_i": 0.7 if arm == ARMS[0] else 0.6,
                    "dino": DINO[arm][k], "dreamsim": None, "clip_es": CLIP_ES[arm][k], "aes": None,
                    "per_reference": {"clip_i": {"1": 0.7}}, "models": MODELS,
                }
            )  # fmt: skip
    _lines(folder / "generated.jsonl", generated)
    _lines(folder / "scores.jsonl", scores)
    scoring = {
        "models": MODELS,
        "skipped": {"dreamsim": "the dreamsim package is not installed"},
        "metrics": ["clip_t", "clip_i", "dino", "clip_es"],
    }
    (folder / "scores.json").write_text(json.dumps(scoring), encoding="utf-8")
    return folder


def _generated(**fields: Any) -> dict[str, Any]:
    return {
        "item": "b",
        "arm": "mask=on",
        "seed": 1,
        "file": "x",
        "seconds": 1,
        "prompt": "p",
    } | fields


def _score(**fields: Any) -> str:
    key = {"item": "a", "arm": "mask=on", "seed": 1, "family": "combine"}
    empty = dict.fromkeys(METRIC_NAMES) | {"per_reference": {}, "models": MODELS}
    return json.dumps(key | empty | fields)


def report(*argv: str | Path) -> int:
    return cli_main(["evaluate", "report", *map(str, argv)])


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict[str, Any], str]:
    """One run, reported once: (report folder, results.json, report.md)."""
    run = make_run(tmp_path_factory.mktemp("eval") / "run1")
    assert report(run) == 0
    out = run / "report"
    return out, json.loads((out / "results.json").read_text()), (out / "report.md").read_text()


def test_means_and_standard_errors_are_the_hand_computed_ones(made):
    _, data, _ = made
    on, off = data["all"]["mask=on"], data["all"]["mask=off"]
    # clip_t, on: mean 0.30; deviations 0, .02, -.02, 0, -.04, .04: var (ddof=1) .004/5
    assert on["clip_t"] == pytest.approx({"mean": 0.30, "se": math.sqrt(0.0008 / 6), "n": 6})
    assert off["clip_t"] == pytest.approx({"mean": 0.25, "se": math.sqrt(0.0014 / 6), "n": 6})
    assert on["clip_i"] == pytest.approx({"mean": 0.7, "se": 0.0, "n": 6})
    # dino on the combine items only: .5 .6 .5 .6, var .01/3
    assert on["dino"] == pytest.approx({"mean": 0.55, "se": math.sqrt(0.01 / 3 / 4), "n": 4})
    assert on["clip_es"] == pytest.approx({"mean": 0.55, "se": 0.05, "n": 2})
    assert off["clip_es"] == pytest.approx({"mean": 0.40, "se": 0.0, "n": 2})
    assert data["delta"]["mask=off"]["clip_t"] == pytest.approx(-0.05)
    assert "dreamsim" not in on and data["metrics"]["dreamsim"]["scored"] is False


def test_per_family_breakdown_uses_the_papers_columns(made):
    _, data, text = made
    combine, select = data["families"]["combine"], data["families"]["select"]
    assert list(combine["mask=on"]) == ["clip_t", "clip_i", "dino", "dreamsim"]
    assert list(select["mask=on"]) == ["clip_t", "clip_i", "clip_es", "aes"]
    assert combine["mask=off"]["clip_t"]["mean"] == pytest.approx(0.23)
    assert select["mask=on"]["clip_t"] == pytest.approx({"mean": 0.30, "se": 0.04, "n": 2})
    assert select["mask=off"]["clip_t"] == pytest.approx({"mean": 0.29, "se": 0.01, "n": 2})
    assert combine["mask=on"]["dreamsim"] == {"mean": None, "se": None, "n": 0}
    assert "| *SIGMA (paper)* |  | *31.96* | *75.57* | *59.52* | *67.87* |" in text


def test_report_md_is_the_ablation_table_with_the_best_arm_bold(made):
    _, _, text = made
    assert "| Arm | Images | CLIP-T ↑ | CLIP-I ↑ | DINO ↑ | CLIP-ES ↓ |" in text
    assert (
        "| mask=on | 6 | **0.300 ± 0.012** | **0.700 ± 0.000** | **0.550 ± 0.029** (n=4) |" in text
    )
    assert "| 0.550 ± 0.050 (n=2) |" in text and "**0.400 ± 0.000** (n=2) |" in text  # ↓ wins
    assert "| Δ mask=off |  | −0.050 | −0.100 | −0.150 | −0.150 |" in text
    assert "DreamSim: not scored (the dreamsim package is not installed)" in text
    assert "AES: not scored (no image has a value)" in text
    assert "Missing: none." in text and "Warning" not in text
    assert "| CLIP-T | openai/clip-vit-large-patch14 |" in text  # the Models table
    assert "| mask=on | 6 | 4.50 | 0.222 |" in text  # seconds 2..7: 27 s for 6 images


def test_contact_sheets_and_plots_are_real_pictures(made):
    out, data, text = made
    assert sorted(data["contact_sheets"]) == ["a", "b", "c"]
    for item, rel in data["contact_sheets"].items():
        assert f"]({rel})" in text and item in rel
        with Image.open(out / rel) as sheet:
            sheet.load()
            assert sheet.width >= 2 * TILE and sheet.height >= 2 * TILE
            colors = sheet.convert("RGB").getcolors(maxcolors=2**16) or []
            assert len(colors) > 10  # pictures and text, not blank
    assert sorted(data["plots"]) == ["clip_es", "clip_i", "clip_t", "dino"]
    for rel in data["plots"].values():
        assert f"]({rel})" in text
        with Image.open(out / rel) as plot:
            assert plot.size == (640, 400)
            assert (
                len(plot.convert("L").getextrema()) == 2 and plot.convert("L").getextrema()[0] < 100
            )


def test_results_json_round_trips(made):
    out, data, _ = made
    raw = (out / "results.json").read_text()
    assert json.loads(raw) == data and json.dumps(data, indent=2, ensure_ascii=False) + "\n" == raw
    assert data["format"] == "sigma-studio/evaluation-report" and data["version"] == 1
    assert data["images"]["mask=on"] == {"expected": 6, "generated": 6, "scored": 6, "unscored": 0}


def test_the_preview_engine_is_flagged(tmp_path, capsys):
    run = make_run(tmp_path / "run", checkpoint=None)
    assert report(run) == 0
    text = (run / "report" / "report.md").read_text()
    assert "**Warning: the preview engine (random weights)" in text
    assert "preview engine (random weights)" in capsys.readouterr().out
    # a named checkpoint, but the images carry the preview notice: still a preview
    other = make_run(tmp_path / "other", notice=PREVIEW_NOTICE)
    assert report(other) == 0
    data = json.loads((other / "report" / "results.json").read_text())
    assert data["preview"] is True and data["runs"][0]["preview_images"] == 12


def test_two_runs_are_compared_in_one_table(tmp_path):
    make_run(tmp_path / "base"), make_run(tmp_path / "tuned")
    out = tmp_path / "cmp"
    assert report(tmp_path / "base", tmp_path / "tuned", "--out", out) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["arms"] == ["base/mask=on", "base/mask=off", "tuned/mask=on", "tuned/mask=off"]
    assert data["delta"]["tuned/mask=on"]["clip_t"] == pytest.approx(0.0)
    text = (out / "report.md").read_text()
    assert "| base/mask=on | 6 |" in text and "| Δ tuned/mask=off |" in text


def test_runs_of_other_items_are_refused(tmp_path, capsys):
    make_run(tmp_path / "one")
    two = make_run(tmp_path / "two")
    info = json.loads((two / "run.json").read_text())
    info["items"] = ["a", "b"]
    (two / "run.json").write_text(json.dumps(info))
    _lines(two / "scores.jsonl", [])
    _lines(two / "generated.jsonl", [])
    assert report(tmp_path / "one", two, "--out", tmp_path / "x") == 2
    assert "have different items" in capsys.readouterr().err


def test_an_existing_report_is_replaced_only_with_overwrite(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert report(run) == 0
    (run / "report" / "mine.txt").write_text("keep?")
    assert report(run) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {str(run / 'report')!r} already exists"), err  # its option
    assert "--overwrite" in err and (run / "report" / "mine.txt").exists()
    assert report(run, "--overwrite") == 0
    assert not (run / "report" / "mine.txt").exists() and (run / "report" / "report.md").exists()
    assert [p.name for p in tmp_path.joinpath("run").iterdir() if p.name.startswith(".")] == []
    assert report(run, "--out", tmp_path, "--overwrite") == 2  # would delete the run
    assert "holds it" in capsys.readouterr().err


def test_an_images_last_score_line_wins(tmp_path):
    """A re-score appends a line (other models): the report takes each image's last line."""
    run = make_run(tmp_path / "run")
    lines = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    again = {**lines[0], "clip_t": 0.9, "models": {**MODELS, "clip_t": "other/clip"}}
    with open(run / "scores.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(again) + "\n")
    assert report(run) == 0
    data = json.loads((run / "report" / "results.json").read_text())
    assert data["images"]["mask=on"]["scored"] == 6
    assert data["all"]["mask=on"]["clip_t"]["mean"] == pytest.approx(0.30 + (0.9 - 0.30) / 6)


def test_missing_scores_are_counted(tmp_path):
    run = make_run(tmp_path / "run")
    lines = (run / "scores.jsonl").read_text().splitlines()
    (run / "scores.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # mask=off, c, seed 1
    assert report(run) == 0
    text = (run / "report" / "report.md").read_text()
    assert "- mask=off: 1 generated images have no score line" in text
    data = json.loads((run / "report" / "results.json").read_text())
    assert data["all"]["mask=off"]["clip_t"]["n"] == 5


def _break(run: Path, name: str, line: int, text: str) -> None:
    """Line ``line`` of ``name`` replaced by ``text`` (0: the whole file)."""
    lines = (run / name).read_text().splitlines() if line else [""]
    lines[line - 1] = text
    (run / name).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("name", "line", "text", "message"),
    [
        ("scores.jsonl", 3, '{"item": "a",', "scores.jsonl, line 3: malformed JSON"),
        ("scores.jsonl", 2, _score(clip_t="NaN").replace('"NaN"', "NaN"), "line 2: NaN is not"),
        ("scores.jsonl", 2, _score(clip_t=7).replace("7", "1e999"), "line 2: the number 1e999"),
        ("scores.jsonl", 2, _score(clip_t="high"), "line 2: clip_t: 'high' is not a finite"),
        ("scores.jsonl", 2, _score(family="select"), "line 2: family 'select' is not the"),
        (
            "generated.jsonl",
            4,
            json.dumps(_generated(file="../../etc/passwd")),
            "generated.jsonl, line 4: file: '../../etc/passwd' goes up with '..'",
        ),
        (
            "generated.jsonl",
            4,
            json.dumps(_generated(file="/etc/passwd")),
            "line 4: file: '/etc/passwd' is an absolute path",
        ),
        (
            "generated.jsonl",
            1,
            json.dumps(_generated(item="zzz")),
            "line 1: item 'zzz' is not one of run.json's items",
        ),
        ("run.json", 0, '{"version": 1}', "run.json: benchmark: missing"),
    ],
)  # fmt: skip
def test_hostile_run_files_are_refused_with_the_line(tmp_path, capsys, name, line, text, message):
    run = make_run(tmp_path / "run")
    _break(run, name, line, text)
    assert report(run) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (run / "report").exists()


def test_a_reference_path_escaping_the_run_is_refused(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (tmp_path / "secret.png").write_bytes((run / "refs/a1.png").read_bytes())
    text = (run / "benchmark.jsonl").read_text().replace("refs/a1.png", "../secret.png")
    (run / "benchmark.jsonl").write_text(text)
    assert report(run) == 2
    assert "benchmark.jsonl, line 1: references[slot 1].image: '../secret.png' goes up" in (
        capsys.readouterr().err
    )


def test_an_unscored_run_names_the_command_that_scores_it(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "scores.jsonl").unlink()
    assert report(run) == 2
    assert "run `python -m sigma_core evaluate score" in capsys.readouterr().err


def test_the_json_lines_reader_bounds_each_line_and_never_opens_a_fifo(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": "' + b"x" * 100 + b'"}\n')
    lines = read_json_lines(path, Map(Anything()), what="list", max_line_bytes=50)
    assert next(lines) == (1, {"a": 1})
    with pytest.raises(
        SigmaInputError, match=r"list\.jsonl, line 3: a line of the list is over 50"
    ):
        next(lines)
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(SigmaInputError, match=r"line 2: not UTF-8 text"):
        list(read_json_lines(path, Map(Anything()), what="list"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SigmaInputError, match="not a regular file"):
        list(read_json_lines(tmp_path / "fifo", Map(Anything()), what="list"))


def test_a_long_reason_is_shown_whole_and_a_longer_one_cut_visibly():
    from sigma_core.evaluation.report_markdown import esc

    note = "DreamSim: its weights are not in /x; pip install dreamsim, then " + "y" * 250
    assert esc(note, 600).endswith("y" * 250)  # the install note (~330 characters) whole
    cell = esc("z" * 700)
    assert cell.endswith("...") and len(cell) == 200  # a table cell stays short, cut visibly
