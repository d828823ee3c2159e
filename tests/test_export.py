"""Export never destroys anything: it writes into a private folder moved in place when complete,
refuses a non-empty OUT_DIR without --overwrite and a base checkpoint even with it, and every
OUT_DIR it cannot use (a file, a device, a long name, a read-only or full disk) is an exit 2
with one sentence and nothing left behind. ``inspect --mask-png`` keeps an existing file unless
--overwrite. The training checkpoints here are written by hand: export needs no trained run.
Each case reads and writes only its tmp_path (the `confined` marker, tests/confine.py); inspect
also reads the tiny tokenizer the tool keeps in the user cache."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sigma_core.cli import main as cli_main
from sigma_core.training.config import TrainConfig
from tests.confine import unwatched

ROOT = Path(__file__).resolve().parent.parent
COMBINE = ROOT / "presets" / "combine_astronaut_cat_rocket.json"
KEY = "attribute_embed.weight"

pytestmark = pytest.mark.confined("user_cache_tokenizer")


def _training_checkpoint(folder: Path, train: str = "gen") -> Path:
    """A training checkpoint as the trainer writes one, small: EMA ones, raw weights twos."""
    cfg = TrainConfig(base="base", data=("data",)).to_dict()
    cfg["train"] = train
    folder.mkdir(parents=True)
    save_file({KEY: torch.ones(4, 4)}, str(folder / "ema.safetensors"))
    save_file({KEY: torch.full((4, 4), 2.0)}, str(folder / "trained.safetensors"))
    scheduler = {"base_lrs": [2e-5], "_last_lr": [2e-5], "last_epoch": 3, "_step_count": 4,
                 "lr_lambdas": [{}]}  # fmt: skip
    state = {"step": 3, "config": cfg, "skipped": {}, "skipped_total": 0,
             "scheduler": scheduler, "trainable": [KEY]}  # fmt: skip
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def _hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) by its relative path, with its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(root)) + "/": "" for p in root.rglob("*") if p.is_dir()}


def _export(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    code = cli_main(["export", *map(str, argv)])
    return code, capsys.readouterr().err


def _refused(code: int, err: str, *words: str) -> None:
    """Exit 2 with one line: ``error: `` and one sentence holding ``words``."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(w in lines[0] for w in words), err


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return _training_checkpoint(tmp_path / "run" / "step-0000003")


def test_export_writes_a_new_folder_and_nothing_beside_it(capsys, tmp_path, ckpt):
    code, err = _export(capsys, ckpt, tmp_path / "new" / "w")
    assert code == 0, err
    out = tmp_path / "new" / "w"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "ema.safetensors",
        "sigma_training.json",
    ]
    assert torch.equal(load_file(str(out / "ema.safetensors"))[KEY], torch.ones(4, 4))
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["w"]  # no private folder left
    (tmp_path / "empty").mkdir()
    assert _export(capsys, ckpt, tmp_path / "empty")[0] == 0  # an empty folder counts as new
    assert (tmp_path / "empty" / "ema.safetensors").is_file()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_base_checkpoint_is_never_written_over(capsys, tmp_path, ckpt, overwrite):
    from sigma_core.runtime import make_tiny_checkpoint

    base = make_tiny_checkpoint(tmp_path / "base", seed=0)
    before = _hashes(tmp_path)
    code, err = _export(capsys, ckpt, base, *(["--overwrite"] if overwrite else []))
    _refused(code, err, "holds a base checkpoint", "even with --overwrite")
    assert _hashes(tmp_path) == before


