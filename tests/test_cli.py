"""The command line, called in-process through ``main`` (plus one real ``python -m`` run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sigma_core import ATTRIBUTES, cli
from sigma_core.inputs import load_preset, save_preset, write_png
from sigma_core.planning import build_plan, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "presets"
COMBINE = PRESETS / "combine_astronaut_cat_rocket.json"
LAYOUT = PRESETS / "layout_beach_sketch.json"


@pytest.fixture(scope="session")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg_cache")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, cache_home: Path) -> None:
    """Keep the tiny tokenizer out of the real home cache, and tracebacks off by default."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.delenv("SIGMA_DEBUG", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_preset(tmp_path: Path, edit: dict, name: str = "edited.json") -> Path:
    """The combinatorial example with top-level fields replaced, written into tmp_path."""
    data = json.loads(COMBINE.read_text(encoding="utf-8"))
    data.update(edit)
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- validate


def test_validate_ok(capsys) -> None:
    presets = sorted(PRESETS.glob("*.json"))
    code, out, err = run(capsys, "validate", *presets)
    assert code == 0, err
    assert err == ""
    for p in presets:
        assert f"{p}: OK" in out
    assert f"{len(presets)} of {len(presets)} presets are valid" in out


def test_validate_bad_preset_names_the_field(capsys, tmp_path: Path) -> None:
    data = json.loads(COMBINE.read_text(encoding="utf-8"))
    data["references"][0]["attributes"] = ["<idd>"]
    data["settings"]["num_timesteps"] = 1
    bad = write_preset(tmp_path, data, "bad.json")
    code, out, err = run(capsys, "validate", bad, LAYOUT)
    assert code == 2
    assert f"{bad}: FAILED" in err
    assert "references[0].attributes[0]: '<idd>' is not an attribute; did you mean '<id>'" in err
    assert "settings.num_timesteps: 1 must be an integer from 2 to 1000" in err
    assert f"{LAYOUT}: OK" in out  # the good file is still checked and reported
    assert "1 of 2 presets are valid" in out


