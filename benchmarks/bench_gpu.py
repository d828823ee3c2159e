"""Full-size BAGEL-7B-MoT on one GPU, mode by mode: seconds per image, peak VRAM against the
prediction, and the distance to the compute floor.

    python -m benchmarks.bench_gpu                     # a lent H100/H200: under 7 minutes
    python -m benchmarks.bench_gpu --json out.json     # the same, and the rows as JSON
    python -m benchmarks.bench_gpu --dry-run           # the same code path on CPU, small sizes

Needs no network and no checkpoint: the meta model is filled tensor by tensor straight on the
GPU through the loader's own :func:`~sigma_core.runtime.loader.fill`, from random tensors (std
0.02, norms at 1, the real latent position table), so int8/nf4 quantize each weight and fp8
each layer exactly as a real load does, without a 29 GB file. The VAE is diffusers' FLUX-size
AutoencoderKL with its default init, in fp32. Random weights give the real speed and memory of
every mode, except int8: LLM.int8's outlier path depends on the activations' outliers, which
real weights have and these lack.

Workload: 1024x1024 from 3 references of 512x512, 50 timesteps, SIGMA's CFG (text and image:
3 rows a step). Every row is warmed up first with a few timesteps. The first row runs all 50
timesteps; the others run :data:`SECONDARY_TIMESTEPS` and are scaled to 50 as (encode + prefill
+ decode) + median step x 49 ("scaled" in the table). A time guard skips rows, saying why, where
the budget would be passed; rows run in order of interest, compile last (its warm-up compiles).

The floor is :func:`image_flops` at 790 TFLOP/s (bf16 dense, H100 SXM) for every mode, VAE
excluded; "x floor" is seconds per image over it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import itertools
import json
import math
import platform
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_engine import BAGEL_7B, composition
from sigma_core import SigmaPipeline
from sigma_core.errors import SigmaInputError
from sigma_core.model import LLMConfig

PEAK_FLOPS = 790e12  # bf16 dense compute of an H100 SXM, the project's anchor
GIB, MIB = 2**30, 2**20
SECONDARY_TIMESTEPS = 11  # 10 Euler steps, scaled to the full run
COMPILE_RESERVE_S = 150.0  # time left that a compile row needs to start (its warm-up compiles)
FIRST_BUILD_GUESS_S = 30.0  # build time assumed before one has been measured
COLUMNS = (
    "row", "timesteps run", "s/image", "s/step", "peak", "predicted", "error", "x floor", "note",
)  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    name: str
    precision: str
    batch_cfg: bool = True
    compile: bool = False
    offload: str = "none"


def rows_for(base: str) -> tuple[Row, ...]:
    """The rows, with ``base`` the unquantized precision (bf16 on a GPU, fp32 in the dry run).
    Rows of one precision are adjacent so each model is built once (compile rebuilds last)."""
    return (
        Row(base, base),
        Row(f"{base} sequential CFG", base, batch_cfg=False),
        Row("fp8", "fp8"),
        Row("nf4", "nf4"),
        Row("nf4 offload=model", "nf4", offload="model"),
        Row("int8", "int8"),
        Row(f"{base} compiled", base, compile=True),
    )


@dataclass(frozen=True)
class Spec:
    """Model sizes, workload and time budget of one benchmark run."""

    config: LLMConfig
    vae_config: dict
    device: str
    size: int  # output side, px
    n_refs: int
    ref_size: int
    timesteps: int  # of the first row; the others run secondary_timesteps and are scaled
    secondary_timesteps: int
    warm_timesteps: int
    rows: tuple[Row, ...]
    budget_s: float  # from the start of the rows to the last row's end
    hard_stop: bool = False  # SIGALRM at the budget's end stops a row that overruns it
    unit: tuple[str, int] = ("GiB", GIB)
    skip: dict[str, str] = field(default_factory=dict)  # row name -> reason, known up front


def full_spec() -> Spec:
    from sigma_core.model.vae import flux_vae_config

    return Spec(
        BAGEL_7B, flux_vae_config(), "cuda", 1024, 3, 512, 50, SECONDARY_TIMESTEPS, 3,
        rows_for("bf16"), budget_s=380.0, hard_stop=True,
    )  # fmt: skip


def dry_spec() -> Spec:
    """Small sizes on CPU through the same code path, for checking without a GPU."""
    from sigma_core.model.vae import TINY_VAE_CONFIG, flux_vae_config

    cfg = LLMConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=BAGEL_7B.vocab_size, rope_theta=1_000_000.0,
    )  # fmt: skip
    return Spec(
        cfg, {**flux_vae_config(), **TINY_VAE_CONFIG}, "cpu", 256, 1, 512, 3, 3, 2,
        rows_for("fp32"), budget_s=120.0, unit=("MiB", MIB),
        skip={"fp32 compiled": "dry run: inductor takes minutes to compile on CPU"},
    )  # fmt: skip


# ------------------------------------------------------------------------------ FLOPs


def expert_linear_params(cfg: LLMConfig) -> int:
    """Weights of one expert's Linears in one decoder layer: q, k, v, o, gate, up, down."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return d * q + 2 * d * kv + q * d + 3 * d * f