def test_a_previous_export_is_replaced_only_with_overwrite(capsys, tmp_path, ckpt):
    out = tmp_path / "w"
    assert _export(capsys, ckpt, out)[0] == 0
    before = _hashes(tmp_path)
    code, err = _export(capsys, ckpt, out, "--raw")
    _refused(code, err, "already exists and is not empty", "--overwrite")
    assert _hashes(tmp_path) == before
    code, err = _export(capsys, ckpt, out, "--raw", "--overwrite")
    assert code == 0, err
    assert torch.equal(load_file(str(out / "ema.safetensors"))[KEY], torch.full((4, 4), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "w"]  # no old or private folder


def test_a_folder_without_state_json_is_not_a_training_checkpoint(capsys, tmp_path):
    """export (the command and the function) and resume's find say it the same way, from the
    one reader of state.json."""
    from sigma_core.errors import CheckpointError
    from sigma_core.training.checkpoints import export, find

    (tmp_path / "plain").mkdir()
    for folder in (tmp_path / "plain", tmp_path / "missing"):
        words = f"{folder}: not a training checkpoint (no state.json)"
        _refused(*_export(capsys, folder, tmp_path / "w"), words)
        with pytest.raises(CheckpointError) as by_export:
            export(folder, tmp_path / "w")
        with pytest.raises(CheckpointError) as by_find:
            find(tmp_path, str(folder))
        assert str(by_export.value) == str(by_find.value) == words
    assert [p.name for p in tmp_path.iterdir()] == ["plain"]


def test_an_unknown_train_setting_leaves_nothing(capsys, tmp_path):
    ckpt = _training_checkpoint(tmp_path / "bogus", train="bogus")
    before = _hashes(tmp_path)
    code, err = _export(capsys, ckpt, tmp_path / "w")
    _refused(code, err, "state.json: config: train: 'bogus' must be one of gen, full, lora")
    assert _hashes(tmp_path) == before


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("file", "exists and is not a folder"),
        ("/dev/full", "exists and is not a folder"),
        ("x" * 300, "File name too long"),
    ],
)
def test_an_unusable_out_dir_is_refused_and_left_as_it_was(capsys, tmp_path, ckpt, target, words):
    out = Path(target) if target.startswith("/") else tmp_path / target
    if target == "file":
        out.write_bytes(b"keep me")
    with unwatched():  # the test's own look at /dev; export may neither read nor write there
        dev = sorted(os.listdir("/dev"))
    before = _hashes(tmp_path)
    _refused(*_export(capsys, ckpt, out), words)
    assert _hashes(tmp_path) == before
    with unwatched():
        assert sorted(os.listdir("/dev")) == dev


def test_a_read_only_file_system_leaves_nothing(capsys, tmp_path, ckpt, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    before = _hashes(tmp_path)
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    _refused(*_export(capsys, ckpt, tmp_path / "w"), "cannot write", "Read-only file system")
    assert _hashes(tmp_path) == before


def test_a_failed_final_rename_keeps_the_previous_export(capsys, tmp_path, ckpt, monkeypatch):
    out = tmp_path / "w"
    assert _export(capsys, ckpt, out)[0] == 0
    before = _hashes(tmp_path)
    rename = os.rename

    def staging_refused(src, dst):
        if ".writing-" in os.fspath(src):
            raise OSError(errno.EROFS, "Read-only file system")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", staging_refused)
    code, err = _export(capsys, ckpt, out, "--raw", "--overwrite")
    _refused(code, err, "Read-only file system")
    assert _hashes(tmp_path) == before


def test_a_full_disk_is_found_first_and_leaves_nothing(capsys, tmp_path, ckpt, monkeypatch):
    before = _hashes(tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1000))
    _refused(*_export(capsys, ckpt, tmp_path / "w"), "not enough free disk space")
    assert _hashes(tmp_path) == before


def test_a_disk_filling_up_while_writing_leaves_nothing(capsys, tmp_path, ckpt, monkeypatch):
    import sigma_core.training.checkpoints as checkpoints

    def fills_up(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    before = _hashes(tmp_path)
    monkeypatch.setattr(checkpoints, "save_file", fills_up)
    _refused(*_export(capsys, ckpt, tmp_path / "w"), "disk full")
    assert _hashes(tmp_path) == before


def test_inspect_mask_png_keeps_an_existing_file_unless_overwrite(
    capsys, tmp_path, user_cache_tokenizer
):
    png = tmp_path / "mask.png"
    png.write_bytes(b"keep me")
    before = _hashes(tmp_path)
    code = cli_main(["inspect", str(COMBINE), "--mask-png", str(png)])
    _refused(code, capsys.readouterr().err, "--mask-png", "already exists", "--overwrite")
    assert _hashes(tmp_path) == before
    assert cli_main(["inspect", str(COMBINE), "--mask-png", str(png), "--overwrite"]) == 0
    with Image.open(png) as img:
        assert img.format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]  # no temporary file left