def test_validate_bad_image_and_bad_prompt(capsys, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    data = json.loads(COMBINE.read_text(encoding="utf-8"))
    data["references"][0]["image"] = "broken.png"
    broken = write_preset(tmp_path, data, "broken.json")
    bad_prompt = write_preset(tmp_path, {"prompt": "A photo of [1] and [5]"}, "prompt.json")
    code, _, err = run(capsys, "validate", broken, bad_prompt)
    assert code == 2
    assert "references[slot 1].image" in err
    assert f"{bad_prompt}: FAILED\n  prompt: " in err and "slot 5" in err


def test_validate_prints_plan_warnings(capsys, tmp_path: Path) -> None:
    unused = write_preset(tmp_path, {"prompt": "A photo of [1] holding [2]"})
    code, out, _ = run(capsys, "validate", unused)
    assert code == 0
    assert f"{unused}: OK" in out
    assert "warning: slot 3 has an image but the prompt never uses it" in out


def test_validate_missing_file(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    code, out, err = run(capsys, "validate", missing)
    assert code == 2
    assert f"{missing}: FAILED" in err and "cannot read the preset" in err
    assert "OK" not in out


# ----------------------------------------------------------------------------- inspect


def test_inspect_shows_segments_groups_positions(capsys, tokenizer) -> None:
    plan = build_plan(load_preset(COMBINE), tokenizer)
    code, out, err = run(capsys, "inspect", COMBINE)
    assert code == 0, err
    assert "tiny offline tokenizer" in out and "differ from Qwen2.5's" in out
    assert plan.raw_prompt in out
    assert "<id> woman <image_1>" in out
    lines = out.splitlines()
    for i, s in enumerate(plan.segments):
        row = next(ln for ln in lines if ln.split()[:2] == [str(i), s.kind])
        assert f"[{s.start}, {s.end})" in row and str(s.length) in row
        if s.kind == "text":
            assert f"[{s.position}, {s.position + s.length})" in row
            assert json.dumps(s.text) in row
        else:
            assert f" {s.position} " in row  # one rope position for the whole block
            assert f"{s.size[0]}x{s.size[1]} px -> {s.grid[0]}x{s.grid[1]} latents" in row
    assert "group 0: slot 1 <id>" in out
    assert "group 1: slot 2 <subject>" in out
    assert "group 2: slot 3 <background>" in out
    assert f"(total {plan.length})" in out
    assert "output: 768x512 (from the last reference in the prompt)" in out
    assert "mask: on" in out
    assert "warnings: none" in out


def test_inspect_shows_warnings_and_settings_size(capsys, tmp_path: Path) -> None:
    path = write_preset(tmp_path, {"prompt": "A photo of [1] holding [2]"})
    code, out, _ = run(capsys, "inspect", path)
    assert code == 0
    assert "  - slot 3 has an image but the prompt never uses it" in out
    code, out, _ = run(capsys, "inspect", LAYOUT)
    assert code == 0
    assert "output: 1024x768 (from settings.size)" in out


def test_inspect_json(capsys, tokenizer) -> None:
    plan = build_plan(load_preset(COMBINE), tokenizer)
    code, out, _ = run(capsys, "inspect", COMBINE, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["raw_prompt"] == plan.raw_prompt
    assert report["length"] == plan.length
    assert report["output_size"] == list(plan.output_size)
    assert report["mask"] is True and report["warnings"] == []
    assert report["tokenizer_note"]
    assert sum(report["token_counts"].values()) == plan.length
    assert sum(report["experts"].values()) == plan.length
    assert report["token_counts"]["special"] == 3
    segs = report["segments"]
    assert [s["kind"] for s in segs] == [s.kind for s in plan.segments]
    for seg, s in zip(segs, plan.segments, strict=True):
        assert (seg["start"], seg["end"], seg["count"]) == (s.start, s.end, s.length)
        if s.kind == "text":
            assert seg["token_ids"] == plan.token_ids[s.start : s.end].tolist()
    assert [g["attributes"] for g in report["groups"]] == [
        ["<id>"],
        ["<subject>"],
        ["<background>"],
    ]
    for g in report["groups"]:
        (at,) = g["attribute_tokens"]
        assert plan.token_ids[at] == tokenizer.get_vocab()[g["attributes"][0]]


def test_inspect_with_tokenizer_dir(capsys, tiny_tokenizer_dir: Path) -> None:
    code, out, _ = run(capsys, "inspect", COMBINE, "--tokenizer", tiny_tokenizer_dir)
    assert code == 0
    assert f"tokenizer: {tiny_tokenizer_dir}" in out
    assert "differ from Qwen2.5's" not in out


def test_inspect_bad_tokenizer_dir(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "inspect", COMBINE, "--tokenizer", tmp_path / "none")
    assert code == 2
    assert "error: tokenizer:" in err


def test_inspect_mask_png(capsys, tmp_path: Path) -> None:
    out_png = tmp_path / "out" / "mask.png"
    code, out, err = run(capsys, "inspect", COMBINE, "--mask-png", out_png)
    assert code == 0, err
    assert f"mask picture: {out_png}" in out
    with Image.open(out_png) as img:
        assert img.format == "PNG"
        assert max(img.size) <= 1024


def test_inspect_mask_png_unwritable(capsys, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "inspect", COMBINE, "--mask-png", tmp_path / "file" / "m.png")
    assert code == 2
    assert "error: --mask-png: cannot write" in err


def test_inspect_png_with_composition(capsys, tmp_path: Path) -> None:
    png = write_png(Image.new("RGB", (64, 64)), load_preset(LAYOUT), tmp_path / "result.png")
    code, out, _ = run(capsys, "inspect", png)
    assert code == 0
    assert "<layout> the box sketch <image_1>" in out


def test_inspect_missing_file(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "inspect", tmp_path / "missing.json")
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and "cannot read the preset" in err


# ----------------------------------------------------------------------------- other commands


def test_make_tokenizer(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "tok"
    code, out, _ = run(capsys, "make-tokenizer", out_dir)
    assert code == 0
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} <= {
        p.name for p in out_dir.iterdir()
    }
    vocab = load_tokenizer(out_dir).get_vocab()
    printed = {ln.split()[0]: int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("  <")}
    for token in (*ATTRIBUTES, "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"):
        assert printed[token] == vocab[token]


def test_make_tokenizer_with_qwen_ids(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "make-tokenizer", tmp_path / "tok", "--qwen-ids")
    assert code == 0
    assert "<|im_start|>       151644" in out
    assert "<style>            151665" in out
    assert "<select>           151679" in out


def test_attributes(capsys) -> None:
    code, out, _ = run(capsys, "attributes")
    assert code == 0
    for i, token in enumerate(ATTRIBUTES):
        assert any(ln.split()[:2] == [token, str(151665 + i)] for ln in out.splitlines())


def test_tiny_tokenizer_is_cached(monkeypatch, tmp_path: Path) -> None:
    from sigma_core.planning import tokenizer as tk

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = tk.load_tiny_tokenizer()
    (cached,) = (tmp_path / "sigma-studio").iterdir()
    assert cached.name.startswith("tiny-tokenizer-")

    def no_rewrite(*args, **kwargs):
        raise AssertionError("the cached tokenizer was written again")

    monkeypatch.setattr(tk, "make_tiny_tokenizer", no_rewrite)
    assert tk.load_tiny_tokenizer().get_vocab() == first.get_vocab()


# ----------------------------------------------------------------------------- exit codes


def test_internal_error_exits_1_without_traceback(capsys, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    import sigma_core.planning

    monkeypatch.setattr(sigma_core.planning, "build_plan", boom)
    code, _, err = run(capsys, "inspect", COMBINE)
    assert code == 1
    assert "internal error: RuntimeError: boom" in err
    assert "report it" in err
    assert "Traceback" not in err

    code, _, err = run(capsys, "inspect", COMBINE, "--debug")
    assert code == 1 and "Traceback" in err

    monkeypatch.setenv("SIGMA_DEBUG", "1")
    code, _, err = run(capsys, "validate", COMBINE)
    assert code == 1 and "Traceback" in err


@pytest.mark.parametrize(
    "argv", [[], ["inspect"], ["frobnicate"], ["inspect", "x.json", "--bogus"]]
)
def test_usage_errors_exit_2(capsys, argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage:" in err


def test_help_exits_0(capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "validate" in out and "inspect" in out


def test_module_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("SIGMA_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "sigma_core", "inspect", str(COMBINE.relative_to(ROOT))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "raw SIGMA prompt:" in result.stdout
    assert "group 2: slot 3 <background>" in result.stdout


def test_saved_copy_of_a_preset_validates(capsys, tmp_path: Path) -> None:
    """A preset saved elsewhere keeps finding the shipped assets."""
    copy = save_preset(load_preset(COMBINE), tmp_path / "copy.json")
    code, out, _ = run(capsys, "validate", copy)
    assert code == 0 and f"{copy}: OK" in out


# ----------------------------------------------------------------------------- engine commands


def test_make_tiny_writes_official_layout(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "make-tiny", tmp_path / "ckpt", "--seed", "5", "--layers", "1")
    assert code == 0 and "seed 5" in out
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"llm_config.json", "vit_config.json", "ema.safetensors", "ae.safetensors"} <= names


def test_generate_with_a_checkpoint(capsys, tmp_path: Path, tiny_checkpoint: Path) -> None:
    out_png = tmp_path / "gen.png"
    code, out, err = run(
        capsys, "generate", COMBINE, "--checkpoint", tiny_checkpoint, "--steps", "3",
        "--size", "128x128", "--seed", "9", "-o", out_png,
    )  # fmt: skip
    assert code == 0, err
    assert "seed 9" in out and "preview engine (random weights)" in out
    assert "step 2/2" in err
    from sigma_core import read_png_composition

    assert Image.open(out_png).size == (128, 128)
    assert read_png_composition(out_png).settings.seed == 9


def test_generate_bad_inputs_exit_2(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "generate", COMBINE, "--checkpoint", tmp_path / "none")
    assert code == 2 and "not a checkpoint folder" in err
    code, _, err = run(capsys, "generate", COMBINE, "--size", "big")
    assert code == 2 and "--size (settings.size): 'big' is not WIDTHxHEIGHT" in err
