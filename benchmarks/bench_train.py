"""Training throughput, memory and the VAE's share of a step on CPU: the tiny checkpoint on the
synthetic data, SIGMA's mask on against off, the VAE's encodes one image at a time (as before
issue 20) against batched, the latent cache cold and warm, as ratios within one run.

    python -m benchmarks.bench_train                   # about two minutes on 2 cores
    python -m benchmarks.bench_train --size 64         # the demo config's image size
    python -m benchmarks.bench_train --json out.json   # the same, and the figures as JSON

Each variant is a Trainer over the same data and seed; their steps interleave (on, off, on,
off ...) so machine noise hits both alike. Reported per variant: median tokens per second over
the timed steps, and the peak memory of one step (weights, gradients, AdamW moments and the
activations alive at once; runtime.memory.MemoryMeter), and the share of the timed steps spent
turning the batch's images into latents (the VAE, or the cache, and the posterior draws). A LoRA
row and a gradient-checkpointing row show what those trade. The mask is a dense [L, L] boolean
on CPU either way, so on and off should cost the same here; on GPU the mask becomes a
flex_attention block mask (see bench_train_gpu). The two cache rows share one folder: the cold
run steps first and meets each sample for the first time (its hits are images repeated in the
data), the warm run then takes the same samples and reads every posterior back.
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
SIZE = 128  # 8 x 8 latent tokens per image (--size)
MAX_TOKENS = 2048


@dataclass(frozen=True)
class Variant:
    name: str
    changes: dict[str, Any]
    one_at_a_time: bool = False  # the VAE's encodes as before batching
    cache: bool = False  # the latent cache, in a folder the cache rows share


VARIANTS = (
    Variant("mask on", {"mask": True}),
    Variant("mask off", {"mask": False}),
    Variant("mask on, LoRA r16", {"mask": True, "train": "lora", "lora_rank": 16}),
    Variant("mask on, grad. checkpointing", {"mask": True, "gradient_checkpointing": True}),
    Variant("mask on, VAE one at a time (before)", {"mask": True}, one_at_a_time=True),
    Variant("mask on, latent cache cold", {"mask": True}, cache=True),
    Variant("mask on, latent cache warm", {"mask": True}, cache=True),  # after the cold one
)


def build(folder: Path, variant: Variant, checkpoint: Path, data: Path, size: int) -> Any:
    from accelerate.state import AcceleratorState, GradientState

    from sigma_core.training.config import TrainConfig
    from sigma_core.training.trainer import Trainer

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    settings = dict(
        base=str(checkpoint), data=(str(data),), output_dir=str(folder / variant.name),
        max_tokens=MAX_TOKENS, max_image_size=size, min_image_size=size, steps=10_000,
        lr=1e-3, warmup_steps=0, mixed_precision="no", gradient_checkpointing=False,
        trackers=(), text_dropout=0.0, image_dropout=0.0,
    )  # fmt: skip
    if variant.cache:
        settings["latent_cache"] = str(folder / "latent-cache")
    trainer = Trainer(TrainConfig(**{**settings, **variant.changes}))
    if variant.one_at_a_time:
        trainer.maker.encoder.batch_pixels = 0
    return trainer


def time_encodes(trainer: Any) -> list[float]:
    """The seconds the trainer spends in its maker's encode (the batch's images to latents),
    summed in the returned list's one item as it trains."""
    spent = [0.0]
    encode = trainer.maker.encode

    def timed(drafts: Any) -> Any:
        start = time.perf_counter()
        try:
            return encode(drafts)
        finally:
            spent[0] += time.perf_counter() - start

    trainer.maker.encode = timed
    return spent


def measure(trainers: Sequence[Any], steps: int, warmup: int) -> list[dict[str, Any]]:
    from sigma_core.runtime.memory import MemoryMeter

    rates: list[list[float]] = [[] for _ in trainers]
    peaks = [0] * len(trainers)
    spent = [time_encodes(t) for t in trainers]
    vae, total = [0.0] * len(trainers), [0.0] * len(trainers)
    for i in range(warmup + steps):
        for k, trainer in enumerate(trainers):
            if i == warmup - 1:  # shapes are the batch's; one step is representative
                with MemoryMeter("cpu", [trainer.model]) as meter:
                    trainer.train_step()
                peaks[k] = meter.peak + _optimizer_bytes(trainer)
                continue
            before, start = spent[k][0], time.perf_counter()
            stats = trainer.train_step()
            seconds = time.perf_counter() - start
            if i >= warmup:
                rates[k].append(stats.tokens / seconds)
                vae[k] += spent[k][0] - before
                total[k] += seconds
    return [
        {"tokens_per_s": statistics.median(r), "peak_bytes": p, "vae_share": v / t}
        for r, p, v, t in zip(rates, peaks, vae, total, strict=True)
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
    parser.add_argument("--size", type=int, default=SIZE, help="image side in px (default 128)")
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)
    from sigma_core.runtime import make_tiny_checkpoint
    from sigma_core.training.synthetic import write_parquet

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = make_tiny_checkpoint(folder / "ckpt", layers=LAYERS, hidden=HIDDEN)
        data = folder / "synthetic.parquet"
        # more samples than the run takes: the cold cache row meets each one once
        write_parquet(data, 32 * (args.warmup + args.steps), size=args.size, seed=0)
        trainers = [build(folder, v, checkpoint, data, args.size) for v in VARIANTS]
        results = measure(trainers, args.steps, args.warmup)
    rows = []
    base = results[0]
    print(f"tiny checkpoint: {LAYERS} layers, hidden {HIDDEN}; {args.size} px images; "
          f"{MAX_TOKENS} tokens per batch; {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'variant':38} {'tokens/s':>10} {'vs mask on':>10} {'VAE share':>9} "
          f"{'peak MiB':>9} {'vs mask on':>10}")  # fmt: skip
    for v, r in zip(VARIANTS, results, strict=True):
        speed = r["tokens_per_s"] / base["tokens_per_s"]
        mem = r["peak_bytes"] / base["peak_bytes"]
        print(f"{v.name:38} {r['tokens_per_s']:10,.0f} {speed:10.2f} {r['vae_share']:9.0%} "
              f"{r['peak_bytes'] / 2**20:9.1f} {mem:10.2f}")  # fmt: skip
        rows.append({"variant": v.name, **r, "speed_ratio": speed, "memory_ratio": mem})
    out = {"layers": LAYERS, "hidden": HIDDEN, "size": args.size, "max_tokens": MAX_TOKENS,
           "rows": rows}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
