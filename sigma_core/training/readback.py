"""What a training checkpoint must hold to be read back: the declared schema of each JSON file
(``state.json``, ``optimizer.json``, ``rank-R.json``) and the checks of its safetensors files
against the model, from their headers. Resume checks every file before it changes anything, and
export checks what it reads, so a damaged or edited checkpoint is refused naming the file and
the field (a CheckpointError: exit 2), never a traceback halfway through.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sigma_core.errors import CheckpointError, SigmaInputError
from sigma_core.inputs.records import (
    Anything,
    Bool,
    Fixed,
    Int,
    Map,
    Maybe,
    Num,
    Obj,
    Seq,
    Str,
    read_record,
)
from sigma_core.model.weights import check_tensors, header_shapes
from sigma_core.runtime.loader import SKIPPED_ROWS
from sigma_core.training.config import MAX_STEPS, config_from_dict

STATE_FILE, OPTIMIZER_FILE = "state.json", "optimizer.json"
TRAINED_FILE, EMA_FILE, OPTIMIZER_TENSORS = (
    "trained.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
)
RANK_FILES = "rank-{rank}.json", "rank-{rank}.safetensors"  # each process's own state
ADAMW_SLOTS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
Shapes = dict[str, tuple[int, ...]]

# The trainer's AdamW has one parameter group; its LR scheduler keeps one value per group.
_PER_GROUP = Seq(Num(0), length=1)
SCHEDULER = Obj(
    {
        "base_lrs": _PER_GROUP,
        "_last_lr": _PER_GROUP,
        "last_epoch": Int(0, MAX_STEPS),
        "_step_count": Int(1, MAX_STEPS + 1),
        "lr_lambdas": Seq(Maybe(Obj({})), length=1),  # a partial's (empty) __dict__
        "verbose": Bool(),
        "_is_initial": Bool(),
        "_get_lr_called_within_step": Bool(),
    },
    optional=("verbose", "_is_initial", "_get_lr_called_within_step"),  # by torch version
)
STATE = Obj(
    {
        "step": Int(0, MAX_STEPS),  # and at most the config's steps (read_state)
        "scheduler": SCHEDULER,
        "skipped": SKIPPED_ROWS,
        "skipped_total": Int(),
        "config": Map(Anything()),  # then read as a TrainConfig (read_state)
        "trainable": Seq(Str()),
    }
)
_FLAGS = ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay")
GROUP = Obj(
    {
        "params": Seq(Str()),
        "lr": Num(0),
        "betas": Fixed((Num(0), Num(0))),
        "eps": Num(0),
        "weight_decay": Num(0),
        "initial_lr": Num(0),  # set by the LR scheduler
        "foreach": Maybe(Bool()),
        "fused": Maybe(Bool()),
        **{flag: Bool() for flag in _FLAGS},
    },
    optional=("initial_lr", "foreach", "fused", *_FLAGS),  # by torch version
)
OPTIMIZER = Obj({"param_groups": Seq(GROUP, length=1)})
# MT19937's 624 words, as Python's random and numpy's legacy generator hold them.
_WORDS = (Int(0, 2**32 - 1),) * 624
RANK = Obj(
    {
        "position": Obj({"epoch": Int(), "cursor": Int()}),
        # random.getstate(): version 3, the words and the index, the cached gauss
        "python": Fixed((Int(3, 3), Fixed((*_WORDS, Int(0, 624))), Maybe(Num()))),
        # np.random.get_state(legacy=True): kind, words, index, has_gauss, gauss
        "numpy": Fixed((Str(("MT19937",)), Fixed(_WORDS), Int(0, 624), Int(0, 1), Num())),
    }
)


@dataclass(frozen=True)
class CheckpointFiles:
    """What resume reads from a checkpoint folder, every file checked: its shared state, AdamW's
    parameter groups, and this process's data position, host and torch RNG states."""

    state: dict[str, Any]
    groups: list[dict[str, Any]]
    rank: dict[str, Any]
    torch_rng: dict[str, torch.Tensor]


