"""Training checkpoints, the EMA, and the export to SIGMA weights.

A checkpoint folder holds only data formats, never pickle:

- ``trained.safetensors``: the trained parameters (full, gathered from every process);
- ``ema.safetensors``: their EMA; ``optimizer.safetensors`` + ``optimizer.json``: AdamW's
  moments and its parameter groups, keyed by parameter name;
- ``state.json``: step, scheduler, skip counts, the config; ``rank-R.json`` and
  ``rank-R.safetensors``: each process's data position and RNG states.

It is written to ``<name>.tmp`` and renamed when complete, so a crash never leaves a half
checkpoint that resume would pick; resume and export check what they read against each file's
schema first (:mod:`sigma_core.training.readback`). Export writes ``ema.safetensors`` under the
official BAGEL key names (LoRA merged into the weights), which
``SigmaPipeline.from_pretrained(base, sigma_weights=...)`` loads unchanged, and a model card,
into a new folder the same way: it never writes over a base checkpoint, nor a previous export
unless asked.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from sigma_core.errors import CheckpointError
from sigma_core.inputs.outfile import check_output_folder, staged_folder
from sigma_core.runtime.loader import (
    AE_FILE,
    LLM_CONFIG_FILE,
    TRAINING_FORMAT,
    TRAINING_META_FILE,
    WEIGHTS_FILE,
)
from sigma_core.training.data import DataPosition
from sigma_core.training.readback import (
    EMA_FILE,
    OPTIMIZER_FILE,
    OPTIMIZER_TENSORS,
    RANK_FILES,
    STATE_FILE,
    TRAINED_FILE,
    check_names,
    read_checkpoint,
    read_state,
)

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
CARD_FILE = "README.md"
# What each `train` setting trained, for the model card.
TRAINED = {
    "gen": "the generation branch (gen expert, connectors, W_tau)",
    "full": "every weight but the fixed position table",
    "lora": "LoRA rank {rank} on the gen expert, merged",
}
# Files that mark a base (BAGEL) checkpoint folder: an export never writes over one.
BASE_FILES = ("config.json", LLM_CONFIG_FILE, "vit_config.json", AE_FILE)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value on the CPU (an FSDP shard is gathered first)."""
    full = getattr(t, "full_tensor", None)
    return (full() if full else t).detach().cpu().contiguous()