def pass_flops(cfg: LLMConfig, m: int, context: int) -> int:
    """One denoising pass of one CFG row: the gen expert's Linears on the ``m`` latent tokens,
    the und expert's on the 2 markers (2 flops a multiply-add), and attention of the m + 2
    block tokens over ``context`` cached + m + 2 own keys (QK^T and PV: 4 n L H*D), per layer.
    Norms, rope, softmax and the connectors are left out (under 0.5% at full size)."""
    n = m + 2
    linears = 2 * expert_linear_params(cfg) * n
    attention = 4 * n * (context + n) * cfg.num_attention_heads * cfg.head_dim
    return cfg.num_hidden_layers * (linears + attention)


def prefill_flops(cfg: LLMConfig, segments: Sequence[tuple[int, int]]) -> int:
    """Prefilling segments of (cache start, length): each token through one expert's Linears,
    and attention over everything before it and its own segment (full: text's causal half is
    not subtracted)."""
    per_token = 2 * expert_linear_params(cfg)
    hd = cfg.num_attention_heads * cfg.head_dim
    total = sum(n * per_token + 4 * n * (start + n) * hd for start, n in segments)
    return cfg.num_hidden_layers * total


def image_flops(
    cfg: LLMConfig,
    m: int,
    row_contexts: Sequence[int],
    steps: int,
    prefill: Sequence[tuple[int, int]],
) -> int:
    """One image: ``steps`` Euler steps, each a pass per CFG row over that row's own context
    length (padding to the longest row, as batched CFG does, is not counted), plus the prefill
    once."""
    per_step = sum(pass_flops(cfg, m, c) for c in row_contexts)
    return steps * per_step + prefill_flops(cfg, prefill)


def plan_shapes(plan: Any) -> tuple[int, list[int], list[tuple[int, int]]]:
    """(m, each CFG row's context length, prefilled segments) of a plan run with both CFG
    branches, as runtime.contexts builds the rows: gen (everything); cfg_text (gen before its
    last text, a copy: no prefill) when the context ends with text; cfg_img (the text alone,
    prefilled again) when it has an image."""
    context, noise = plan.segments[:-1], plan.segments[-1]
    texts = [s for s in context if s.kind == "text"]
    contexts = [noise.start]
    prefill = [(s.start, s.length) for s in context]
    if context and context[-1].kind == "text":
        contexts.append(texts[-1].start)
    if any(s.kind == "image" for s in context):
        contexts.append(sum(s.length for s in texts))
        starts = itertools.accumulate((s.length for s in texts), initial=0)
        prefill += [(start, s.length) for start, s in zip(starts, texts, strict=False)]
    return noise.length - 2, contexts, prefill


