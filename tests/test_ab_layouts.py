"""benchmarks/ab_layouts.py: the layout A/B on the preview engine, its files, and its refusals."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from benchmarks import ab_layouts
from sigma_core import Composition, Reference, save_preset
from sigma_core.evaluation.scoring import Scorers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

SIZE = 128
LAYOUTS = ("inference", "training", "training-no-vit")


class FakeClip:
    """A stand-in evaluation model: an image's embedding is its mean colour (unit length), a
    text's a fixed vector. It records what it was given."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.image_sizes: list[tuple[int, int]] = []

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.image_sizes += [im.size for im in images]
        rows = np.stack(
            [np.asarray(im.convert("RGB"), np.float64).mean((0, 1)) + 1 for im in images]
        )
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += texts
        return np.tile(np.array([1.0, 0.0, 0.0]), (len(texts), 1))


def _drawing(color: str, shape: str) -> Image.Image:
    image = Image.new("RGB", (96, 64), "white")
    draw = ImageDraw.Draw(image)
    box = (16, 8, 80, 56)
    (draw.ellipse if shape == "ellipse" else draw.rectangle)(box, fill=color)
    return image


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One composition of two drawn references, one seed, three steps, all layouts, with a
    fake scorer: main() run once."""
    root = tmp_path_factory.mktemp("ab_layouts")
    _drawing("red", "ellipse").save(root / "ball.png")
    _drawing("blue", "rectangle").save(root / "box.png")
    comp = Composition(
        "A photo of [1] on top of [2]",
        [
            Reference(1, "ball.png", ("<subject>",), "a red ball"),
            Reference(2, "box.png", ("<background>",), "a blue box"),
        ],
        name="ball on box",
        base_dir=root,
    )
    preset = save_preset(comp, root / "ball_on_box.json")
    clip, dino = FakeClip(), FakeClip()
    out, err = root / "out", io.StringIO()
    argv = ["--presets", str(preset), "--seeds", "7", "--steps", "3"]
    argv += ["--size", f"{SIZE}x{SIZE}", "--device", "cpu", "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(ab_layouts, "load_scorers", lambda metrics, sources, device, batch: Scorers(
            {"clip": clip, "dino": dino}, {m: "stand-in" for m in metrics}, {}))  # fmt: skip
        code = ab_layouts.main(argv)
    results = json.loads((out / "results.json").read_text()) if code == 0 else {}
    return {"code": code, "out": out, "stderr": err.getvalue(), "results": results,
            "clip": clip, "dino": dino}  # fmt: skip


def test_runs_every_layout_from_the_same_seed(experiment: dict) -> None:
    assert experiment["code"] == 0, experiment["stderr"]
    assert "preview engine" in experiment["stderr"]
    runs = experiment["results"]["runs"]
    assert [r["layout"] for r in runs] == list(LAYOUTS)
    assert {r["seed"] for r in runs} == {7}
    assert all(r["output_size"] == [SIZE, SIZE] for r in runs)
    for r in runs:
        with Image.open(experiment["out"] / r["image"]) as im:
            assert im.size == (SIZE, SIZE)
        assert r["timings"]["total_s"] > 0


def test_training_layout_adds_a_phantom_block_per_reference(experiment: dict) -> None:
    runs = {r["layout"]: r for r in experiment["results"]["runs"]}
    assert runs["training"]["phantom_blocks"] == 2
    assert runs["training"]["tokens"] == runs["inference"]["tokens"] + 3 * 2
    assert runs["training-no-vit"]["tokens"] == runs["inference"]["tokens"]
    assert runs["training-no-vit"]["max_position"] > runs["inference"]["max_position"]


def test_grid_and_difference_figure(experiment: dict) -> None:
    out, runs = experiment["out"], experiment["results"]["runs"]
    assert sorted(p.name for p in (out / "grids").iterdir()) == [Path(runs[0]["grid"]).name]
    with Image.open(out / runs[0]["grid"]) as grid:
        assert grid.width == 3 * SIZE + 2 * ab_layouts.GAP
        assert grid.height > SIZE  # the labels above the images
    with Image.open(out / runs[0]["diff"]) as diff:
        assert diff.width == 2 * SIZE + ab_layouts.GAP
    mad = {r["layout"]: r["mad_vs_baseline"] for r in runs}
    assert mad["inference"] == 0 and mad["training"] > 0 and mad["training-no-vit"] > 0


def test_scores_go_through_the_scorer(experiment: dict) -> None:
    runs, clip = experiment["results"]["runs"], experiment["clip"]
    assert all(set(r["scores"]) == {"clip_t", "clip_i", "dino"} for r in runs)
    assert clip.texts == ["A photo of a red ball on top of a blue box"]  # no tokens, no <image_k>
    assert (96, 64) in clip.image_sizes  # the references were embedded
    by_layout = experiment["results"]["by_layout"]
    assert [row["layout"] for row in by_layout] == list(LAYOUTS)
    assert all("clip_t" in row for row in by_layout)
    summary = (experiment["out"] / "summary.md").read_text()
    assert "CLIP-T" in summary and "DINO" in summary and "MAD vs inference" in summary


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layouts", "inference", "sideways"], "invalid choice: 'sideways'"),
        (["--presets", "no/such/folder"], "no/such/folder does not exist"),
        (["--seeds", "-1"], "--seeds: -1"),
        (["--seeds", "one"], "invalid int value"),
        (["--steps", "1"], "--steps: 1"),
        (["--size", "100x128"], "--size: width 100 must be a multiple of 16"),
        (["--seeds", *map(str, range(200))], f"over the cap of {ab_layouts.MAX_RUNS}"),
        (["--sigma-weights", "somewhere"], "--sigma-weights needs --checkpoint"),
    ],
)
def test_bad_input_exits_2_before_loading(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ab_layouts.main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_without_presets_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "not_a_preset.png")  # a PNG without a composition
    assert ab_layouts.main(["--presets", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no presets in" in capsys.readouterr().err
