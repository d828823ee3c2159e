"""The evaluation end to end, in this process, as a user runs it: ``evaluate generate`` on two
items of the example benchmark (the preview engine, two arms), ``evaluate score`` with the tiny
random CLIP and DINO, ``evaluate report``; then scoring again finds nothing new and the report
comes out the same. Each step reads what the step before wrote, through the same readers."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from sigma_core.cli import main as cli_main
from sigma_core.evaluation import runlog
from sigma_core.evaluation.clip_scores import ClipEmbedder, clip_t, plain_text
from tests.evaluation_helpers import CPU, score as _score

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("mask=on", "mask=off")
CELL = re.compile(r"^\**-?\d+\.\d+ ± (\d+\.\d+|—)\**( \(n=\d+\))?$")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> tuple[Path, str]:
    """A run generated, scored and reported (each step exits 0); with what they printed."""
    run = tmp_path_factory.mktemp("e2e") / "run"
    bench = str(ROOT / "presets" / "benchmark")
    generate = ["evaluate", "generate", bench, "--limit", "2", "--out", str(run),
                "--vary", "mask=on,off", "--steps", "2", "--size", "64x64"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli_main(generate) == 0
        assert _score(run, models) == 0
        assert cli_main(["evaluate", "report", str(run)]) == 0
    return run, out.getvalue()


def test_each_step_says_what_it_did(run) -> None:
    folder, printed = run
    assert f"{folder}: 4 of 4 images done (4 made now, 0 by an earlier command)" in printed
    assert f"scored 4 images (0 already scored) into {folder / 'scores.jsonl'}" in printed
    assert f"report: {folder / 'report' / 'report.md'}" in printed
    assert "the preview engine (random weights) made these images" in printed


def _table(text: str, title: str) -> dict[str, dict[str, str]]:
    """The Markdown table under ``title``: row name -> column header -> cell."""
    lines = text[text.index(title) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Arm |"))
    heads = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(heads, cells, strict=True))
    return rows


def test_the_report_has_numbers_for_both_arms_and_the_preview_warning(run, models) -> None:
    folder, _ = run
    text = (folder / "report" / "report.md").read_text()
    assert text.index("**Warning: the preview engine (random weights)") < text.index("## Runs")
    rows = _table(text, "## Results: all items")
    for arm in ARMS:
        assert rows[arm]["Images"] == "2"
        for head in ("CLIP-T ↑", "CLIP-I ↑", "DINO ↑", "AES ↑"):
            assert CELL.match(rows[arm][head]), (arm, head, rows[arm][head])
    assert "DreamSim: not scored (DreamSim: its weights are not in" in text
    assert "Missing: none." in text and "## Models" in text
    data = json.loads((folder / "report" / "results.json").read_text())
    assert data["preview"] is True and data["arms"] == list(ARMS)
    for arm in ARMS:
        for metric in ("clip_t", "clip_i", "dino", "aes"):
            cell = data["all"][arm][metric]
            assert isinstance(cell["mean"], float) and cell["n"] == 2
        assert data["images"][arm] == {"expected": 2, "generated": 2, "scored": 2, "unscored": 0}
    assert data["metrics"]["clip_t"]["models"] == {"run": str(models["clip"])}
    assert len(data["contact_sheets"]) == 2 and set(data["plots"]) >= {"clip_t", "clip_i", "dino"}
    for rel in [*data["contact_sheets"].values(), *data["plots"].values()]:
        with Image.open(folder / "report" / rel) as image:
            assert image.width > 100 and image.height > 100


def test_clip_t_reads_the_prompt_as_plain_text(run, models) -> None:
    """generated.jsonl's prompt is the raw SIGMA prompt (tokens, <image_k>); CLIP-T is the
    score of its plain text, not of the raw prompt."""
    folder, _ = run
    scores = {
        (s["item"], s["arm"], s["seed"]): s
        for s in map(json.loads, (folder / "scores.jsonl").read_text().splitlines())
    }
    clip = ClipEmbedder.load(str(models["clip"]), CPU, 4)
    for line in runlog.read_log(folder / runlog.LOG):
        raw, text = line["prompt"], plain_text(line["prompt"])
        assert "<image_1>" in raw and "<" not in text and "[" not in text
        with Image.open(folder / line["file"]) as image:
            image = image.convert("RGB")
            expected, of_raw = clip_t(clip, [image], text)[0], clip_t(clip, [image], raw)[0]
        got = scores[runlog.key_of(line)]["clip_t"]
        assert got == pytest.approx(expected, abs=1e-4) and got != pytest.approx(of_raw, abs=1e-4)
        assert scores[runlog.key_of(line)]["models"]["clip_t"] == str(models["clip"])


def test_scoring_again_scores_nothing_and_the_report_is_the_same(
    run, models, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = run
    files = ("report.md", "results.json")
    before = {name: (folder / "report" / name).read_bytes() for name in files}
    scores = (folder / "scores.jsonl").read_bytes()
    capsys.readouterr()
    assert _score(folder, models) == 0
    assert "scored 0 images (4 already scored)" in capsys.readouterr().out
    assert (folder / "scores.jsonl").read_bytes() == scores
    assert cli_main(["evaluate", "report", str(folder), "--overwrite"]) == 0
    assert {name: (folder / "report" / name).read_bytes() for name in files} == before