# ------------------------------------------------------------------------------ building


def random_generator(cfg: LLMConfig, ids: Any, precision: Any, device: torch.device) -> Any:
    """The generator with random weights, filled on ``device`` through the loader's path:
    quantized layers swapped in on meta first, then each tensor made where it will live."""
    from sigma_core.model import sincos_2d_table
    from sigma_core.model.precision import swap_linears
    from sigma_core.runtime.loader import fill, meta_generator

    model = meta_generator(cfg, attribute_embed=False, ids=ids)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    swap_linears(model.llm.layers, precision)
    gen = torch.Generator(device).manual_seed(0)
    table = sincos_2d_table(cfg.hidden_size, model.max_latent_size)

    def read(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key == "latent_pos_embed.pos_embed":
            return table.to(device, precision.dtype)
        if "norm" in key.rsplit(".", 2)[-2]:
            return torch.ones(shape, device=device, dtype=precision.dtype)
        out = torch.randn(shape, generator=gen, device=device, dtype=precision.dtype)
        return out.mul_(0.02)

    reads = ((k, partial(read, k, s)) for k, s in shapes.items())
    return fill(model, reads, precision=precision, device=device)


def random_vae(config: dict, device: torch.device) -> Any:
    from diffusers import AutoencoderKL

    from sigma_core.model import FluxVAE

    with device:
        return FluxVAE(AutoencoderKL(**config).requires_grad_(False).eval())


def tiny_tokenizer() -> Any:
    """The tiny test tokenizer padded to Qwen2.5's ids, so they fit the 152064-row table."""
    from sigma_core.planning import QWEN25_BASE_VOCAB, load_tokenizer, make_tiny_tokenizer

    with tempfile.TemporaryDirectory() as d:
        return load_tokenizer(make_tiny_tokenizer(d, pad_base_vocab_to=QWEN25_BASE_VOCAB))


# ------------------------------------------------------------------------------ measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(
    pipe: SigmaPipeline, comp: Any, row: Row, timesteps: int, *, metered: bool = True
) -> dict[str, Any]:
    """One image from scratch (reference encodes included): wall seconds, median step and, when
    ``metered``, the peak memory of the run (CUDA allocator; on CPU the tensors, weights
    included, through a dispatch mode that slows the CPU run)."""
    from sigma_core.runtime import MemoryMeter

    stamps: list[float] = []

    def tick(*_args: object) -> None:
        sync(pipe.device)
        stamps.append(time.perf_counter())

    pipe.encode_references.clear()
    meter = MemoryMeter(pipe.device, [pipe.model, pipe.vae])
    with meter if metered else nullcontext():
        sync(pipe.device)
        t0 = time.perf_counter()
        out = pipe(
            comp, generator=torch.Generator().manual_seed(0), num_inference_steps=timesteps,
            output_type="np", callback_on_step_end=tick, batch_cfg=row.batch_cfg,
        )  # fmt: skip
        sync(pipe.device)
        wall = time.perf_counter() - t0
    steps = timesteps - 1
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    step_s = statistics.median(gaps) if gaps else out.timings["denoise_s"] / steps
    return {
        "wall_s": wall, "step_s": step_s, "fixed_s": max(wall - step_s * steps, 0.0),
        "prefill_s": out.timings["prefill_s"], "passes": out.num_passes, "peak": meter.peak,
        "plan": out.plan,
    }  # fmt: skip


class OverBudget(Exception):
    """A row ran past the end of the time budget."""


