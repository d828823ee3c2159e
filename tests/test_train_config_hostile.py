"""Hostile training configs (issue 20, section 1): each is exit 2 with one short sentence,
quickly, before the model loads; a FIFO is never opened. Each case reads and writes only its
tmp_path (the `confined` marker, tests/confine.py); validate and inspect also read the tiny
tokenizer the tool keeps in the user cache."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from sigma_core.cli import main as cli_main
from sigma_core.errors import SigmaInputError
from sigma_core.training.config import load_config

GOOD = "base: ckpt\ndata: [shards]\n"

pytestmark = pytest.mark.confined("user_cache_tokenizer")


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Any of these cases reaching the trainer (the model load) fails the test."""
    import sigma_core.training.trainer as trainer

    def refuse(*args, **kwargs):
        raise AssertionError("the model started loading")

    monkeypatch.setattr(trainer, "Trainer", refuse)


def _train(capsys, config: Path, *sets: str) -> str:
    """Run `train --config`, assert exit 2 quickly with one short sentence; its message."""
    start = time.perf_counter()
    args = ["train", "--config", str(config)] + [x for s in sets for x in ("--set", s)]
    assert cli_main(args) == 2
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err) < 500 and "\n" not in err, err
    return err


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def _laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nbase: x\ndata: *a{levels}\n"


@pytest.mark.timeout(10)
def test_billion_laughs_is_refused_at_once(tmp_path, capsys):
    text = _laughs(9)
    assert len(text) < 1000
    err = _train(capsys, _write(tmp_path, text))
    assert "each alias counted" in err
    with pytest.raises(SigmaInputError, match="each alias counted"):
        load_config(_write(tmp_path, _laughs(6)))
    err = _train(capsys, _write(tmp_path, GOOD), "data=[" + "x," * 12_000 + "]")
    assert "--set" in err  # a long --set value is cut in the message


def test_a_long_value_is_cut_in_the_message(tmp_path, capsys):
    err = _train(capsys, _write(tmp_path, GOOD + f"train: {'y' * 5000}\n"))
    assert "train:" in err and "..." in err


def test_too_large_a_file_is_refused_before_reading(tmp_path, capsys):
    err = _train(capsys, _write(tmp_path, GOOD + "#" * (2 << 20) + "\n"))
    assert "at most 1 MB" in err


@pytest.mark.timeout(10)
def test_a_fifo_config_is_never_opened(tmp_path, capsys):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    err = _train(capsys, fifo)
    assert "not a regular file" in err


@pytest.mark.timeout(10)
def test_a_fifo_image_is_not_a_regular_file_for_validate_and_inspect(
    tmp_path, capsys, user_cache_tokenizer
):
    from sigma_core.inputs.preset import PRESET_FORMAT, PRESET_VERSION

    os.mkfifo(tmp_path / "ref.png")
    preset = tmp_path / "p.json"
    preset.write_text(
        json.dumps(
            {
                "format": PRESET_FORMAT,
                "version": PRESET_VERSION,
                "prompt": "a <1> cat",
                "references": [{"slot": 1, "image": "ref.png"}],
            }
        )
    )
    for command in ("validate", "inspect"):
        assert cli_main([command, str(preset)]) == 2
        err = capsys.readouterr().err
        assert "is not a regular file" in err and "was not found" not in err, err
    fifo_png = tmp_path / "saved.png"
    os.mkfifo(fifo_png)
    for command in ("validate", "inspect"):
        assert cli_main([command, str(fifo_png)]) == 2
        assert "not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [
        "lr: " + "9" * 400,
        "ema: " + "9" * 400,
        "trackers: 5",
        "data: 5",
        "data: " + "[" * 50_000 + "]" * 50_000,
        "data: {path: 1}",
        "lr: .nan",
        "sample_preset: 5",
        "latent_cache: 5",
        "latent_cache: ''",
        "latent_cache_bytes: -1",
        "latent_cache_bytes: " + "9" * 400,
        "latent_cache_bytes: lots",
    ],
    ids=[
        "lr-huge",
        "ema-huge",
        "trackers-int",
        "data-int",
        "data-deep",
        "data-mapping",
        "lr-nan",
        "sample-preset-int",
        "cache-int",
        "cache-empty",
        "cache-bytes-negative",
        "cache-bytes-huge",
        "cache-bytes-word",
    ],
)
def test_wrong_kinds_and_sizes_are_exit_2(tmp_path, capsys, extra):
    err = _train(capsys, _write(tmp_path, GOOD + extra + "\n"))
    assert extra.split(":")[0] + ":" in err or "nested" in err


def test_lr_written_1e_5_is_a_number(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD + "lr: 1e-5\nmin_lr: 1e-7\n"), {"ema": "9.9e-1"})
    assert (cfg.lr, cfg.min_lr, cfg.ema) == (1e-5, 1e-7, 0.99)
    with pytest.raises(SigmaInputError, match="lr:"):
        load_config(_write(tmp_path, GOOD + "lr: fast\n"))


def test_output_dir_that_cannot_be_written_is_refused_first(tmp_path, capsys, monkeypatch):
    config = _write(tmp_path, GOOD)
    (tmp_path / "file").write_text("x")
    err = _train(capsys, config, f"output_dir={tmp_path / 'file'}")
    assert "not a folder" in err
    err = _train(capsys, config, f"output_dir={tmp_path / 'file' / 'run'}")
    assert "not a folder" in err
    # A folder the run may not write (a read-only file system, or no permission): root passes
    # every permission check, so os.access's answer for it is arranged here.
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and access(p, mode))
    err = _train(capsys, config, f"output_dir={locked / 'run'}")
    assert "not writable" in err


def test_the_shipped_configs_are_the_paper_and_the_released_script():
    """configs/train_sigma.yaml is the paper's recipe (the generation branch, mask and W_tau);
    configs/train_sigma_released.yaml is SIGMA's script/finetune.sh (its flags, by value)."""
    root = Path(__file__).resolve().parents[1] / "configs"
    paper = load_config(root / "train_sigma.yaml")
    assert (paper.train, paper.mask, paper.attribute_projection) == ("gen", True, True)
    released = load_config(root / "train_sigma_released.yaml")
    assert (released.train, released.mask, released.attribute_projection) == ("full", False, False)
    assert released.layout == "training" and released.warmup_steps == 0
    assert (released.steps, released.save_every, released.max_tokens) == (30_000, 5_000, 30_000)
    assert (released.lr, released.min_lr, released.ema, released.eps) == (2e-5, 1e-7, 0.9999, 1e-15)
    assert (released.text_dropout, released.image_dropout, released.vit_dropout) == (0.1, 0.3, 0.3)


def test_a_latent_cache_that_cannot_be_written_is_refused_first(tmp_path, capsys, monkeypatch):
    config = _write(tmp_path, GOOD)
    (tmp_path / "file").write_text("x")
    for where in (tmp_path / "file", tmp_path / "file" / "cache"):
        err = _train(capsys, config, f"latent_cache={where}")
        assert "latent_cache" in err and "not a folder" in err
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and access(p, mode))
    err = _train(capsys, config, f"latent_cache={locked / 'cache'}")
    assert "latent_cache" in err and "not writable" in err
