"""``evaluate generate`` at full size on one GPU: BAGEL-7B-MoT with random weights (bf16), a
16-item benchmark (the example benchmark's items, repeated), images per second; then, when the
scorers' models are in the local cache, ``evaluate score``'s images per second. Ready for a lent
machine: no network, no checkpoint, under 7 minutes on one H100.

    python -m benchmarks.bench_eval_gpu                 # one GPU, 512x512, 12 timesteps
    python -m benchmarks.bench_eval_gpu --dry-run       # the same code path on CPU, small

The run goes through ``sigma_core.evaluation.runs`` (its checks, its run folder, its log), the
engine built through the loader's ``fill`` as bench_gpu.random_generator does. The first item
warms the engine up and is left out of images/s. A time guard stops the run after
``--budget`` seconds (it resumes where it stopped, as any run does).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_gpu import random_generator, random_vae, tiny_tokenizer
from benchmarks.bench_train_gpu import spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "presets" / "benchmark" / "benchmark.jsonl"


def write_bench(folder: Path, items: int) -> Path:
    """``items`` lines cycled from the example benchmark, each with an id of its own."""
    lines = [json.loads(line) for line in EXAMPLE.read_text().splitlines() if line.strip()]
    out = [{**lines[i % len(lines)], "id": f"{i:02d}-{lines[i % len(lines)]['id']}"}
           for i in range(items)]  # fmt: skip
    (folder / "benchmark.jsonl").write_text("".join(json.dumps(line) + "\n" for line in out))
    return folder


def engine(dry: bool, device: torch.device) -> Any:
    """The pipeline with random weights: BAGEL-7B in bf16 on the GPU, a small one on CPU."""
    from sigma_core import SigmaPipeline
    from sigma_core.model.precision import resolve_precision
    from sigma_core.planning import TokenIds

    s = spec(dry)
    tokenizer = tiny_tokenizer()
    ids = TokenIds.from_tokenizer(tokenizer, embedding_rows=s["config"].vocab_size)
    precision = resolve_precision("fp32" if dry else "bf16", device)
    model = random_generator(s["config"], ids, precision, device)
    return SigmaPipeline(model, random_vae(s["vae"], device), tokenizer, preview=True)


def generate(args: argparse.Namespace, bench: Path, run: Path, device: torch.device) -> dict:
    """Make the run's images through evaluation.runs; images/s after the first item."""
    from sigma_core import cli
    from sigma_core.evaluation import runlog, runs

    argv = ["evaluate", "generate", str(bench), "--out", str(run), "--steps", str(args.steps),
            "--size", args.size, "--precision", "fp32" if args.dry_run else "bf16"]  # fmt: skip
    spec_ = runs.check_spec(cli.build_parser().parse_args(argv))
    runs.start_run(spec_, run)
    t0 = time.perf_counter()
    pipe = engine(args.dry_run, device)
    built_s = time.perf_counter() - t0
    engines = runs.Engines(spec_.engine, device, pipe)
    log = runlog.LogWriter(run / runlog.LOG)
    jobs, start = spec_.jobs(), time.perf_counter()
    for job in jobs:
        if time.perf_counter() - start > args.budget:
            print(f"time guard: stopped before {job.item} ({args.budget:.0f} s budget)")
            break
        runs.make_images(spec_, run, [job], engines, log)
    seconds = [line["seconds"] for line in runlog.read_log(run / runlog.LOG)]
    timed = seconds[1:]
    return {
        "images": len(seconds), "build_s": built_s, "first_image_s": seconds[0] if seconds else 0,
        "images_per_s": len(timed) / sum(timed) if timed else float("nan"),
    }  # fmt: skip


def score(run: Path) -> dict:
    """``evaluate score RUN``'s throughput, or why it could not run here."""
    from sigma_core import cli
    from sigma_core.errors import SigmaError
    from sigma_core.inputs.fields import cut

    try:
        from sigma_core.evaluation import scoring
    except ImportError as e:
        return {"scoring": f"not run: {e}"}
    parsed = cli.build_parser().parse_args(["evaluate", "score", str(run)])
    t0 = time.perf_counter()
    try:
        scoring.main(parsed)
    except (SigmaError, OSError) as e:  # the scorers' weights are not in this machine's cache
        return {"scoring": f"not run: {cut(str(e).splitlines()[0], 200)}"}
    images = len((run / "generated.jsonl").read_text().splitlines())
    return {"scoring_images_per_s": images / (time.perf_counter() - t0)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, help="default 16 (dry run: 4)")
    parser.add_argument("--steps", type=int, help="timesteps per image: default 12 (dry run: 2)")
    parser.add_argument("--size", help="WxH of each image: default 512x512 (dry run: 64x64)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds of generation")
    parser.add_argument("--dry-run", action="store_true", help="small engine on CPU")
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)
    small = {"items": 4, "steps": 2, "size": "64x64"}
    full = {"items": 16, "steps": 12, "size": "512x512"}
    for key, value in (small if args.dry_run else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; use --dry-run for the CPU check")
    with tempfile.TemporaryDirectory() as tmp:
        bench = write_bench(Path(tmp), args.items)
        run = Path(tmp) / "run"
        result = {**generate(args, bench, run, device), **score(run)}
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{result['device']}: {result['images']} images at {args.size}, {args.steps} timesteps: "
        f"{result['images_per_s']:.3f} images/s (engine built in {result['build_s']:.0f} s)"
    )
    print({k: v for k, v in result.items() if k.startswith("scoring")})
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