class Bench:
    """Runs the rows of a spec in order, building each precision's model once."""

    def __init__(self, spec: Spec, log: Callable[[str], None] = print) -> None:
        self.spec, self.log = spec, log
        self.device = torch.device(spec.device)
        self.started = time.perf_counter()
        self.tokenizer = tiny_tokenizer()
        self.vae = random_vae(spec.vae_config, self.device)
        self.built: tuple[str, Any] | None = None  # (precision name, generator)
        self.build_s = FIRST_BUILD_GUESS_S
        self.warm_s = 0.0
        self.comp = composition(spec.n_refs, spec.ref_size, spec.size, spec.timesteps)

    @contextmanager
    def hard_stop(self) -> Iterator[None]:
        """Raise :class:`OverBudget` in a row still running when the budget ends (a compile
        cannot be sized beforehand), where the spec asks for it."""
        if not self.spec.hard_stop:
            yield
            return

        def stop(*_args: object) -> None:
            raise OverBudget

        previous = signal.signal(signal.SIGALRM, stop)
        signal.alarm(max(1, math.ceil(self.left_s())))
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    def left_s(self) -> float:
        return self.spec.budget_s - (time.perf_counter() - self.started)

    def model(self, precision: Any) -> Any:
        """The generator in ``precision``, built now unless it is the last one built."""
        from sigma_core.planning import TokenIds

        if self.built is not None and self.built[0] == precision.name:
            return self.built[1]
        self.built = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        t0 = time.perf_counter()
        ids = TokenIds.from_tokenizer(self.tokenizer, embedding_rows=self.spec.config.vocab_size)
        model = random_generator(self.spec.config, ids, precision, self.device)
        sync(self.device)
        self.build_s = time.perf_counter() - t0
        self.built = (precision.name, model)
        return model

    def row(self, row: Row, full: bool) -> dict[str, Any]:
        """Measure one row, or say why not."""
        from sigma_core.model.precision import resolve_precision
        from sigma_core.runtime.placement import Offload, check_offload

        if row.name in self.spec.skip:
            return {"status": "skipped", "note": self.spec.skip[row.name]}
        try:
            precision = resolve_precision(row.precision, self.device)
            check_offload(row.offload, precision, self.device)
        except SigmaInputError as e:
            return {"status": "skipped", "note": str(e).split(";")[0]}
        building = self.built is None or self.built[0] != precision.name
        need = (self.build_s if building else 0.0) + self.warm_s
        if row.compile:
            need = max(need, COMPILE_RESERVE_S)
        if need > self.left_s():
            return {"status": "skipped", "note": f"time budget: {self.left_s():.0f} s left"}
        model = self.model(precision)
        offload = Offload(row.offload, self.device, model, self.vae)
        pipe = SigmaPipeline(
            model, self.vae, self.tokenizer, precision=precision, offload=offload,
            compile=row.compile,
        )  # fmt: skip
        return self.measure(pipe, row, full)

    def measure(self, pipe: SigmaPipeline, row: Row, full: bool) -> dict[str, Any]:
        """Warm up, size the timed run to the time left, run it, and compare with the
        prediction and the floor."""
        t0 = time.perf_counter()
        warm = run_once(pipe, self.comp, row, self.spec.warm_timesteps, metered=False)
        self.warm_s = time.perf_counter() - t0
        timesteps = self.spec.timesteps if full else self.spec.secondary_timesteps
        fits = int((self.left_s() - warm["fixed_s"]) / max(warm["step_s"], 1e-9)) + 1
        timesteps = min(timesteps, fits)
        if timesteps < 3:
            return {"status": "skipped", "note": f"time budget: {self.left_s():.0f} s left"}
        r = run_once(pipe, self.comp, row, timesteps)
        predicted = pipe.estimate_memory(self.comp, batch_cfg=row.batch_cfg).peak
        full_steps = self.spec.timesteps - 1
        scaled = timesteps != self.spec.timesteps
        per_image = r["fixed_s"] + r["step_s"] * full_steps if scaled else r["wall_s"]
        m, contexts, prefill = plan_shapes(r["plan"])
        flops = image_flops(self.spec.config, m, contexts, full_steps, prefill)
        if r["passes"] != len(contexts) * (timesteps - 1):
            raise RuntimeError(f"{r['passes']} passes, not {len(contexts)} a step: CFG is off")
        floor_s = flops / PEAK_FLOPS
        note = f"scaled from {timesteps - 1} steps" if scaled else ""
        if row.compile:
            note = f"{note}; compile warm-up {self.warm_s:.0f} s".lstrip("; ")
        if row.offload != "none" and self.device.type == "cpu":
            note = f"{note}; offload to the CPU moves nothing, so both components count".lstrip(
                "; "
            )
        return {
            "status": "ok", "timesteps_run": timesteps, "s_per_image": per_image,
            "step_s": r["step_s"], "prefill_s": r["prefill_s"], "peak_bytes": r["peak"],
            "predicted_bytes": predicted, "error_pct": 100 * (predicted - r["peak"]) / r["peak"],
            "tflop_per_image": flops / 1e12, "floor_s": floor_s,
            "floor_ratio": per_image / floor_s, "note": note,
        }  # fmt: skip

    def run(self) -> list[dict[str, Any]]:
        results = []
        for i, row in enumerate(self.spec.rows):
            try:
                with self.hard_stop():
                    r = self.row(row, full=i == 0)
            except OverBudget:
                r = {"status": "skipped", "note": "time budget: stopped at its end"}
            except Exception as e:  # one failing mode must not lose the others' figures
                r = {"status": "failed", "note": f"{type(e).__name__}: {str(e)[:160]}"}
            results.append({**asdict(row), **r})
            self.log(f"[{time.perf_counter() - self.started:5.0f} s] {row.name}: {r['status']}")
        return results


