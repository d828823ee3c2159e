"""Precision modes on CPU: speed, memory and drift from fp32, on a tiny random checkpoint.

    python -m benchmarks.bench_precision                  # about 3 minutes on 2 cores
    python -m benchmarks.bench_precision --json out.json  # the same, and the figures as JSON

Every mode generates the same composition (two of the shipped reference images, 256x256 output,
text and image CFG: 3 passes a step) from the same noise, each in a fresh process, so that its
peak RSS is its own: load, a short run under MemoryMeter (it doubles as the warm-up; every step
has the same shapes, so its peak is the run's), then the timed run. Reported per mode: median
seconds per denoising step and the prefill; the peak of live tensors (MemoryMeter, weights
included) against estimate_memory's prediction; the process's peak RSS over load and runs
(VmHWM, less the RSS before loading); the drift from fp32 (max |diff| of the final latent,
PSNR of the decoded image). Extra rows: fp32 with batched CFG and compiled (drift here is the
rounding of another kernel order). fp8 runs on Ada/Hopper GPUs only (see bench_gpu).

Then two figures. Markers: one pass with the block's two marker tokens in the understanding
expert, as the engine runs it, against the same pass with them routed to the generation expert;
the difference is what the markers cost (their und-expert compute, measured alone, and the
splitting and re-joining of the block around them). Loading: the peak memory of loading a
64-layer checkpoint in fp32 and in bf16, each in a fresh process, against its weights and its
file, to show that loading keeps one copy.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sigma_core import Composition, Reference, Settings, SigmaPipeline

LAYERS, HIDDEN = 6, 512  # the benchmark's checkpoint: linear layers dominate a pass
LOAD_LAYERS, LOAD_HIDDEN = 64, 512  # the loading figure's checkpoint: 0.6 GB of bf16
SIZE, TIMESTEPS, MEMORY_TIMESTEPS = 256, 5, 2
NOISE_SEED = 1
MIB = 2**20
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    """One measured configuration; each runs in its own process."""

    name: str
    precision: str
    batch_cfg: bool = False
    compile: bool = False


VARIANTS = (
    Variant("fp32", "fp32"),
    Variant("bf16", "bf16"),
    Variant("fp16", "fp16"),
    Variant("int8", "int8"),
    Variant("nf4", "nf4"),
    Variant("fp32 batched CFG", "fp32", batch_cfg=True),
    Variant("fp32 compiled", "fp32", compile=True),
)
BY_NAME = {v.name: v for v in VARIANTS}


def composition(timesteps: int = TIMESTEPS) -> Composition:
    """Two shipped references; the prompt ends with text, so text and image CFG both run."""
    refs = [
        Reference(1, "astronaut.png", ("<id>",), "woman"),
        Reference(2, "chelsea.png", ("<subject>",), "tabby cat"),
    ]
    prompt = "A candid photo of [1] holding [2] in her arms, in warm evening light"
    return Composition(prompt, refs, Settings(size=(SIZE, SIZE), num_timesteps=timesteps, seed=0))


def noise() -> torch.Tensor:
    """The initial noise every mode starts from."""
    generator = torch.Generator().manual_seed(NOISE_SEED)
    return torch.randn(1, 16, SIZE // 8, SIZE // 8, generator=generator)


def proc_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM, RssAnon, ...)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> int:
    """Restart the peak RSS (VmHWM) from the RSS now, so the imports' peak does not count;
    returns the RSS now.

    VmHWM rather than ru_maxrss: a child started by vfork + exec, as subprocess starts it,
    inherits its parent's peak into ru_maxrss, so it would show the parent's memory."""
    with contextlib.suppress(OSError):  # clear_refs needs Linux 4.0
        Path("/proc/self/clear_refs").write_text("5")
    return proc_status("VmRSS")


# ------------------------------------------------------------------------------ one mode


def timed_run(pipe: SigmaPipeline, comp: Composition, batch_cfg: bool) -> tuple[Any, float]:
    """(output, median seconds per step) of a run from the shared noise."""
    stamps: list[float] = []
    out = pipe(
        comp, latents=noise(), output_type="np", batch_cfg=batch_cfg,
        callback_on_step_end=lambda *_: stamps.append(time.perf_counter()),
    )  # fmt: skip
    return out, statistics.median(b - a for a, b in itertools.pairwise(stamps))


def worker(variant: Variant, checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    """Run one variant in this (fresh) process; its latent and image go to ``out_dir``."""
    from sigma_core.runtime import MemoryMeter

    torch.set_grad_enabled(False)
    comp = composition()
    before = reset_peak_rss()
    t0 = time.perf_counter()
    pipe = SigmaPipeline.from_pretrained(
        checkpoint, device="cpu", precision=variant.precision, compile=variant.compile
    )
    load_s = time.perf_counter() - t0

    def short_run(output_type: str) -> None:
        pipe(
            comp, latents=noise(), num_inference_steps=MEMORY_TIMESTEPS,
            output_type=output_type, batch_cfg=variant.batch_cfg,
        )  # fmt: skip

    peak = None
    if variant.compile:  # the warm-up compiles; a dispatch mode would get in dynamo's way
        short_run("latent")
    else:
        with MemoryMeter("cpu", [pipe.model, pipe.vae]) as meter:
            short_run("np")
        peak = meter.peak
    predicted = pipe.estimate_memory(comp, batch_cfg=variant.batch_cfg).peak
    out, step_s = timed_run(pipe, comp, variant.batch_cfg)
    image = torch.from_numpy(np.ascontiguousarray(out.images))
    save_file(
        {"latents": out.latents.float().contiguous(), "image": image},
        str(out_dir / f"{variant.name}.safetensors"),
    )
    return {
        "name": variant.name, "load_s": load_s, "step_s": step_s,
        "prefill_s": out.timings["prefill_s"], "passes_per_step": out.num_passes / (TIMESTEPS - 1),
        "peak_tensors": peak, "predicted": predicted, "peak_rss": proc_status("VmHWM") - before,
        "load_average": os.getloadavg()[0],
    }  # fmt: skip


def run_worker(args: Sequence[str | Path]) -> dict[str, Any]:
    """Run this module with ``args`` in a fresh process; the JSON on its last stdout line."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_precision", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"worker {args[:2]} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Of images in [0, 1]."""
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def drift(results: list[dict[str, Any]], out_dir: Path) -> None:
    """Add each result's distance from fp32: max |diff| of the latent, PSNR of the image."""
    outputs = {r["name"]: load_file(str(out_dir / f"{r['name']}.safetensors")) for r in results}
    base = outputs["fp32"]
    for r in results:
        mine = outputs[r["name"]]
        r["max_abs_drift"] = (mine["latents"] - base["latents"]).abs().max().item()
        r["psnr_db"] = psnr(mine["image"].numpy(), base["image"].numpy())


