"""sigma_core.evaluation's metrics and `evaluate score`: tiny random CLIP and DINO models built
here from small configs (never downloaded), loaded through the real loading path; a fixture run
folder scored end to end through the CLI, resumed, and refused when hostile."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sigma_core import Composition, Reference
from sigma_core.evaluation import aesthetic, dreamsim, runlog, score_files, scoring
from sigma_core.evaluation.clip_scores import ClipEmbedder, clip_t, plain_text, prompt_text
from sigma_core.evaluation.dino import DinoEmbedder
from sigma_core.evaluation.embedders import RefView, pair_scores
from sigma_core.evaluation.metrics import METRIC_NAMES
from sigma_core.evaluation.run_record import open_run
from sigma_core.inputs.preset import preset_to_dict
from tests.evaluation_helpers import (
    CPU,
    dino_folder,
    drawing,
    generated_line,
    noise,
    read_jsonl,
    score as _score,
    write_jsonl,
    write_run,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="module")
def clip(models: dict[str, Path]) -> ClipEmbedder:
    return ClipEmbedder.load(str(models["clip"]), CPU, 8)


@pytest.fixture(scope="module")
def dino(models: dict[str, Path]) -> DinoEmbedder:
    return DinoEmbedder.load(str(models["dino"]), CPU, 8)


# ----------------------------------------------------------------------------- the metrics


def test_identical_images_score_the_maximum(clip: ClipEmbedder, dino: DinoEmbedder) -> None:
    ball, box = drawing("red", "ellipse"), drawing("blue", "box")
    scene = noise(0)
    scene.paste(ball, (0, 0))  # the region [0, 0, 0.5, 0.5] of 128 x 128
    refs = [RefView("1", ball, (0.0, 0.0, 0.5, 0.5)), RefView("2", box)]
    for model in (clip, dino):
        found = pair_scores(model, [scene, box], refs)
        assert found["1"][0] == pytest.approx(100.0, abs=1e-6)  # its region is the reference
        assert found["2"][1] == pytest.approx(100.0, abs=1e-6)  # the whole image is
        assert max(found["1"][1], found["2"][0]) < 100.0 - 1e-3
        assert np.all(np.concatenate(list(found.values())) <= 100.0 + 1e-9)


def test_a_permutation_of_references_permutes_the_scores(clip: ClipEmbedder) -> None:
    images = [noise(1), drawing("red", "ellipse"), drawing("green", "cone")]
    refs = [RefView("1", drawing("red", "ellipse")), RefView("2", drawing("blue", "box")),
            RefView("3", drawing("green", "cone"), (0.1, 0.1, 0.9, 0.9))]  # fmt: skip
    found = pair_scores(clip, images, refs)
    again = pair_scores(clip, images, refs[::-1])
    relabelled = pair_scores(clip, images, [RefView("9", refs[0].image), *refs[1:]])
    for key in found:
        np.testing.assert_allclose(again[key], found[key], atol=1e-9)
    np.testing.assert_allclose(relabelled["9"], found["1"], atol=1e-9)


def test_scores_are_deterministic_and_do_not_depend_on_the_batch_size(
    models: dict[str, Path], clip: ClipEmbedder, dino: DinoEmbedder
) -> None:
    images = [noise(i, 48 + 8 * i) for i in range(5)] + [drawing("red", "ellipse")]
    refs = [RefView("1", drawing("red", "ellipse"), (0.25, 0.0, 1.0, 0.75)),
            RefView("2", noise(9, 64))]  # fmt: skip
    one = ClipEmbedder.load(str(models["clip"]), CPU, 1)
    dino_one = DinoEmbedder.load(str(models["dino"]), CPU, 1)
    for a, b in ((clip, one), (dino, dino_one)):
        found = pair_scores(a, images, refs)
        for key, again in pair_scores(a, images, refs).items():
            assert np.array_equal(again, found[key])
        for key, batched in pair_scores(b, images, refs).items():
            np.testing.assert_allclose(batched, found[key], atol=1e-5)
    text = "a red ball, on a long and winding road"
    np.testing.assert_allclose(clip_t(one, images, text), clip_t(clip, images, text), atol=1e-5)
    texts = ["a", text, "a blue box"]
    np.testing.assert_allclose(one.embed_texts(texts), clip.embed_texts(texts), atol=1e-7)


def test_a_dinov2_stands_in_for_dino(tmp_path: Path) -> None:
    model = DinoEmbedder.load(str(dino_folder(tmp_path, v2=True)), CPU, 2)
    image = drawing("red", "ellipse")
    assert pair_scores(model, [image], [RefView("1", image)])["1"][0] == pytest.approx(100.0)


def test_clip_t_reads_the_prompt_without_tokens_or_placeholders() -> None:
    comp = Composition(
        "A photo of [1] on top of [2].",
        [Reference(1, "ball.png", ("<subject>",), "a red ball"),
         Reference(2, "box.png", ("<background>",), "a blue box")],
    )  # fmt: skip
    assert prompt_text(comp) == "A photo of a red ball on top of a blue box."
    raw = "Isolate <select> the cup in <image_1> , and place it before <background> <image_2>"
    assert plain_text(raw) == "Isolate the cup in, and place it before"


def test_a_missing_model_names_the_download_and_the_others_still_run(
    models: dict[str, Path],
) -> None:
    sources = {"clip": "no-such-org/no-clip", "dino": str(models["dino"]),
               "dreamsim": "/no/such/folder", "aes": str(models["aes"])}  # fmt: skip
    scorers = scoring.load_scorers(METRIC_NAMES, sources, CPU, 4)
    assert scorers.models == {"dino": str(models["dino"])}
    assert set(scorers.skipped) == {"clip_t", "clip_i", "clip_es", "aes", "dreamsim"}
    assert "`hf download no-such-org/no-clip`" in scorers.skipped["clip_t"]
    assert "huggingface-cli download no-such-org/no-clip" in scorers.skipped["aes"]
    assert "pip install dreamsim" in scorers.skipped["dreamsim"]


def test_the_aesthetic_head_reads_the_published_layout(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    head = aesthetic.load_aesthetic(str(models["aes"]), 768)
    state = torch.load(models["aes"], weights_only=True)
    assert sorted(state) == sorted(
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")
    )
    assert state["layers.0.weight"].shape == (1024, 768)
    assert state["layers.7.weight"].shape == (1, 16)
    rows = np.random.default_rng(0).normal(size=(5, 768))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    ratings = head.score(rows)
    assert ratings.shape == (5,)
    np.testing.assert_allclose(head.score(rows[:1]), ratings[:1], atol=1e-6)
    save_file(state, tmp_path / "model.safetensors")  # a folder holding model.safetensors
    np.testing.assert_array_equal(aesthetic.load_aesthetic(str(tmp_path), 768).score(rows), ratings)
    with pytest.raises(aesthetic.ModelUnavailable, match="768 values"):
        aesthetic.load_aesthetic(str(models["aes"]), 512)
    renamed = {k.replace("layers.", "mlp."): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "other.pth")
    with pytest.raises(aesthetic.ModelUnavailable, match="not the predictor's weights"):
        aesthetic.load_aesthetic(str(tmp_path / "other.pth"), 768)
    (tmp_path / "html.pth").write_text("<!DOCTYPE html><html>a GitHub page, not weights")
    with pytest.raises(aesthetic.ModelUnavailable, match="not the predictor's weights"):
        aesthetic.load_aesthetic(str(tmp_path / "html.pth"), 768)
    with pytest.raises(aesthetic.ModelUnavailable, match="hf download"):
        aesthetic.load_aesthetic("no-such-org/no-aes", 768)


def test_dreamsim_needs_its_package_and_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(dreamsim.ModelUnavailable, match=r"dino_vitb16_pretrain\.pth is missing"):
        dreamsim.DreamSimEmbedder.load(str(tmp_path), CPU, 2)
    for name in dreamsim.DREAMSIM_FILES:
        (tmp_path / name).mkdir()
    monkeypatch.setitem(sys.modules, "dreamsim", None)  # not installed
    with pytest.raises(dreamsim.ModelUnavailable, match="package is not installed"):
        dreamsim.DreamSimEmbedder.load(str(tmp_path), CPU, 2)

    class StandIn:  # the package's API: embed() of preprocessed [B, 3, 224, 224] in 0..1
        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)) - 0.5

    def preprocess(image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(image.resize((224, 224)), np.float32) / 255)
        return pixels.permute(2, 0, 1)[None]

    calls: list[dict[str, Any]] = []
    package = types.ModuleType("dreamsim")
    package.dreamsim = lambda **kw: calls.append(kw) or (StandIn(), preprocess)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dreamsim", package)
    model = dreamsim.DreamSimEmbedder.load(str(tmp_path), CPU, 2)
    assert calls == [{"pretrained": True, "device": "cpu", "cache_dir": str(tmp_path)}]
    ball, box = drawing("red", "ellipse"), drawing("blue", "box")
    found = pair_scores(model, [ball, box, ball], [RefView("1", ball)])["1"]
    assert found[0] == pytest.approx(100.0) and found[2] == pytest.approx(100.0)
    assert found[1] < 100.0


# ----------------------------------------------------------------------------- evaluate score


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder (evaluation_helpers.write_run): two items, two arms, seed 0."""
    return write_run(tmp_path)