# ------------------------------------------------------------------------------ reporting


def machine_facts(device: torch.device) -> dict[str, str]:
    facts = {"torch": torch.__version__, "python": platform.python_version()}
    for package in ("bitsandbytes", "torchao", "diffusers"):
        try:
            facts[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            facts[package] = "missing"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts |= {
            "gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": f"{props.total_memory / GIB:.1f}", "cuda": str(torch.version.cuda),
        }  # fmt: skip
    else:
        facts |= {"cpu": platform.processor() or platform.machine(), "threads": str(
            torch.get_num_threads())}  # fmt: skip
    return facts


def table(results: Sequence[dict[str, Any]], unit: tuple[str, int] = ("GiB", GIB)) -> str:
    """The results as one markdown table (a skipped or failed row says why in its note)."""
    name, size = unit
    header = [c if c not in ("peak", "predicted") else f"{c} {name}" for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        if r["status"] != "ok":
            cells = [r["name"], *["-"] * (len(COLUMNS) - 2), f"{r['status']}: {r['note']}"]
        else:
            cells = [
                r["name"], str(r["timesteps_run"]), f"{r['s_per_image']:.2f}",
                f"{r['step_s']:.3f}", f"{r['peak_bytes'] / size:.2f}",
                f"{r['predicted_bytes'] / size:.2f}", f"{r['error_pct']:+.1f}%",
                f"{r['floor_ratio']:.2f}", r["note"],
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="small sizes on CPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    spec = dry_spec() if args.dry_run else full_spec()
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA GPU; use --dry-run to check it on CPU")
    with torch.no_grad():  # a context, not the global switch: tests call main() in-process
        bench = Bench(spec)
        results = bench.run()
    facts = machine_facts(bench.device)
    cfg = spec.config
    workload = {
        "size": spec.size, "references": f"{spec.n_refs} x {spec.ref_size}^2",
        "timesteps": spec.timesteps, "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
        "peak_tflops": PEAK_FLOPS / 1e12,
    }  # fmt: skip
    print(", ".join(f"{k} {v}" for k, v in facts.items()))
    print(", ".join(f"{k} {v}" for k, v in workload.items()))
    print(table(results, spec.unit))
    report = {"machine": facts, "workload": workload, "rows": results}
    print(json.dumps(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
