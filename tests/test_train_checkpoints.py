"""Checkpoints without a Trainer: save and load need only a TrainState and a Progress, and
round-trip weights, AdamW, the EMA, the RNGs and the run's progress exactly. Also: no two
modules of sigma_core.training import each other, not even for type hints."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sigma_core.errors import CheckpointError
from sigma_core.training import checkpoints
from sigma_core.training.checkpoints import ParamEMA, Progress, TrainState
from sigma_core.training.config import TrainConfig
from sigma_core.training.data import DataPosition

TRAINING = Path(__file__).resolve().parents[1] / "sigma_core" / "training"
CONFIG = TrainConfig(base="base", data=("data",), steps=10).to_dict()
# what the trainer's LR scheduler (one parameter group) records after 3 steps
SCHEDULER = {"base_lrs": [0.01], "_last_lr": [0.005], "last_epoch": 3, "_step_count": 4,
             "lr_lambdas": [{}]}  # fmt: skip


def parts(seed: int, names: tuple[str, ...] = ("1.weight", "1.bias")) -> TrainState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    params = [p for n, p in model.named_parameters() if n in names]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    ema = ParamEMA(model, list(names), 0.9)
    return TrainState(model, optimizer, ema, names, rank=0, main=True, barrier=lambda: None)


def train(state: TrainState, steps: int) -> None:
    for _ in range(steps):
        loss = state.model(torch.randn(5, 4)).square().mean()
        loss.backward()
        state.optimizer.step()
        state.optimizer.zero_grad()
        state.ema.update(state.model)


def snapshot(state: TrainState) -> dict[str, torch.Tensor]:
    out = {f"p:{k}": v.detach().clone() for k, v in state.model.state_dict().items()}
    out |= {f"ema:{k}": v for k, v in state.ema.full().items()}
    for i, slots in state.optimizer.state_dict()["state"].items():
        out |= {f"opt:{i}:{k}": torch.as_tensor(v).clone() for k, v in slots.items()}
    return out


def test_save_then_load_restores_everything_exactly(tmp_path: Path) -> None:
    a = parts(0)
    train(a, 3)
    progress = Progress(
        step=3,
        position=DataPosition(1, 7),
        scheduler=SCHEDULER,
        skipped={"bad preset": {"count": 1, "first": "x.jsonl line 2: no"}},
        skipped_total=1,
        config=CONFIG,
    )
    folder = tmp_path / "checkpoints" / "step-0000003"
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    checkpoints.save(a, progress, folder)
    draws = (random.random(), np.random.rand(), torch.rand(1))
    expected = snapshot(a)
    assert not folder.with_name(folder.name + ".tmp").exists()
    shared = json.loads((folder / "state.json").read_text())
    assert shared["trainable"] == ["1.weight", "1.bias"] and shared["step"] == 3

    b = parts(0)  # the same frozen layer; trained weights, AdamW, EMA and RNGs moved on
    train(b, 1)
    assert not torch.equal(b.model[1].weight, a.model[1].weight)
    got = checkpoints.load(b, folder)
    assert got == progress
    assert (random.random(), np.random.rand(), torch.rand(1)) == draws
    restored = snapshot(b)
    assert set(restored) == set(expected)
    for key, value in expected.items():
        assert torch.equal(restored[key], value), key
    for state in (a, b):  # and both continue alike
        torch.manual_seed(9)
        train(state, 2)
    assert torch.equal(a.model[1].weight, b.model[1].weight)
    assert torch.equal(a.ema.full()["1.bias"], b.ema.full()["1.bias"])


def test_load_refuses_other_trained_parameters(tmp_path: Path) -> None:
    a = parts(0)
    progress = Progress(0, DataPosition(), SCHEDULER, {}, 0, CONFIG)
    checkpoints.save(a, progress, tmp_path / "c")
    with pytest.raises(CheckpointError, match="train='gen'"):
        checkpoints.load(parts(0, names=("1.weight",)), tmp_path / "c")


def _imports(path: Path) -> set[str]:
    """Every sigma_core.training module ``path`` names, TYPE_CHECKING imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m.rsplit(".", 1)[-1] for m in found if m.startswith("sigma_core.training.")}


def test_no_import_circles_in_training() -> None:
    graph = {p.stem: _imports(p) - {p.stem} for p in TRAINING.glob("*.py")}
    graph = {m: deps & set(graph) for m, deps in graph.items()}
    assert "trainer" not in graph["checkpoints"]

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return False

    circles = [(a, b) for a in graph for b in graph[a] if reaches(b, a)]
    assert not circles
