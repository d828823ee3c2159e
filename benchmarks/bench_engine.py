"""Engine speed: prefill, time per step and passes per step.

    python benchmarks/bench_engine.py            # CPU, tiny random checkpoint
    python benchmarks/bench_engine.py --full     # GPU, full BAGEL-7B-MoT sizes, random bf16 weights

The full run builds the real architecture with random weights (no download), generates 1024x1024
from 3 references of 512x512 with SIGMA's defaults, and reports seconds per step and per image,
TFLOP per pass computed from the shapes, the ratio to the compute floor at 790 TFLOP/s, and peak
memory. It ends with one summary line.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sigma_core.composition import Composition, Reference, Settings
from sigma_core.model.config import LLMConfig
from sigma_core.pipeline import SigmaPipeline

PEAK_TFLOPS = 790.0  # bf16 dense compute floor used by the project's anchors
BAGEL_7B = LLMConfig(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    rope_theta=1_000_000.0,
)


def pass_tflop(cfg: LLMConfig, n_query: int, n_context: int) -> float:
    """FLOPs of one denoising pass: the query block through every layer's projections and MLP,
    and attention over context + block (2 flops per multiply-add)."""
    d, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    per_token = 2 * (d * d + 2 * d * kv + d * d + 3 * d * cfg.intermediate_size)
    attn = 2 * 2 * n_query * (n_context + n_query) * d
    return cfg.num_hidden_layers * (n_query * per_token + attn) / 1e12


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def composition(n_refs: int, ref_size: int, out_size: int, steps: int) -> Composition:
    attrs = ["<id>", "<subject>", "<background>", "<style>", "<clothing>"]
    refs = [
        Reference(i + 1, _image(i, (ref_size, ref_size)), (attrs[i % len(attrs)],), f"thing {i}")
        for i in range(n_refs)
    ]
    prompt = "A photo that combines " + ", ".join(f"[{i + 1}]" for i in range(n_refs))
    return Composition(
        prompt + ", in warm evening light",
        refs,
        Settings(size=(out_size, out_size), num_timesteps=steps, seed=0),
    )


def run(pipe: SigmaPipeline, comp: Composition) -> dict[str, float]:
    stamps: list[float] = []

    def tick(*_args: object) -> None:
        if pipe.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    out = pipe(comp, output_type="latent", callback_on_step_end=tick)
    steps = len(stamps)
    per_step = [b - a for a, b in itertools.pairwise(stamps)]
    return {
        "prefill_s": out.timings["prefill_s"],
        "encode_s": out.timings["encode_s"],
        "step_s": statistics.median(per_step) if per_step else out.timings["denoise_s"],
        "denoise_s": out.timings["denoise_s"],
        "total_s": out.timings["total_s"],
        "passes_per_step": out.num_passes / steps,
        "context": out.plan.segments[-1].start,
        "query": out.plan.segments[-1].length,
    }


def bench_cpu(steps: int) -> str:
    from sigma_core.tiny import make_tiny_checkpoint

    with tempfile.TemporaryDirectory() as d:
        pipe = SigmaPipeline.from_pretrained(make_tiny_checkpoint(d), device="cpu")
        print("CPU, tiny random checkpoint (2 layers, hidden 64), fp32")
        print(f"{'refs':>4} {'out':>5} {'tokens':>7} {'prefill ms':>11} {'step ms':>8} "
              f"{'passes/step':>12}")  # fmt: skip
        rows = []
        for n_refs, out_size in ((1, 256), (3, 512), (3, 1024)):
            comp = composition(n_refs, 512, out_size, steps)
            run(pipe, comp)  # warm-up, and fills the reference-latent cache
            r = run(pipe, comp)
            rows.append(r)
            print(f"{n_refs:>4} {out_size:>5} {r['context'] + r['query']:>7} "
                  f"{r['prefill_s'] * 1e3:>11.1f} {r['step_s'] * 1e3:>8.1f} "
                  f"{r['passes_per_step']:>12.2f}")  # fmt: skip
    r = rows[-1]
    return (
        f"summary: cpu tiny, 3 refs -> 1024^2: prefill {r['prefill_s'] * 1e3:.0f} ms, "
        f"{r['step_s'] * 1e3:.1f} ms/step, {r['passes_per_step']:.2f} passes/step"
    )


def bench_full(steps: int) -> str:
    from sigma_core.model.bagel import BagelGenerator, sincos_2d_table
    from sigma_core.model.vae import FluxVAE, flux_vae_config
    from sigma_core.tokenizer import QWEN25_BASE_VOCAB, load_tokenizer, make_tiny_tokenizer

    if not torch.cuda.is_available():
        return "summary: --full needs a CUDA GPU; none found"
    dev = torch.device("cuda")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    from diffusers import AutoencoderKL

    torch.set_default_dtype(torch.bfloat16)  # build in bf16: fp32 would need 55 GB first
    try:
        with dev:
            model = BagelGenerator(BAGEL_7B).eval()
            table = sincos_2d_table(BAGEL_7B.hidden_size, model.max_latent_size)
            model.latent_pos_embed.pos_embed.copy_(table)
            vae = FluxVAE(AutoencoderKL(**flux_vae_config()).eval())
    finally:
        torch.set_default_dtype(torch.float32)
    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(make_tiny_tokenizer(d, pad_base_vocab_to=QWEN25_BASE_VOCAB))
    pipe = SigmaPipeline(model, vae, tok)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"GPU {torch.cuda.get_device_name()}: BAGEL-7B-MoT sizes, random bf16 weights "
          f"({params:.2f} B parameters built in {build_s:.0f} s)")  # fmt: skip
    comp = composition(3, 512, 1024, steps)
    warm = composition(3, 512, 1024, 3)
    run(pipe, warm)
    pipe._latents.clear()  # the measured image pays for its reference encodes
    torch.cuda.reset_peak_memory_stats()
    r = run(pipe, comp)
    peak = torch.cuda.max_memory_allocated() / 2**30
    tflop = pass_tflop(BAGEL_7B, r["query"], r["context"])
    passes = r["passes_per_step"]
    achieved = tflop * passes / r["step_s"]
    floor_s = tflop * passes / PEAK_TFLOPS
    n_steps = steps - 1
    print(f"context {r['context']} tokens, query {r['query']} tokens, {n_steps} steps")
    print(f"prefill {r['prefill_s']:.2f} s, reference encode {r['encode_s']:.2f} s")
    print(f"{r['step_s']:.3f} s/step ({passes:.2f} passes), {r['total_s']:.1f} s/image")
    print(
        f"{tflop:.1f} TFLOP/pass, {achieved:.0f} TFLOP/s achieved, "
        f"{achieved / PEAK_TFLOPS:.1%} of {PEAK_TFLOPS:.0f} (floor {floor_s:.3f} s/step)"
    )
    print(f"peak memory {peak:.1f} GiB")
    return (
        f"summary: {torch.cuda.get_device_name()} bf16 1024^2 3x512^2 refs: "
        f"{r['step_s']:.3f} s/step, {r['total_s']:.1f} s/image, {tflop:.1f} TFLOP/pass, "
        f"{r['step_s'] / floor_s:.2f}x the 790 TFLOP/s floor, peak {peak:.1f} GiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size model on a CUDA GPU")
    parser.add_argument("--steps", type=int, default=None, help="timesteps (default 50 / 12)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.full:
        print(bench_full(args.steps or 50))
    else:
        print(bench_cpu(args.steps or 12))


if __name__ == "__main__":
    main()
