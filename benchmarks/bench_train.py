"""Training throughput and memory on CPU: the tiny checkpoint on the synthetic data, SIGMA's mask
on against off, as ratios within one run.

    python -m benchmarks.bench_train                   # about a minute on 2 cores
    python -m benchmarks.bench_train --json out.json   # the same, and the figures as JSON

Each variant is a Trainer over the same data and seed; their steps interleave (on, off, on,
off ...) so machine noise hits both alike. Reported per variant: median tokens per second over
the timed steps, and the peak memory of one step (weights, gradients, AdamW moments and the
activations alive at once; runtime.memory.MemoryMeter). A LoRA row and a gradient-checkpointing
row show what those trade. The mask is a dense [L, L] boolean on CPU either way, so on and off
should cost the same here; on GPU the mask becomes a flex_attention block mask (see
bench_train_gpu).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

LAYERS, HIDDEN = 4, 256
SIZE = 128  # 8 x 8 latent tokens per image
MAX_TOKENS = 2048


@dataclass(frozen=True)
class Variant:
    name: str
    changes: dict[str, Any]


VARIANTS = (
    Variant("mask on", {"mask": True}),
    Variant("mask off", {"mask": False}),
    Variant("mask on, LoRA r16", {"mask": True, "train": "lora", "lora_rank": 16}),
    Variant("mask on, grad. checkpointing", {"mask": True, "gradient_checkpointing": True}),
)


def build(folder: Path, variant: Variant, checkpoint: Path, data: Path) -> Any:
    from accelerate.state import AcceleratorState, GradientState

    from sigma_core.training.config import TrainConfig
    from sigma_core.training.trainer import Trainer

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    settings = dict(
        base=str(checkpoint), data=(str(data),), output_dir=str(folder / variant.name),
        max_tokens=MAX_TOKENS, max_image_size=SIZE, min_image_size=SIZE, steps=10_000,
        lr=1e-3, warmup_steps=0, mixed_precision="no", gradient_checkpointing=False,
        trackers=(), text_dropout=0.0, image_dropout=0.0,
    )  # fmt: skip
    cfg = TrainConfig(**{**settings, **variant.changes})
    return Trainer(cfg)


def measure(trainers: Sequence[Any], steps: int, warmup: int) -> list[dict[str, Any]]:
    from sigma_core.runtime.memory import MemoryMeter

    rates: list[list[float]] = [[] for _ in trainers]
    peaks = [0] * len(trainers)
    for i in range(warmup + steps):
        for k, trainer in enumerate(trainers):
            if i == warmup - 1:  # shapes are the batch's; one step is representative
                with MemoryMeter("cpu", [trainer.model]) as meter:
                    trainer.train_step()
                peaks[k] = meter.peak + _optimizer_bytes(trainer)
                continue
            start = time.perf_counter()
            stats = trainer.train_step()
            if i >= warmup:
                rates[k].append(stats.tokens / (time.perf_counter() - start))
    return [
        {"tokens_per_s": statistics.median(r), "peak_bytes": p}
        for r, p in zip(rates, peaks, strict=True)
    ]


def _optimizer_bytes(trainer: Any) -> int:
    """AdamW's moments live outside the model, so the meter's resident count misses them."""
    state = trainer.optimizer.state_dict()["state"]
    return sum(t.numel() * t.element_size() for s in state.values() for t in s.values()
               if torch.is_tensor(t) and t.dim() > 0)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)
    from sigma_core.runtime import make_tiny_checkpoint
    from sigma_core.training.synthetic import write_parquet

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = make_tiny_checkpoint(folder / "ckpt", layers=LAYERS, hidden=HIDDEN)
        data = folder / "synthetic.parquet"
        write_parquet(data, 256, size=SIZE, seed=0)
        trainers = [build(folder, v, checkpoint, data) for v in VARIANTS]
        results = measure(trainers, args.steps, args.warmup)
    rows = []
    base = results[0]
    print(f"tiny checkpoint: {LAYERS} layers, hidden {HIDDEN}; {SIZE} px images; "
          f"{MAX_TOKENS} tokens per batch; {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'variant':32} {'tokens/s':>10} {'vs mask on':>10} {'peak MiB':>9} {'vs mask on':>10}")
    for v, r in zip(VARIANTS, results, strict=True):
        speed = r["tokens_per_s"] / base["tokens_per_s"]
        mem = r["peak_bytes"] / base["peak_bytes"]
        print(f"{v.name:32} {r['tokens_per_s']:10,.0f} {speed:10.2f} "
              f"{r['peak_bytes'] / 2**20:9.1f} {mem:10.2f}")  # fmt: skip
        rows.append({"variant": v.name, **r, "speed_ratio": speed, "memory_ratio": mem})
    out = {"layers": LAYERS, "hidden": HIDDEN, "size": SIZE, "max_tokens": MAX_TOKENS,
           "rows": rows}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