def read_state(folder: Path) -> dict[str, Any]:
    """``state.json``, checked, its config read as a TrainConfig (every field present). A
    folder without one is not a training checkpoint (resume and export both say so here)."""
    path = folder / STATE_FILE
    if not os.path.lexists(path):
        raise CheckpointError(f"{folder}: not a training checkpoint (no {STATE_FILE})")
    state = read_record(path, STATE)
    try:
        cfg = config_from_dict(state["config"], where=f"{path}: config")
    except SigmaInputError as e:
        raise CheckpointError(str(e)) from None
    if state["step"] > cfg.steps:
        raise CheckpointError(
            f"{path}: step: {state['step']:,} is past the run's {cfg.steps:,} steps"
        )
    return {**state, "config": cfg.to_dict()}


def read_checkpoint(folder: Path, rank: int, shapes: Shapes, rng: Shapes) -> CheckpointFiles:
    """Every file resume reads, checked against its schema, ``shapes`` (the trained parameters'
    names and shapes in this run's model) and ``rng`` (this machine's torch RNG states)."""
    state = read_state(folder)
    if sorted(state["trainable"]) != sorted(shapes):
        raise CheckpointError(
            f"{folder}: trained with train={state['config']['train']!r}; its parameters do not "
            "match this run's (resume with the same 'train' and model)"
        )
    hint = "(the trained parameters of this run's model)"
    for name in (TRAINED_FILE, EMA_FILE):
        check_tensors(header_shapes(folder / name), shapes, source=str(folder / name), hint=hint)
    groups = _read_optimizer(folder, shapes)
    host, tensors = (folder / name.format(rank=rank) for name in RANK_FILES)
    if not host.is_file():
        raise CheckpointError(f"{folder}: has no state for process {rank} (fewer processes?)")
    return CheckpointFiles(state, groups, read_record(host, RANK), _read_torch_rng(tensors, rng))


def check_names(path: Path, names: list[str]) -> None:
    """The tensors in ``path`` are exactly ``names`` (export has no model to give shapes)."""
    found = header_shapes(path)
    expected = {name: found.get(name, ()) for name in names}  # the names alone are compared
    check_tensors(found, expected, source=str(path), hint="(state.json's trainable list)")


def _read_optimizer(folder: Path, shapes: Shapes) -> list[dict[str, Any]]:
    """optimizer.json's groups, naming the trained parameters, and optimizer.safetensors'
    tensors: each ``name::slot`` of a trained parameter, its shape (a scalar ``step``)."""
    path = folder / OPTIMIZER_FILE
    groups: list[dict[str, Any]] = read_record(path, OPTIMIZER)["param_groups"]
    if sorted(groups[0]["params"]) != sorted(shapes):
        raise CheckpointError(f"{path}: param_groups[0].params: not the parameters this run trains")
    found = header_shapes(folder / OPTIMIZER_TENSORS)
    expected = {}
    for key in found:
        name, _, slot = key.rpartition("::")
        if name in shapes and slot in ADAMW_SLOTS:
            expected[key] = () if slot == "step" else shapes[name]
    hint = "(AdamW's state of the trained parameters)"
    check_tensors(found, expected, source=str(folder / OPTIMIZER_TENSORS), hint=hint)
    return groups


def _read_torch_rng(path: Path, live: Shapes) -> dict[str, torch.Tensor]:
    """The torch RNG states in ``path``: the CPU's, and CUDA's where both the writer and this
    machine have one, each uint8 of the size this machine's torch uses."""
    found = {k: s for k, s in header_shapes(path).items() if k != "cuda" or "cuda" in live}
    expected = {k: s for k, s in live.items() if k != "cuda" or "cuda" in found}
    check_tensors(found, expected, source=str(path), hint="(a process's torch RNG states)")
    tensors = load_file(str(path))
    for key in expected:
        if tensors[key].dtype != torch.uint8:
            raise CheckpointError(f"{path}: {key}: {tensors[key].dtype} where torch keeps uint8")
    return {key: tensors[key] for key in expected}