def _named(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters by their names in the unwrapped model (DDP's ``module.`` prefix removed)."""
    inner = getattr(model, "module", model)
    return dict(inner.named_parameters())


class ParamEMA:
    """An fp32 exponential moving average of the trained parameters (BAGEL keeps one at
    0.9999), updated in place after every optimizer step; sharded like the parameters."""

    def __init__(self, model: nn.Module, names: list[str], decay: float) -> None:
        params = _named(model)
        self.names, self.decay = names, decay
        self.shadow = [params[n].detach().float().clone() for n in names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = _named(model)
        current = [params[n].detach().float() for n in self.names]
        torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay)

    def full(self) -> dict[str, torch.Tensor]:
        return {n: _full(t) for n, t in zip(self.names, self.shadow, strict=True)}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, shadow in zip(self.names, self.shadow, strict=True):
            full = tensors[name].float()
            mesh = getattr(shadow, "device_mesh", None)
            if mesh is not None:  # sharded by FSDP
                from torch.distributed.tensor import DTensor, distribute_tensor

                assert isinstance(shadow, DTensor)
                full = distribute_tensor(full.to(shadow.device), mesh, shadow.placements)
            shadow.copy_(full)

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[None]:
        """The EMA values in the model's parameters for the duration (validation samples)."""
        params = _named(model)
        saved = [params[n].detach().clone() for n in self.names]
        with torch.no_grad():
            for n, shadow in zip(self.names, self.shadow, strict=True):
                params[n].copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, value in zip(self.names, saved, strict=True):
                    params[n].copy_(value)


# --------------------------------------------------------------------------- save and load


@dataclass(frozen=True)
class TrainState:
    """What a checkpoint is written from and read back into: the live objects (their values
    change, the objects do not) and this process's place among the run's processes."""

    model: nn.Module  # unwrapped (no DDP wrapper); FSDP-sharded parameters are gathered
    optimizer: torch.optim.Optimizer
    ema: ParamEMA
    names: tuple[str, ...]  # the trained parameters: the only ones a checkpoint holds
    rank: int
    main: bool  # whether this process writes the shared files
    barrier: Callable[[], None]  # waits for every process


@dataclass(frozen=True)
class Progress:
    """How far a run is: state.json (shared) plus this process's data position."""

    step: int
    position: DataPosition
    scheduler: dict[str, Any]  # the LR scheduler's state_dict
    skipped: dict[str, dict[str, Any]]  # SkipCounter.as_dict()
    skipped_total: int
    config: dict[str, Any]  # TrainConfig.to_dict()


def save(state: TrainState, progress: Progress, folder: Path) -> None:
    """Every process takes part (FSDP gathers); the main one writes the shared files."""
    tmp = folder.with_name(folder.name + ".tmp")
    if state.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    state.barrier()
    names = set(state.names)
    full = get_model_state_dict(state.model, options=FULL)
    weights = {k: v for k, v in full.items() if k in names and isinstance(v, torch.Tensor)}
    optim = get_optimizer_state_dict(state.model, state.optimizer, options=FULL)
    ema = state.ema.full()
    position = {"epoch": progress.position.epoch, "cursor": progress.position.cursor}
    host, rng = (tmp / name.format(rank=state.rank) for name in RANK_FILES)
    _write_json(host, {"position": position, **_host_rng()})
    save_file(_torch_rng(), str(rng))
    if state.main:
        save_file(_contiguous(weights), str(tmp / TRAINED_FILE))
        save_file(_contiguous(ema), str(tmp / EMA_FILE))
        tensors, groups = _flatten_optimizer(optim)
        save_file(tensors, str(tmp / OPTIMIZER_TENSORS))
        _write_json(tmp / OPTIMIZER_FILE, {"param_groups": groups})
        _write_json(tmp / STATE_FILE, _state_json(progress, state.names))
    state.barrier()
    if state.main:
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    state.barrier()


def _state_json(progress: Progress, names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "step": progress.step,
        "scheduler": progress.scheduler,
        "skipped": progress.skipped,
        "skipped_total": progress.skipped_total,
        "config": progress.config,
        "trainable": list(names),
    }


def load(state: TrainState, folder: Path) -> Progress:
    """Restore weights, optimizer, EMA and this process's RNG; returns the run's progress. Every
    file is checked first (readback), so a damaged checkpoint changes nothing."""
    params = _named(state.model)
    shapes = {name: tuple(params[name].shape) for name in state.names}
    live_rng = {key: tuple(value.shape) for key, value in _torch_rng().items()}
    files = read_checkpoint(folder, state.rank, shapes, live_rng)
    opts = StateDictOptions(full_state_dict=True, strict=False)
    trained = load_file(str(folder / TRAINED_FILE))
    # torch types the state dict as an (invariant) dict of its value union; tensors are values
    set_model_state_dict(state.model, trained, options=opts)  # type: ignore[arg-type]
    optim = _unflatten_optimizer(load_file(str(folder / OPTIMIZER_TENSORS)), files.groups)
    set_optimizer_state_dict(state.model, state.optimizer, optim, options=opts)
    state.ema.load(load_file(str(folder / EMA_FILE)))
    _set_host_rng(files.rank)
    _set_torch_rng(files.torch_rng)
    shared = files.state
    return Progress(
        step=shared["step"],
        position=DataPosition(**files.rank["position"]),
        scheduler=shared["scheduler"],
        skipped=shared["skipped"],
        skipped_total=shared["skipped_total"],
        config=shared["config"],
    )


def find(out: Path, resume: str) -> Path:
    """The checkpoint to resume: "latest" in ``out``/checkpoints, or a folder; its state.json
    is checked now, before the model loads."""
    if resume != "latest":
        folder = Path(resume)
    else:
        found = completed(out)
        if not found:
            raise CheckpointError(f"{out}/checkpoints: no checkpoint to resume from")
        folder = found[-1]
    read_state(folder)
    return folder


def completed(out: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file())


def prune(out: Path, keep: int) -> None:
    for old in completed(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- export


def export(
    checkpoint: Path,
    out_dir: Path,
    *,
    use_ema: bool = True,
    base: str | None = None,
    overwrite: bool = False,
) -> Path:
    """SIGMA weights from a training checkpoint: ``ema.safetensors`` with the trained tensors
    under BAGEL's key names (LoRA merged into its base weights, read from ``base``), and a
    model card that records data, steps, mask, W_tau and what was trained.

    ``out_dir`` must be new or empty, or with ``overwrite`` a folder of other files, never one
    holding a base checkpoint; everything is checked (free space included) before the work, and
    written into a private folder that is moved in place when complete."""
    state = read_state(checkpoint)
    cfg = state["config"]
    source = checkpoint / (EMA_FILE if use_ema else TRAINED_FILE)
    check_names(source, state["trainable"])
    needed = source.stat().st_size + 2**20
    check_output_folder(
        out_dir, overwrite=overwrite, needed_bytes=needed, keep=BASE_FILES, kept="a base checkpoint"
    )
    tensors = load_file(str(source))
    if cfg["train"] == "lora":
        tensors = _merge_lora(tensors, _base_weights(base or cfg["base"]), cfg)
    meta = {
        "format": TRAINING_FORMAT,
        "base": cfg["base"],
        "sigma_weights": cfg["sigma_weights"],
        "data": cfg["data"],
        "steps": state["step"],
        "train": cfg["train"],
        "mask": cfg["mask"],
        "attribute_projection": cfg["attribute_projection"],
        "layout": cfg["layout"],
        "weights": "ema" if use_ema else "raw",
        "skipped_rows": state["skipped"],
        "skipped_total": state["skipped_total"],
        "config": cfg,
    }
    card = model_card(meta, sorted(tensors))
    with staged_folder(out_dir) as staging:
        save_file(_contiguous(tensors), str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        _write_json(staging / TRAINING_META_FILE, meta)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
    return out_dir


def model_card(meta: dict[str, Any], keys: list[str]) -> str:
    cfg = meta["config"]
    data = "\n".join(f"  - {d}" for d in meta["data"])
    trained = TRAINED[meta["train"]].format(rank=cfg["lora_rank"])
    mask = "on (the paper's B = (C AND M) OR S)" if meta["mask"] else "off (the released code)"
    return f"""---
base_model: {meta["base"]}
library_name: sigma-studio
tags: [sigma, bagel, multi-reference, image-generation]
---
# SIGMA weights trained with SIGMA Studio

Load with `SigmaPipeline.from_pretrained(base, sigma_weights=<this folder>)`; this folder holds
{len(keys)} tensors under BAGEL's key names, which override the base checkpoint's.

| setting | value |
|---|---|
| base | `{meta["base"]}` |
| started from | `{meta["sigma_weights"] or meta["base"]}` |
| steps | {meta["steps"]} |
| trained | {trained} |
| intra-group mask | {mask} |
| attribute projection W_tau | {"trained" if meta["attribute_projection"] else "off"} |
| sequence layout | {meta["layout"]} |
| weights | {meta["weights"]} (EMA decay {cfg["ema"]}) |
| lr | {cfg["lr"]} cosine to {cfg["min_lr"]}, warm-up {cfg["warmup_steps"]} |
| tokens per batch | {cfg["max_tokens"]} |
| timestep shift | {cfg["timestep_shift"]} |
| dropout | text {cfg["text_dropout"]}, reference {cfg["image_dropout"]} |
| data rows skipped | {meta["skipped_total"]} |

Data:
{data}

The full config is in `{TRAINING_META_FILE}`.
"""


def _base_weights(base: str) -> Path:
    from sigma_core.runtime.loader import BASE_PATTERNS, resolve_checkpoint  # hub access on demand

    return resolve_checkpoint(base, patterns=BASE_PATTERNS) / WEIGHTS_FILE


def _merge_lora(
    tensors: dict[str, torch.Tensor], base_file: Path, cfg: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """W + (alpha / r) B A for every adapted Linear, under the Linear's own key."""
    scale = cfg["lora_alpha"] / cfg["lora_rank"]
    out = {k: v for k, v in tensors.items() if "lora_" not in k}
    with safe_open(str(base_file), framework="pt") as f:
        for key in sorted(k for k in tensors if ".lora_A." in k):
            prefix = key.split(".lora_A.")[0]
            a, b = tensors[key].float(), tensors[key.replace(".lora_A.", ".lora_B.")].float()
            weight = f.get_tensor(prefix + ".weight")
            out[prefix + ".weight"] = (weight.float() + scale * (b @ a)).to(weight.dtype)
    return out


# --------------------------------------------------------------------------- helpers


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _flatten_optimizer(optim: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[Any]]:
    tensors = {}
    for name, slots in optim["state"].items():
        for slot, value in slots.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{name}::{slot}"] = _full(value)
    return tensors, optim["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[Any]) -> dict[str, Any]:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, slot = key.rsplit("::", 1)
        state.setdefault(name, {})[slot] = value
    return {"state": state, "param_groups": groups}


def _host_rng() -> dict[str, Any]:
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # the global generator is an MT19937: its legacy tuple
    kind, keys, pos, has_gauss, gauss = state
    version, py_state, py_gauss = random.getstate()
    return {
        "python": [version, list(py_state), py_gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }


def _set_host_rng(saved: dict[str, Any]) -> None:
    version, py_state, py_gauss = saved["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    kind, keys, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _torch_rng() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _set_torch_rng(saved: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(saved["cpu"])
    if "cuda" in saved:  # read back only where this machine has CUDA too
        torch.cuda.set_rng_state(saved["cuda"])


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