def test_evaluate_score_end_to_end_and_resumed(
    run: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _score(run, models, "--batch-size", "3") == 0
    out, err = capsys.readouterr()
    assert "scored 4 images (0 already scored)" in out
    assert "dreamsim skipped: DreamSim: its weights are not in" in err
    lines = read_jsonl(run / "scores.jsonl")
    got = {(s["item"], s["arm"]): s for s in lines}
    assert [(s["item"], s["arm"], s["seed"]) for s in lines] == [
        ("pair", "mask=on", 0), ("pair", "mask=off", 0),
        ("pick", "mask=on", 0), ("pick", "mask=off", 0),
    ]  # fmt: skip
    assert got["pair", "mask=on"]["per_reference"]["clip_i"]["1"] == pytest.approx(100, abs=1e-6)
    assert got["pick", "mask=on"]["clip_i"] == pytest.approx(100, abs=1e-6)  # the reference
    assert got["pick", "mask=on"]["dino"] == pytest.approx(100, abs=1e-6)
    assert got["pick", "mask=off"]["clip_es"] == pytest.approx(100, abs=1e-6)  # the distractor
    pair = got["pair", "mask=off"]
    assert pair["family"] == "combine" and got["pick", "mask=on"]["family"] == "select"
    assert set(pair["per_reference"]["dino"]) == {"1", "2"}
    assert pair["clip_i"] == pytest.approx(np.mean(list(pair["per_reference"]["clip_i"].values())))
    assert pair["clip_es"] is None and pair["per_reference"]["clip_es"] == {}
    assert pair["dreamsim"] is None and "dreamsim" not in pair["per_reference"]
    assert all(isinstance(s["clip_t"], float) and isinstance(s["aes"], float) for s in lines)
    summary = json.loads((run / "scores.json").read_text())
    assert summary["metrics"] == list(METRIC_NAMES)
    assert summary["models"]["clip_t"] == str(models["clip"])
    assert summary["models"]["dino"] == str(models["dino"])
    assert "pip install dreamsim" in summary["skipped"]["dreamsim"]

    before = (run / "scores.jsonl").read_bytes()
    assert _score(run, models) == 0  # nothing new: not scored again
    assert "scored 0 images (4 already scored)" in capsys.readouterr().out
    assert (run / "scores.jsonl").read_bytes() == before
    # an interrupted scoring: the last line torn mid-write
    (run / "scores.jsonl").write_bytes(before[: before.rfind(b"\n", 0, -1) + 20])
    assert _score(run, models, "--batch-size", "1") == 0
    assert "scored 1 images (3 already scored)" in capsys.readouterr().out
    again = read_jsonl(run / "scores.jsonl")
    assert len(again) == 4 and again[3]["aes"] == pytest.approx(lines[3]["aes"], abs=1e-5)
    assert again[3]["clip_t"] == pytest.approx(lines[3]["clip_t"], abs=1e-5)


def test_other_models_score_again(
    run: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _score(run, models, "--metrics", "dino") == 0
    assert read_jsonl(run / "scores.jsonl")[0]["clip_t"] is None
    assert _score(run, models, "--metrics", "clip_t,dino") == 0  # CLIP-T is new: all again
    assert "scored 4 images (0 already scored)" in capsys.readouterr().out.splitlines()[-1]
    assert len(read_jsonl(run / "scores.jsonl")) == 8


def _set(path: Path, text: str) -> None:
    path.write_text(text)


def _preset(prompt: str) -> dict[str, Any]:
    return {**preset_to_dict(Composition("p")), "prompt": prompt}


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda run: shutil.rmtree(run), "is not a run folder"),
        (lambda run: _set(run / "run.json", "{not json"), "run.json: malformed JSON"),
        (lambda run: _set(run / "run.json", '{"version": 7}'), "version: 7 is not an integer"),
        (lambda run: (run / "run.json").unlink(), "cannot read the run file"),
        (lambda run: _set(run / "generated.jsonl", '{"item": "pair"}\n{}\n'),
         "generated.jsonl, line 1: arm: missing"),
        (lambda run: _set(run / "generated.jsonl", '[1]\n'), "expected an object, got a list"),
        (lambda run: _set(run / "generated.jsonl", json.dumps(
            generated_line("pair", file="../../escape.png")) + "\n"), "'../../escape.png' goes up"),
        (lambda run: _set(run / "generated.jsonl", json.dumps(generated_line("nope")) + "\n"),
         "item 'nope' is not one of run.json's items"),
        (lambda run: _set(run / "generated.jsonl", json.dumps(generated_line("pair", "a")) + "\n"),
         "arm 'a' is not one of run.json's arms"),
        (lambda run: _set(run / "benchmark.jsonl", json.dumps(
            {"id": "pair", "family": "combine", "preset": _preset("[1]")}) + "\n"),
         "benchmark.jsonl, line 1: prompt: places slot 1"),
        (lambda run: _set(run / "benchmark.jsonl", json.dumps(
            {"id": "x", "family": "combine", "preset": _preset("p"),
             "references": {"1": {"role": "wanted"}}}) + "\n"),
         "references.1: the preset has no slot '1'"),
    ],
)  # fmt: skip
def test_hostile_run_folders_exit_2(
    run: Path, models: dict[str, Path], spoil: Any, message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    spoil(run)
    assert _score(run, models) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metrics", "clip_t,fid"], "--metrics: 'fid' is not a metric"),
        (["--batch-size", "0"], "--batch-size: 0 is not from 1 to 1024"),
        (["--batch-size", "5000"], "--batch-size: 5000"),
    ],
)
def test_bad_options_exit_2(
    run: Path, models: dict[str, Path], extra: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert _score(run, models, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (run / "scores.jsonl").exists()


def _score_line(image: runlog.Generated, model: str) -> dict[str, Any]:
    family = "combine" if image.item == "pair" else "select"
    key = {"item": image.item, "arm": image.arm, "seed": image.seed, "family": family}
    return {**key, **dict.fromkeys(METRIC_NAMES), "per_reference": {}, "models": {"dino": model}}


def test_part_files_merge_in_the_scoring_order(run: Path) -> None:
    """Under accelerate each process appends to its own part file; the main process moves the
    lines into scores.jsonl in the scoring order (item by item, as one process writes them),
    after what is there."""
    opened = open_run(run)
    order = score_files.scoring_order(runlog.read_images(run, opened.record))
    assert [g.key for g in order] == [("pair", "mask=on", 0), ("pair", "mask=off", 0),
                                      ("pick", "mask=on", 0), ("pick", "mask=off", 0)]  # fmt: skip
    lines = [_score_line(g, "d") for g in order]
    write_jsonl(run / "scores.jsonl", lines[:1])
    write_jsonl(score_files.part_file(run, 1), [lines[3], lines[1]])
    score_files.part_file(run, 0).write_text(json.dumps(lines[2]) + "\n" + '{"item": "pa')
    found = score_files.read_scores(run, opened.record, opened.families, parts=True)
    assert score_files.scored(found, {"dino": "d"}) == {g.key for g in order}
    assert score_files.scored(found, {"dino": "other"}) == set()
    assert score_files.merge_parts(run, order) == 3
    assert read_jsonl(run / "scores.jsonl") == lines
    assert not list(run.glob("scores.part*"))


def test_an_images_last_score_line_wins(run: Path) -> None:
    """Re-scoring appends; the scorer's resume and the report read each image's last line."""
    opened = open_run(run)
    first, second = runlog.read_images(run, opened.record)[:2]
    write_jsonl(run / "scores.jsonl", [_score_line(first, "a"), _score_line(second, "a"),
                                        _score_line(first, "b")])  # fmt: skip
    found = score_files.read_scores(run, opened.record, opened.families)
    assert found[first.key]["models"] == {"dino": "b"} and len(found) == 2
    assert score_files.scored(found, {"dino": "a"}) == {second.key}
