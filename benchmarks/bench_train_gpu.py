"""Training at full size on GPUs: BAGEL-7B-MoT with random weights, tokens per second and peak
memory per GPU. Ready for a lent machine; it needs no network and no checkpoint.

    python -m benchmarks.bench_train_gpu                     # one GPU: LoRA r16, bf16 weights
    accelerate launch --config_file configs/accelerate_fsdp.yaml --num_processes N \\
        -m benchmarks.bench_train_gpu --train gen            # FSDP over N GPUs: the gen branch
    python -m benchmarks.bench_train_gpu --dry-run           # the same code path on CPU, small

The model is filled on the GPU through the loader's own ``fill`` (bench_gpu.random_generator):
bf16 frozen weights, fp32 trained ones, the FLUX-size VAE in fp32. Data: the synthetic set at
512 px (about 1,030 tokens per image, 4 images a sample), packed to ``--max-tokens`` per GPU,
SIGMA's mask as a flex_attention block mask, gradient checkpointing on. A few warm-up steps
(flex_attention compiles), then timed steps; the table gives seconds per step, tokens per
second per GPU and in all, and each GPU's peak allocated memory. A time guard keeps it under
``--budget`` seconds (default 360).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_engine import BAGEL_7B
from benchmarks.bench_gpu import random_generator, random_vae, sync, tiny_tokenizer
from sigma_core.model import LLMConfig

GIB = 2**30


def spec(dry: bool) -> dict[str, Any]:
    from sigma_core.model.vae import TINY_VAE_CONFIG, flux_vae_config

    if not dry:
        return {"config": BAGEL_7B, "vae": flux_vae_config(), "device": "cuda", "size": 512}
    cfg = LLMConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=BAGEL_7B.vocab_size, rope_theta=1_000_000.0,
    )  # fmt: skip
    return {"config": cfg, "vae": {**flux_vae_config(), **TINY_VAE_CONFIG}, "device": "cpu",
            "size": 128}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", choices=("lora", "gen", "full"), default="lora")
    parser.add_argument("--max-tokens", type=int, default=30_000, help="per GPU (paper: 30K)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget", type=float, default=360.0, help="seconds, all included")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    s = spec(args.dry_run)
    device = torch.device(s["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; use --dry-run for the CPU check")
    from accelerate import PartialState

    state = PartialState()
    if device.type == "cuda":
        device = state.device
    from sigma_core import SigmaPipeline
    from sigma_core.model.precision import resolve_precision
    from sigma_core.planning import TokenIds
    from sigma_core.training.config import TrainConfig
    from sigma_core.training.synthetic import write_parquet
    from sigma_core.training.trainer import Trainer

    tokenizer = tiny_tokenizer()
    ids = TokenIds.from_tokenizer(tokenizer, embedding_rows=s["config"].vocab_size)
    weights = "fp32" if args.dry_run else "bf16"
    model = random_generator(s["config"], ids, resolve_precision(weights, device), device)
    pipe = SigmaPipeline(model, random_vae(s["vae"], device), tokenizer)
    built = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic.parquet"
        if state.is_main_process:
            write_parquet(data, 512, size=s["size"], seed=0)
        state.wait_for_everyone()
        cfg = TrainConfig(
            base="(random weights)", data=(str(data),), output_dir=str(Path(tmp) / "run"),
            train=args.train, max_tokens=args.max_tokens, max_image_size=s["size"],
            min_image_size=s["size"], steps=10_000, warmup_steps=0, trackers=(),
            mixed_precision="no" if args.dry_run else "bf16", weights_dtype=weights,
            gradient_checkpointing=True,
        )  # fmt: skip
        trainer = Trainer(cfg, pipeline=pipe)
        times, tokens = [], []
        for i in range(args.warmup + args.steps):
            if time.perf_counter() - start > args.budget:
                print(f"time guard: stopped after {i} steps ({args.budget:.0f} s budget)")
                break
            if i == args.warmup and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            stats = trainer.train_step()
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
                tokens.append(stats.tokens)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    acc = trainer.accelerator
    peaks = acc.gather(torch.tensor([peak], device=acc.device)).tolist()
    step_s = statistics.median(times) if times else float("nan")
    per_gpu = statistics.median(tokens) / step_s if times else float("nan")
    result = {
        "train": args.train, "processes": acc.num_processes,
        "distributed": acc.distributed_type.name, "max_tokens": args.max_tokens,
        "build_s": built, "s_per_step": step_s, "tokens_per_s_per_gpu": per_gpu,
        "tokens_per_s": per_gpu * acc.num_processes, "peak_gib_per_gpu": [p / GIB for p in peaks],
        "timed_steps": len(times), "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else "cpu (dry run)",
    }  # fmt: skip
    if acc.is_main_process:
        print(f"{result['device']}: {args.train} on {acc.num_processes} process(es), "
              f"{acc.distributed_type.name}; built in {built:.0f} s")  # fmt: skip
        print(f"s/step {step_s:.2f} | tokens/s per GPU {per_gpu:,.0f} | tokens/s "
              f"{result['tokens_per_s']:,.0f} | peak GiB per GPU "
              f"{', '.join(f'{p:.1f}' for p in result['peak_gib_per_gpu'])}")  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
