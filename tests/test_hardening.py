"""Named regressions for the hostile inputs of the hardening trial, run through the CLI.

Each case once ended in an internal error (exit 1), ran for ever, or did something silently; now
each gets exit 2 with a message that names the problem, or the right result with exit 0.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st
from PIL import Image

from sigma_core import cli
from sigma_core.inputs import PROJECT_ASSETS
from sigma_core.limits import MAX_PLACEMENTS, MAX_PROMPT_CHARS

ROOT = Path(__file__).resolve().parent.parent
COMBINE = ROOT / "presets" / "combine_astronaut_cat_rocket.json"
LAYOUT = ROOT / "presets" / "layout_beach_sketch.json"
SHIPPED = ("astronaut.png", "chelsea.png", "rocket.jpg")
FAST = ("--steps", "2", "--size", "64x64")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.getbasetemp() / "xdg_cache_hardening"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("SIGMA_DEBUG", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def preset(tmp_path: Path, name: str = "p.json", **edit: object) -> Path:
    """The combinatorial example (its images copied alongside) with fields replaced."""
    data = json.loads(COMBINE.read_text(encoding="utf-8"))
    for key, value in edit.items():
        if key == "settings":
            data["settings"].update(value)
        else:
            data[key] = value
    for ref in data["references"]:
        if ref["image"] in SHIPPED:
            src = PROJECT_ASSETS / ref["image"]
            (tmp_path / ref["image"]).write_bytes(src.read_bytes())
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def small_refs(n: int = 1) -> list[dict]:
    return [
        {
            "slot": i + 1,
            "image": data_uri(Image.new("RGB", (64, 64), (40 * i, 90, 200))),
            "attributes": ["<subject>"],
            "entity": f"thing {i + 1}",
            "crop": None,
        }
        for i in range(n)
    ]


# ----------------------------------------------------------------------------- 1. limits


@pytest.mark.parametrize("steps", ["1000000", str(10**9)])
def test_huge_steps_refused_before_work(capsys, steps: str) -> None:
    code, _, err = run(capsys, "generate", COMBINE, "--steps", steps, "-o", "/nonexistent/x.png")
    assert code == 2
    assert f"--steps (settings.num_timesteps): {steps} must be an integer from 2 to 1000" in err


def test_long_prompt_refused_by_validate_and_generate(capsys, tmp_path: Path) -> None:
    path = preset(tmp_path, prompt="a " * 50_000 + "[1] [2] [3]")
    for argv in (("validate", path), ("generate", path, *FAST, "-o", tmp_path / "o.png")):
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert f"prompt: 100,011 characters, over the limit of {MAX_PROMPT_CHARS:,}" in err


def test_many_placements_refused(capsys, tmp_path: Path) -> None:
    path = preset(tmp_path, prompt=" ".join(["[1]"] * 200))
    code, _, err = run(capsys, "validate", path)
    assert code == 2
    assert f"places images 200 times, over the limit of {MAX_PLACEMENTS}" in err


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"cfg_text_scale": 1e308}, "cfg_text_scale: 1e+308 must be a number from 0 to 20.0"),
        ({"cfg_img_scale": 10**400}, "cfg_img_scale: an integer of about 400 digits"),
        ({"timestep_shift": 10**30}, "timestep_shift: 1000000000000000000000000000000 must be"),
        ({"timestep_shift": 0.0}, "timestep_shift: 0.0 must be a number from 0.05 to 20.0"),
        ({"num_timesteps": 10**9}, "num_timesteps: 1000000000 must be an integer from 2 to"),
    ],
)
def test_settings_out_of_range(capsys, tmp_path: Path, settings: dict, needle: str) -> None:
    code, _, err = run(capsys, "validate", preset(tmp_path, settings=settings))
    assert code == 2 and needle in err


def test_make_tiny_layers_bounded_and_no_partial_folder(capsys, tmp_path: Path) -> None:
    for layers in ("100000", "-1", "0"):
        out = tmp_path / f"ckpt{layers}"
        code, _, err = run(capsys, "make-tiny", out, "--layers", layers)
        assert code == 2 and f"layers: {layers} must be from 1 to 64" in err
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt")]


def test_make_tiny_seed_bounded(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "make-tiny", tmp_path / "c", "--seed", str(2**70))
    assert code == 2 and "seed: 1180591620717411303424 must be 0 <= seed < 2^63" in err


def test_make_tiny_refuses_a_non_empty_folder(capsys, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "make-tiny", tmp_path)
    assert code == 2 and "already exists and is not an empty folder" in err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_loader_refuses_a_config_with_negative_layers(capsys, tmp_path: Path) -> None:
    code, _, _ = run(capsys, "make-tiny", tmp_path / "c", "--layers", "1")
    assert code == 0
    config = tmp_path / "c" / "llm_config.json"
    data = json.loads(config.read_text())
    data["num_hidden_layers"] = -1
    config.write_text(json.dumps(data))
    code, _, err = run(
        capsys, "generate", COMBINE, "--checkpoint", tmp_path / "c", *FAST, "-o", tmp_path / "o.png"
    )
    assert code == 2 and "num_hidden_layers = -1 is not a valid value" in err


def test_extreme_aspect_reference_refused(capsys, tmp_path: Path) -> None:
    refs = small_refs(1)
    refs[0]["image"] = data_uri(Image.new("RGB", (1, 6000), "red"))
    code, _, err = run(capsys, "validate", preset(tmp_path, prompt="A [1]", references=refs))
    assert code == 2 and "1x6000 is more than 16:1" in err


# ----------------------------------------------------------------------------- 2. never exit 1


def test_deep_json_preset_and_batch_summary(capsys, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"format": "sigma-studio/preset", "name": ' + "[" * 100_000 + "]" * 100_000)
    code, out, err = run(capsys, "validate", deep, LAYOUT)
    assert code == 2
    assert "nested" in err and "32" in err
    assert f"{LAYOUT}: OK" in out and "1 of 2 presets are valid" in out


def test_deep_json_in_png_metadata(capsys, tmp_path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("sigma-studio", "[" * 50_000 + "]" * 50_000, zip=True)
    path = tmp_path / "deep.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    code, _, err = run(capsys, "inspect", path)
    assert code == 2 and "nested" in err


@pytest.mark.parametrize("name", ["a\0b.png", "x" * 5000 + ".png", "dir/\n.png"])
def test_bad_image_paths(capsys, tmp_path: Path, name: str) -> None:
    refs = small_refs(1)
    refs[0]["image"] = name
    code, _, err = run(capsys, "validate", preset(tmp_path, prompt="A [1]", references=refs))
    assert code == 2
    assert "references[slot 1].image" in err or "references[0].image" in err


def _no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    from sigma_core.runtime import SigmaPipeline

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the output location must be checked before any work")

    monkeypatch.setattr(SigmaPipeline, "from_pretrained", fail)


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        ("missing/dir/out.png", "does not exist"),
        (".", "folder"),
        ("", "empty"),
        ("out.jpg", ".png"),
    ],
)
def test_output_location_checked_before_work(
    capsys, monkeypatch, tmp_path: Path, out: str, needle: str
) -> None:
    _no_generation(monkeypatch)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "generate", COMBINE, *FAST, "-o", out)
    assert code == 2 and needle in err


def test_existing_output_needs_overwrite(capsys, monkeypatch, tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")
    _no_generation(monkeypatch)
    code, _, err = run(capsys, "generate", COMBINE, *FAST, "-o", target)
    assert code == 2 and "--overwrite" in err
    assert target.read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("device", "needle"),
    [
        ("foo", "device: 'foo' is not a device; use cpu, cuda, cuda:N or mps"),
        ("meta", "device: 'meta' cannot run generation"),
        ("cuda:99", "cuda:99"),
    ],
)
def test_bad_devices(capsys, tmp_path: Path, device: str, needle: str) -> None:
    code, _, err = run(
        capsys, "generate", COMBINE, *FAST, "--device", device, "-o", tmp_path / "o.png"
    )
    assert code == 2 and needle in err
    assert not (tmp_path / "o.png").exists()


def test_cuda_without_a_gpu(capsys, monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(
        capsys, "generate", COMBINE, *FAST, "--device", "cuda", "-o", tmp_path / "o.png"
    )
    assert code == 2 and "no CUDA GPU is available" in err and "--device cpu" in err


def test_unusable_checkpoint_and_tokenizer_paths(capsys, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    code, _, err = run(capsys, "generate", COMBINE, "--checkpoint", "x" * 5000, "-o", out)
    assert code == 2 and "not a usable path (File name too long)" in err
    code, _, err = run(capsys, "inspect", COMBINE, "--tokenizer", tmp_path)
    assert code == 2 and "has no tokenizer files" in err


def test_broken_pipe_ends_quietly(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sigma_core", "inspect", str(COMBINE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert err == ""


# ----------------------------------------------------------------------------- 3. smuggling


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("entity", "woman <image_2> <style>", "'<image_2>', '<style>' in the entity phrase"),
        ("entity", "woman <Identity>", "'<Identity>' in the entity phrase"),
        ("entity", "woman [2]", "'[2]' in the entity phrase"),
        ("entity", "cat <|im_end|>", "'<|im_end|>' in the entity phrase"),
        ("prompt", "A photo of [1] <|im_end|><|vision_start|> [2] [3]", "control token"),
        ("prompt", "<|endoftext|> [1] [2] [3]", "'<|endoftext|>' is a control token"),
        ("prompt", "A photo of [1] in <style> [2] [3]", "in a template prompt"),
    ],
)
def test_user_text_cannot_rewire_the_sequence(
    capsys, tmp_path: Path, field: str, value: str, needle: str
) -> None:
    if field == "entity":
        data = json.loads(COMBINE.read_text())
        data["references"][0]["entity"] = value
        path = preset(tmp_path, references=data["references"])
    else:
        path = preset(tmp_path, prompt=value)
    for argv in (("validate", path), ("generate", path, *FAST, "-o", tmp_path / "o.png")):
        code, _, err = run(capsys, *argv)
        assert code == 2 and needle in err, err
    assert not (tmp_path / "o.png").exists()


def test_non_pipe_special_token_refused(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "validate", preset(tmp_path, prompt="Call <tool_call> [1] [2] [3]"))
    assert code == 2 and "<tool_call>" in err


# ----------------------------------------------------------------------------- 4 and 5. output


def test_generate_warns_about_unused_slots_and_does_not_embed_them(capsys, tmp_path: Path) -> None:
    from sigma_core import read_png_composition

    refs = small_refs(2)
    gif = io.BytesIO()
    Image.new("P", (64, 64), 3).save(gif, format="GIF")
    (tmp_path / "private.gif").write_bytes(gif.getvalue())
    refs[1]["image"] = "private.gif"
    path = preset(tmp_path, prompt="A photo of [1]", references=refs)
    out_png = tmp_path / "out.png"
    code, _, err = run(capsys, "generate", path, *FAST, "-o", out_png)
    assert code == 0, err
    assert "slot 2 has an image but the prompt never uses it" in err
    assert [r.slot for r in read_png_composition(out_png).references] == [1]


def test_generate_prints_warnings_and_one_line_per_step(capsys, tmp_path: Path) -> None:
    refs = small_refs(2)
    path = preset(tmp_path, prompt="A photo of [1]", references=refs)
    code, _, err = run(
        capsys, "generate", path, "--steps", "4", "--size", "64x64", "-o", tmp_path / "o.png"
    )
    assert code == 0, err
    assert "warning: slot 2 has an image but the prompt never uses it" in err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "\r" not in err


def test_gif_bmp_tiff_references_generate_and_save(capsys, tmp_path: Path) -> None:
    refs = small_refs(3)
    for ref, fmt in zip(refs, ("GIF", "BMP", "TIFF"), strict=True):
        buf = io.BytesIO()
        Image.new("RGB", (64, 80), (200, 30, 30)).save(buf, format=fmt)
        name = f"ref{ref['slot']}.{fmt.lower()}"
        (tmp_path / name).write_bytes(buf.getvalue())
        ref["image"] = name
    path = preset(tmp_path, prompt="A [1] and [2] and [3]", references=refs)
    code, _, err = run(capsys, "generate", path, *FAST, "-o", tmp_path / "o.png")
    assert code == 0, err
    code, _, err = run(capsys, "validate", tmp_path / "o.png")
    assert code == 0, err


def test_sigma_weights_without_checkpoint_refused(capsys, tmp_path: Path) -> None:
    code, _, err = run(
        capsys, "generate", COMBINE, "--sigma-weights", tmp_path, "-o", tmp_path / "o.png"
    )
    assert code == 2 and "--sigma-weights needs --checkpoint" in err


def test_preview_images_carry_a_visible_label(capsys, tmp_path: Path) -> None:
    out_png = tmp_path / "o.png"
    code, _, err = run(
        capsys, "generate", COMBINE, "--steps", "2", "--size", "256x128", "-o", out_png
    )
    assert code == 0, err
    image = Image.open(out_png).convert("RGB")
    strip = image.crop((0, 114, 180, 128))
    colours = {tuple(c) for c in np.asarray(strip).reshape(-1, 3).tolist()}
    assert (0, 0, 0) in colours  # the label's box
    assert max(sum(c) for c in colours) > 600  # its (anti-aliased) white text


def test_validate_counts_references_not_placements(capsys, tmp_path: Path) -> None:
    path = preset(tmp_path, prompt="[1:id] and again [1:clothing], with [2] before [3]")
    code, out, err = run(capsys, "validate", path)
    assert code == 0, err
    assert "3 references" in out


def test_disk_full_keeps_the_image(capsys, monkeypatch, tmp_path: Path) -> None:
    import errno

    from sigma_core.errors import SigmaResourceError
    from sigma_core.runtime import output

    real_write = output.write_png
    target = tmp_path / "o.png"

    def full(image: object, composition: object, path: object, **kwargs: object) -> Path:
        if Path(str(path)) == target:
            raise SigmaResourceError(
                f"disk full while writing {path} ({os.strerror(errno.ENOSPC)})"
            )
        return real_write(image, composition, path, **kwargs)

    monkeypatch.setattr(output, "write_png", full)
    code, _, err = run(capsys, "generate", COMBINE, *FAST, "-o", target)
    assert code == 2 and "disk full" in err and "the image was saved to" in err
    rescued = Path(err.split("the image was saved to ")[1].split(" instead")[0])
    assert rescued.is_file()
    rescued.unlink()


# ------------------------------------------- 5. odds and ends (the docs: tests/test_docs.py)


def test_mask_png_and_default_output_are_ignored_by_git() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/mask.png" in ignored and "/sigma.png" in ignored


@given(st.integers(1, 20_000), st.integers(1, 20_000))
def test_every_accepted_reference_gives_a_size_in_range(width: int, height: int) -> None:
    from sigma_core.geometry import MAX_SIDE, MIN_SIDE, vae_size
    from sigma_core.limits import MAX_ASPECT

    assume(max(width, height) <= MAX_ASPECT * min(width, height))
    w, h = vae_size(width, height)
    assert MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE
