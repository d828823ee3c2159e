"""Engine speed: prefill, time per step and passes per step, and what each sequence layout costs.

    python -m benchmarks.bench_engine            # CPU, tiny random checkpoint
    python -m benchmarks.bench_engine --full     # GPU, full BAGEL-7B-MoT sizes, random bf16 weights

The full run builds the real architecture with random weights (no download), generates 1024x1024
from 3 references of 512x512 with SIGMA's defaults, and reports seconds per step and per image,
TFLOP per pass computed from the shapes, the ratio to the compute floor at 790 TFLOP/s, and peak
memory. Every run is timed twice in one process, with the CFG branches of a step batched into
one forward and run one by one, and the ratio is reported. It ends with one summary line.

Then the layouts (sigma_core.planning.layout) on the same workload: tokens, prefill and time per
step in each, and SIGMA's training sequence with its phantom ViT blocks materialised (N zero
tokens each, as SIGMA's packer builds them) beside the compact form the engine runs.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from sigma_core import Composition, Reference, Settings, SigmaPipeline
from sigma_core.inputs.settings import LAYOUTS
from sigma_core.model import LLMConfig
from sigma_core.model.config import BAGEL_7B_MOT

PEAK_TFLOPS = 790.0  # bf16 dense compute floor used by the project's anchors
BAGEL_7B = BAGEL_7B_MOT


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


def run(pipe: SigmaPipeline, comp: Composition, *, batch_cfg: bool) -> dict[str, float]:
    stamps: list[float] = []

    def tick(*_args: object) -> None:
        if pipe.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    out = pipe(comp, output_type="latent", callback_on_step_end=tick, batch_cfg=batch_cfg)
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


def compare(pipe: SigmaPipeline, comp: Composition, repeats: int) -> dict[str, dict[str, float]]:
    """Batched and sequential CFG on the same composition, interleaved so both see the same
    machine state; the faster of ``repeats`` runs each (after a warm-up of each)."""
    best: dict[str, dict[str, float]] = {}
    for mode in ("batched", "sequential", *["batched", "sequential"] * repeats):
        r = run(pipe, comp, batch_cfg=mode == "batched")
        if mode not in best or r["step_s"] < best[mode]["step_s"]:
            best[mode] = r
    return best


def _literal_run(pipe: SigmaPipeline, comp: Composition) -> dict[str, float]:
    """The training layout with N materialised tokens per phantom block: prefill and the median
    sequential step, timed through the engine's own contexts and denoiser."""
    from sigma_core.runtime.contexts import Denoiser, prefill_contexts
    from sigma_core.runtime.sampler import Guidance, timesteps
    from tests.phantoms import literal_phantoms

    images = comp.load_images()
    plan = literal_phantoms(pipe.plan(comp, images))
    refs = pipe.encode_references(plan, images)
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    guidance = Guidance.from_settings(comp.settings)
    ts = timesteps(comp.settings.num_timesteps, comp.settings.timestep_shift, pipe.device)
    branches = guidance.steps(ts)
    t0 = time.perf_counter()
    ctx = prefill_contexts(pipe.model, plan, refs)
    sync()
    prefill = time.perf_counter() - t0
    den = Denoiser(pipe.model, ctx, plan.noise.grid, guidance, batched=False, steps=branches)
    grid = plan.noise.grid
    x = torch.randn(grid[0] * grid[1], 64, device=pipe.device)
    per_step = []
    for i, (want_text, want_img) in enumerate(branches):
        t1 = time.perf_counter()
        den(x, ts[i], want_text, want_img)
        sync()
        per_step.append(time.perf_counter() - t1)
    return {"tokens": plan.length, "prefill_s": prefill, "step_s": statistics.median(per_step)}


def layout_costs(pipe: SigmaPipeline, comp: Composition, repeats: int) -> str:
    """Tokens, prefill and s/step of each layout on ``comp``, and of the literal training
    sequence; returns the one-line summary."""
    head = f"{'layout':<22} {'tokens':>7} {'prefill ms':>11} {'ms/step (seq)':>14}"
    print(f"{head} {'vs inference':>13}")
    # interleaved, so every layout sees the same machine state; the fastest of each kept
    named = {
        layout: replace(comp, settings=comp.settings.replace(layout=layout)) for layout in LAYOUTS
    }
    rows: dict[str, dict[str, float]] = {}
    for _ in range(repeats + 1):
        for name, c in named.items():
            r = run(pipe, c, batch_cfg=False)
            r["tokens"] = r["context"] + r["query"]
            if name not in rows or r["step_s"] < rows[name]["step_s"]:
                rows[name] = r
        r = _literal_run(pipe, named["training"])
        if "training, literal" not in rows or r["step_s"] < rows["training, literal"]["step_s"]:
            rows["training, literal"] = r
    base = rows["inference"]["step_s"]
    for name, r in rows.items():
        print(f"{name:<22} {r['tokens']:>7} {r['prefill_s'] * 1e3:>11.1f} "
              f"{r['step_s'] * 1e3:>14.1f} {r['step_s'] / base:>13.2f}")  # fmt: skip
    return ", ".join(
        f"{name} {r['tokens']} tok {r['step_s'] / base:.2f}x" for name, r in rows.items()
    )


def bench_cpu(steps: int) -> str:
    from sigma_core.runtime import make_tiny_checkpoint

    with tempfile.TemporaryDirectory() as d:
        pipe = SigmaPipeline.from_pretrained(make_tiny_checkpoint(d), device="cpu")
        threads = torch.get_num_threads()
        print(f"CPU, tiny random checkpoint (2 layers, hidden 64), fp32, {threads} threads")
        print(f"{'refs':>4} {'out':>5} {'tokens':>7} {'prefill ms':>11} {'passes/step':>12} "
              f"{'batched ms/step':>16} {'sequential ms/step':>19} "
              f"{'seq/batched':>12}")  # fmt: skip
        rows = []
        for n_refs, out_size in ((1, 256), (3, 512), (3, 1024)):
            best = compare(pipe, composition(n_refs, 512, out_size, steps), repeats=3)
            b, q = best["batched"], best["sequential"]
            rows.append((b, q))
            print(f"{n_refs:>4} {out_size:>5} {b['context'] + b['query']:>7} "
                  f"{b['prefill_s'] * 1e3:>11.1f} {b['passes_per_step']:>12.2f} "
                  f"{b['step_s'] * 1e3:>16.1f} {q['step_s'] * 1e3:>19.1f} "
                  f"{q['step_s'] / b['step_s']:>12.2f}")  # fmt: skip
        print("\nlayouts, 3 refs of 512^2 -> 1024^2, sequential CFG:")
        layouts = layout_costs(pipe, composition(3, 512, 1024, steps), repeats=3)
    b, q = rows[-1]
    return (
        f"summary: cpu tiny, 3 refs -> 1024^2: prefill {b['prefill_s'] * 1e3:.0f} ms, "
        f"batched CFG {b['step_s'] * 1e3:.1f} ms/step, sequential {q['step_s'] * 1e3:.1f} "
        f"ms/step (sequential/batched {q['step_s'] / b['step_s']:.2f}), "
        f"{b['passes_per_step']:.2f} passes/step; layouts: {layouts}"
    )


def bench_full(steps: int) -> str:
    from diffusers import AutoencoderKL

    from sigma_core.model import BagelGenerator, FluxVAE, flux_vae_config, sincos_2d_table
    from sigma_core.planning import (
        QWEN25_BASE_VOCAB,
        TokenIds,
        load_tokenizer,
        make_tiny_tokenizer,
    )

    if not torch.cuda.is_available():
        return "summary: --full needs a CUDA GPU; none found"
    dev = torch.device("cuda")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(make_tiny_tokenizer(d, pad_base_vocab_to=QWEN25_BASE_VOCAB))
    ids = TokenIds.from_tokenizer(tok, embedding_rows=BAGEL_7B.vocab_size)
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: fp32 would need 55 GB first
    try:
        with dev:
            model = BagelGenerator(BAGEL_7B, vision_token_ids=(ids.vision_start, ids.vision_end))
            table = sincos_2d_table(BAGEL_7B.hidden_size, model.max_latent_size)
            model.latent_pos_embed.pos_embed.copy_(table)
            vae = FluxVAE(AutoencoderKL(**flux_vae_config()).eval())
    finally:
        torch.set_default_dtype(torch.float32)
    pipe = SigmaPipeline(model.requires_grad_(False).eval(), vae, tok)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"GPU {torch.cuda.get_device_name()}: BAGEL-7B-MoT sizes, random bf16 weights "
          f"({params:.2f} B parameters built in {build_s:.0f} s)")  # fmt: skip
    comp = composition(3, 512, 1024, steps)
    warm = composition(3, 512, 1024, 3)
    run(pipe, warm, batch_cfg=True)
    run(pipe, warm, batch_cfg=False)
    results = {}
    for batched in (True, False):
        pipe.encode_references.clear()  # each measured image pays for its reference encodes
        torch.cuda.reset_peak_memory_stats()
        r = run(pipe, comp, batch_cfg=batched)
        r["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        results[batched] = r
    r, seq = results[True], results[False]
    tflop = pass_tflop(BAGEL_7B, r["query"], r["context"])
    passes = r["passes_per_step"]
    achieved = tflop * passes / r["step_s"]
    floor_s = tflop * passes / PEAK_TFLOPS
    print(f"context {r['context']} tokens, query {r['query']} tokens, {steps - 1} steps")
    print(f"prefill {r['prefill_s']:.2f} s, reference encode {r['encode_s']:.2f} s")
    for name, x in (("batched CFG", r), ("sequential CFG", seq)):
        print(f"{name}: {x['step_s']:.3f} s/step ({passes:.2f} passes), "
              f"{x['total_s']:.1f} s/image, peak {x['peak_gib']:.1f} GiB")  # fmt: skip
    print(
        f"{tflop:.1f} TFLOP/pass, {achieved:.0f} TFLOP/s achieved (batched), "
        f"{achieved / PEAK_TFLOPS:.1%} of {PEAK_TFLOPS:.0f} (floor {floor_s:.3f} s/step)"
    )
    print("layouts, sequential CFG:")
    layouts = layout_costs(pipe, comp, repeats=0)
    return (
        f"summary: {torch.cuda.get_device_name()} bf16 1024^2 3x512^2 refs: batched "
        f"{r['step_s']:.3f} s/step, {r['total_s']:.1f} s/image, sequential "
        f"{seq['step_s']:.3f} s/step (sequential/batched {seq['step_s'] / r['step_s']:.2f}), "
        f"{tflop:.1f} TFLOP/pass, {r['step_s'] / floor_s:.2f}x the 790 TFLOP/s floor, "
        f"peak {r['peak_gib']:.1f} GiB; layouts: {layouts}"
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