# ------------------------------------------------------------------------------ markers


def best_of(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` calls of each, interleaved so they share the machine's state."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}


def marker_cost(checkpoint: Path, repeats: int = 10) -> dict[str, float]:
    """One fp32 pass over one CFG row as the engine runs it, the same pass with the two markers
    in the generation expert, and the understanding expert's per-layer work on two tokens."""
    from sigma_core.model.mot import GEN, Routing
    from sigma_core.runtime import prefill_contexts

    torch.set_grad_enabled(False)
    pipe = SigmaPipeline.from_pretrained(checkpoint, device="cpu", precision="fp32")
    model, comp = pipe.model, composition()
    images = comp.load_images()
    plan = pipe.plan(comp, images)
    ctx = prefill_contexts(model, plan, pipe.encode_references(plan, images))
    routed = model.denoise_context(ctx.cache.rows(0, 1), plan.noise.grid)
    all_gen = replace(routed, routing=Routing.uniform(routed.routing.runs[-1][1], GEN))
    x = torch.randn(plan.noise.grid[0] * plan.noise.grid[1], 64)
    t = torch.tensor(0.5)
    two = torch.randn(1, 2, model.config.hidden_size)

    def und_on_markers() -> None:
        for layer in model.llm.layers:
            h = layer.input_layernorm(two)
            layer.self_attn._qkv(h, "")
            layer.self_attn.o_proj(h)
            layer.mlp(layer.post_attention_layernorm(h))

    times = best_of(
        {
            "pass_s": lambda: model.velocity(x, t, routed),
            "all_gen_s": lambda: model.velocity(x, t, all_gen),
            "und_compute_s": und_on_markers,
        },
        repeats,
    )
    return {**times, "tokens": routed.routing.runs[-1][1], "context": routed.span.start}


# ------------------------------------------------------------------------------ loading


def maps_file(address: int, name: str) -> bool:
    """Whether ``address`` lies in this process's memory mapping of a file called ``name``."""
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith("/" + name):
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                if start <= address < end:
                    return True
    return False


def load_worker(checkpoint: Path, precision: str) -> dict[str, Any]:
    """Load ``checkpoint`` in this fresh process. Peak RSS (VmHWM) counts the file's pages
    while they are mapped; the peak anonymous memory (sampled every ms) is what the process
    itself allocated. Both less what it held before; to compare with the loaded weights."""
    from sigma_core.runtime.memory import module_bytes

    before_rss = reset_peak_rss()
    before_anon = proc_status("RssAnon")
    peak_anon, done = [before_anon], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], proc_status("RssAnon"))
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    pipe = SigmaPipeline.from_pretrained(checkpoint, device="cpu", precision=precision)
    load_s = time.perf_counter() - t0
    done.set()
    sampler.join()
    weight = pipe.model.llm.layers[0].mlp.gate_proj.weight
    return {
        "aliases_file": maps_file(weight.untyped_storage().data_ptr(), "ema.safetensors"),
        "precision": precision, "load_s": load_s, "weights": module_bytes([pipe.model]),
        "file": (checkpoint / "ema.safetensors").stat().st_size,
        "peak_rss": proc_status("VmHWM") - before_rss,
        "rss_after": proc_status("VmRSS") - before_rss,
        "peak_anon": max(peak_anon[0], proc_status("RssAnon")) - before_anon,
    }  # fmt: skip


# ------------------------------------------------------------------------------ report


def table(results: Sequence[dict[str, Any]]) -> str:
    header = (
        "| mode | s/step | prefill s | peak tensors MiB | predicted MiB | peak RSS Δ MiB "
        "| max abs drift | PSNR dB |"
    )
    lines = [header, "|" + "---|" * 8]
    for r in results:
        tensors = "-" if r["peak_tensors"] is None else f"{r['peak_tensors'] / MIB:.1f}"
        error = "" if r["peak_tensors"] is None else (
            f" ({(r['predicted'] - r['peak_tensors']) / r['peak_tensors']:+.0%})")  # fmt: skip
        lines.append(
            f"| {r['name']} | {r['step_s']:.3f} | {r['prefill_s']:.2f} | {tensors} | "
            f"{r['predicted'] / MIB:.1f}{error} | {r['peak_rss'] / MIB:.0f} | "
            f"{r['max_abs_drift']:.2e} | {r['psnr_db']:.1f} |"
        )
    lines.append("| fp8 | gpu only (Ada/Hopper; see bench_gpu) | | | | | | |")
    return "\n".join(lines)


def loading_line(r: dict[str, Any]) -> str:
    """What loading the big checkpoint held at its peak, against its weights."""
    head = (
        f"loading {r['precision']} ({LOAD_LAYERS} layers of hidden {LOAD_HIDDEN}, a "
        f"{r['file'] / MIB:.0f} MiB bf16 file, fresh process, {r['load_s']:.1f} s): "
        f"{r['weights'] / MIB:.0f} MiB of weights; peak anonymous memory "
        f"+{r['peak_anon'] / MIB:.0f} MiB ({r['peak_anon'] / r['weights']:.2f}x the weights), "
        f"peak RSS +{r['peak_rss'] / MIB:.0f} MiB, +{r['rss_after'] / MIB:.0f} MiB after"
    )
    if r["aliases_file"]:
        return head + (
            " (the parameters are views of the file's memory map: no copy; pages come in on "
            "first use)"
        )
    return head + " (the peak RSS adds the file's pages while it is mapped)"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", choices=sorted(BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--load-worker", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(BY_NAME[args.worker], args.checkpoint, args.out)))
        return
    if args.load_worker:
        print(json.dumps(load_worker(args.checkpoint, args.load_worker)))
        return
    from sigma_core.runtime import make_tiny_checkpoint

    t0 = time.perf_counter()
    load_avg = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_checkpoint(Path(tmp) / "bench", layers=LAYERS, hidden=HIDDEN)
        results = []
        for v in VARIANTS:
            results.append(run_worker(["--worker", v.name, "--checkpoint", ckpt, "--out", tmp]))
        drift(results, Path(tmp))
        markers = marker_cost(ckpt)
        big = make_tiny_checkpoint(Path(tmp) / "load", layers=LOAD_LAYERS, hidden=LOAD_HIDDEN)
        loading = [run_worker(["--load-worker", m, "--checkpoint", big]) for m in ("fp32", "bf16")]
    r0 = results[0]
    busiest = max(r["load_average"] for r in results)
    print(
        f"CPU, {torch.get_num_threads()} threads (load average {load_avg:.1f} at the start, "
        f"at most {busiest:.1f} after a mode); "
        f"tiny random checkpoint, {LAYERS} layers, hidden {HIDDEN}; 2 shipped references, "
        f"{SIZE}x{SIZE} output, {TIMESTEPS} timesteps, {r0['passes_per_step']:.0f} passes a step"
    )
    print(table(results))
    if busiest > (os.cpu_count() or 1) + 0.5:
        print(
            f"warning: a load average of {busiest:.1f} on {os.cpu_count()} cores: other work "
            "shared the CPU, so the timings are not this code's; run again on a quiet machine"
        )
    share = (markers["pass_s"] - markers["all_gen_s"]) / markers["pass_s"]
    print(
        f"\nmarkers (fp32, one pass of {markers['tokens']} tokens over {markers['context']} "
        f"cached): {markers['pass_s'] * 1e3:.1f} ms as run, {markers['all_gen_s'] * 1e3:.1f} ms "
        f"with the 2 markers in the gen expert: they cost {share:.1%} of a pass (their "
        f"und-expert compute alone {markers['und_compute_s'] / markers['pass_s']:.1%}; the rest "
        "is splitting and re-joining the block around them)"
    )
    for r in loading:
        print(loading_line(r))
    print(f"({time.perf_counter() - t0:.0f} s in all)")
    if args.json is not None:
        report = {"variants": results, "markers": markers, "loading": loading}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
