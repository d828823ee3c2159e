"""Files the tool wrote itself, read back (issue 20, section 2): a training checkpoint's
state.json, rank-R.json, optimizer.json and safetensors files, and exported weights'
sigma_training.json, damaged one way each. Every case goes through the command line
(``train --resume``, ``export``, ``generate --sigma-weights``) and must be exit 2 with one
message naming the file and the field; a traceback is exit 1. One real run, made once, is copied
and damaged; what the trainer writes reads back through its own schemas. Each case writes only
its tmp_path and reads only that and the run's folder (the `confined` marker, tests/confine.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import save_file

from sigma_core.cli import main as cli_main
from sigma_core.errors import CheckpointError
from sigma_core.inputs.records import read_record
from sigma_core.runtime.loader import PREVIEW_RECORD, TRAINING_RECORD
from sigma_core.training.config import TrainConfig
from sigma_core.training.readback import OPTIMIZER, RANK, STATE
from tests.confine import confined

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "presets" / "select_coffee_cup.json"
SIZE = 64

pytestmark = pytest.mark.confined("run")


@dataclass(frozen=True)
class Run:
    root: Path  # holds all below, and the run's data
    base: Path  # the tiny BAGEL checkpoint
    config: Path  # the run's YAML (2 steps)
    checkpoint: Path  # after step 1 of 2
    weights: Path  # its export


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """Each in-process `train` starts accelerate anew, as a process of its own would."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    from accelerate.state import AcceleratorState, GradientState

    from sigma_core.runtime import make_tiny_checkpoint
    from sigma_core.training.synthetic import write_parquet

    root = tmp_path_factory.mktemp("readback")
    base = make_tiny_checkpoint(root / "base", seed=0)
    write_parquet(root / "data" / "train-00000.parquet", 8, size=SIZE, seed=0)
    cfg = TrainConfig(
        base=str(base), data=(str(root / "data"),), output_dir=str(root / "run"), steps=2,
        max_tokens=480, max_image_size=SIZE, min_image_size=SIZE, warmup_steps=1,
        mixed_precision="no", gradient_checkpointing=False, trackers=(), ema=0.9,
    )  # fmt: skip
    config = root / "run.yaml"
    config.write_text(cfg.to_yaml())
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    assert cli_main(["train", "--config", str(config), "--max-steps", "1"]) == 0
    checkpoint = root / "run" / "checkpoints" / "step-0000001"
    assert cli_main(["export", str(checkpoint), str(root / "weights")]) == 0
    return Run(root, base, config, checkpoint, root / "weights")


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _edit(path: Path, change) -> None:
    """Rewrite a JSON file with ``change(data)`` applied in place, or with ``change`` when it is
    the new text."""
    if isinstance(change, str):
        path.write_text(change)
        return
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _refused(capsys, code: int, *words: str) -> str:
    """Exit 2, an ``error:`` message holding ``words``, no traceback; the message."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and len(err) < 1500, err
    assert all(w in err for w in words), err
    return err


def _resume(capsys, run: Run, folder: Path, tmp_path: Path, *words: str) -> str:
    args = ["train", "--config", str(run.config), "--resume", str(folder),
            "--set", f"output_dir={tmp_path / 'out'}"]  # fmt: skip
    return _refused(capsys, cli_main(args), *words)


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _set(key: str, value: Any):
    def change(data: dict[str, Any]) -> None:
        data[key] = value

    return change


def _drop(key: str):
    def change(data: dict[str, Any]) -> None:
        del data[key]

    return change


# ----------------------------------------------------------------------------- state.json

STATE_CASES = {
    "empty-object": ("{}", "state.json: step: missing"),
    "a-list": ("[1, 2]", "state.json: expected an object, got a list"),
    "step-abc": (_set("step", "abc"), "state.json: step: 'abc' is not an integer"),
    "step-negative": (_set("step", -1000), "state.json: step: -1000 is not an integer"),
    "step-past-the-run": (_set("step", 3), "state.json: step: 3 is past the run's 2 steps"),
    "no-trainable": (_drop("trainable"), "state.json: trainable: missing"),
    "no-config": (_drop("config"), "state.json: config: missing"),
    "unknown-train": (
        lambda d: d["config"].update(train="everything"),
        "state.json: config: train: 'everything' must be one of gen, full, lora",
    ),
    "scheduler-extra": (
        lambda d: d["scheduler"].update(lr_lambda="x"),
        "state.json: scheduler.lr_lambda: unknown field",
    ),
    "skipped-negative": (
        _set("skipped", {"bad row": {"count": -1, "first": "x"}}),
        "state.json: skipped.bad row.count: -1 is not an integer >= 1",
    ),
}


@pytest.mark.parametrize("case", STATE_CASES, ids=list(STATE_CASES))
def test_a_damaged_state_json_is_refused_before_the_model_loads(run, tmp_path, capsys, case):
    change, words = STATE_CASES[case]
    folder = _copy(run.checkpoint, tmp_path)
    _edit(folder / "state.json", change)
    _resume(capsys, run, folder, tmp_path, str(folder / "state.json"), words)


def test_a_state_json_nested_200000_deep_is_a_message_not_a_recursion_error(run, tmp_path, capsys):
    folder = _copy(run.checkpoint, tmp_path)
    (folder / "state.json").write_text(_deep(200_000))
    _resume(capsys, run, folder, tmp_path, "state.json: objects and lists are nested 200000")


def test_export_refuses_the_same_damage(run, tmp_path, capsys):
    folder = _copy(run.checkpoint, tmp_path)
    _edit(folder / "state.json", _set("step", -1000))
    code = cli_main(["export", str(folder), str(tmp_path / "w")])
    _refused(capsys, code, "state.json: step: -1000")
    (folder / "state.json").write_text(run.checkpoint.joinpath("state.json").read_text())
    (folder / "ema.safetensors").unlink()
    code = cli_main(["export", str(folder), str(tmp_path / "w")])
    _refused(capsys, code, "ema.safetensors: not found")
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- the other JSON

OTHER_CASES = {
    "position-extra-key": (
        "rank-0.json",
        lambda d: d["position"].update(shard=3),
        "rank-0.json: position.shard: unknown field",
    ),
    "position-negative": (
        "rank-0.json",
        lambda d: d["position"].update(cursor=-1),
        "rank-0.json: position.cursor: -1 is not an integer >= 0",
    ),
    "python-rng-wrong-size": (
        "rank-0.json",
        lambda d: d["python"][1].__delitem__(-1),
        "rank-0.json: python[1]: expected a list of 625 items, got 624",
    ),
    "numpy-rng-index": (
        "rank-0.json",
        lambda d: d["numpy"].__setitem__(2, 1000),
        "rank-0.json: numpy[2]: 1000 is not an integer from 0 to 624",
    ),
    "optimizer-lr-string": (
        "optimizer.json",
        lambda d: d["param_groups"][0].update(lr="fast"),
        "optimizer.json: param_groups[0].lr: 'fast' is not a finite number",
    ),
    "optimizer-other-params": (
        "optimizer.json",
        lambda d: d["param_groups"][0]["params"].__delitem__(0),
        "optimizer.json: param_groups[0].params: not the parameters this run trains",
    ),
}


@pytest.mark.parametrize("case", OTHER_CASES, ids=list(OTHER_CASES))
def test_a_damaged_rank_or_optimizer_json_is_refused(run, tmp_path, capsys, case):
    name, change, words = OTHER_CASES[case]
    folder = _copy(run.checkpoint, tmp_path)
    _edit(folder / name, change)
    _resume(capsys, run, folder, tmp_path, str(folder / name), words)


# ----------------------------------------------------------------------------- safetensors

PICKLE = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."


def _pickle(path: Path) -> None:
    path.write_bytes(PICKLE)


def _random_bytes(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


def _extra_tensor(path: Path) -> None:
    from safetensors.torch import load_file

    save_file({**load_file(str(path)), "stray.weight": torch.zeros(2)}, str(path))


def _wrong_shape(path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    tensors["vae2llm.bias"] = torch.zeros(3)
    save_file(tensors, str(path))


def _rng_size(path: Path) -> None:
    save_file({"cpu": torch.zeros(100, dtype=torch.uint8)}, str(path))


def _rng_dtype(path: Path) -> None:
    save_file({"cpu": torch.zeros(torch.get_rng_state().numel())}, str(path))


WEIGHT_CASES = {
    "pickle-trained": ("trained.safetensors", _pickle, "not a readable safetensors file"),
    "random-optimizer": ("optimizer.safetensors", _random_bytes, "not a readable safetensors"),
    "missing-ema": ("ema.safetensors", Path.unlink, "ema.safetensors: not found"),
    "extra-key-ema": ("ema.safetensors", _extra_tensor, "unexpected tensors: stray.weight"),
    "wrong-shape-trained": ("trained.safetensors", _wrong_shape, "vae2llm.bias: checkpoint shape"),
    "torch-rng-size": ("rank-0.safetensors", _rng_size, "cpu: checkpoint shape [100]"),
    "torch-rng-dtype": ("rank-0.safetensors", _rng_dtype, "cpu: torch.float32 where torch keeps"),
}


@pytest.mark.parametrize("case", WEIGHT_CASES, ids=list(WEIGHT_CASES))
def test_a_damaged_weights_file_is_refused_naming_it(run, tmp_path, capsys, case):
    name, damage, words = WEIGHT_CASES[case]
    folder = _copy(run.checkpoint, tmp_path)
    damage(folder / name)
    _resume(capsys, run, folder, tmp_path, str(folder / name), words)


# ----------------------------------------------------------------------------- generate


def _generate(capsys, run: Run, weights: Path, tmp_path: Path, *words: str) -> str:
    args = ["generate", str(PRESET), "--checkpoint", str(run.base), "--sigma-weights",
            str(weights), "--steps", "2", "--size", "64x64",
            "-o", str(tmp_path / "x.png")]  # fmt: skip
    return _refused(capsys, cli_main(args), *words)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (_deep(300_000), "sigma_training.json: objects and lists are nested 300000"),
        ("{}", "sigma_training.json: format: missing"),
    ],
    ids=["nested-300000", "empty"],
)
def test_generate_refuses_a_damaged_training_record(run, tmp_path, capsys, text, words):
    weights = _copy(run.weights, tmp_path)
    (weights / "sigma_training.json").write_text(text)
    _generate(capsys, run, weights, tmp_path, words)
    assert not (tmp_path / "x.png").exists()


def test_generate_refuses_an_unknown_layout_and_pickled_weights(run, tmp_path, capsys):
    weights = _copy(run.weights, tmp_path)
    _edit(weights / "sigma_training.json", _set("layout", "sideways"))
    _generate(capsys, run, weights, tmp_path, "sigma_training.json: layout: 'sideways' is not")
    shutil.copy(run.weights / "sigma_training.json", weights)
    _pickle(weights / "ema.safetensors")
    _generate(capsys, run, weights, tmp_path, "ema.safetensors: not a readable safetensors")


# ----------------------------------------------------------------------------- round trip


def test_what_the_trainer_writes_reads_back_and_resumes(run, tmp_path, capsys):
    folder = run.checkpoint
    for name, schema in (
        ("state.json", STATE),
        ("rank-0.json", RANK),
        ("optimizer.json", OPTIMIZER),
    ):
        read_record(folder / name, schema)
    read_record(run.weights / "sigma_training.json", TRAINING_RECORD)
    read_record(run.base / "sigma_preview.json", PREVIEW_RECORD)
    copy = _copy(folder, tmp_path)
    args = ["train", "--config", str(run.config), "--resume", str(copy),
            "--set", f"output_dir={tmp_path / 'out'}"]  # fmt: skip
    assert cli_main(args) == 0, capsys.readouterr().err
    assert "step 2 of 2" in capsys.readouterr().out
    last = tmp_path / "out" / "checkpoints" / "step-0000002"
    assert json.loads((last / "state.json").read_text())["step"] == 2
    assert cli_main(["export", str(last), str(tmp_path / "w")]) == 0  # step 2 reads back too


# ----------------------------------------------------------------------------- the parsers

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
SCHEMAS = {"state": STATE, "rank": RANK, "optimizer": OPTIMIZER, "record": TRAINING_RECORD}


@pytest.mark.confined(by_test=True)  # hypothesis keeps its database in .hypothesis/
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(which=st.sampled_from(sorted(SCHEMAS)), value=JSON, key=st.text(max_size=12))
def test_any_json_is_read_or_refused_with_the_file_named(tmp_path, which, value, key):
    path = tmp_path / f"{which}.json"
    for doc in (value, {key: value}):
        path.write_text(json.dumps(doc))
        try:
            with confined([tmp_path]):
                read_record(path, SCHEMAS[which])
        except CheckpointError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
