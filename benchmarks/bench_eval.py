"""``evaluate generate`` and ``evaluate score`` on CPU, one process against two through
``accelerate launch``: images per second over the example benchmark (presets/benchmark), the
images made by the preview engine (random weights, no --checkpoint).

    python -m benchmarks.bench_eval            # about 3 minutes on 2 idle cores
    python -m benchmarks.bench_eval --quick    # the same code path, small (its test runs it)
    python -m benchmarks.bench_eval --clip-model DIR_OR_ID --dino-model ... --aes-model ...

Each row is one command in fresh processes, as a user runs it, timed by the wall clock from
start to exit: its seconds include the start-up (Python and torch imported, the processes
joined, the scoring models loaded), which is what a user waits for. The start-up alone is the
same command run again, with nothing left to do (it resumes a finished run; generate builds no
engine then, so the engine's build counts as work), and "images/s after start-up" is the images
over the difference (— where that is under a tenth of the command: noise; ``--quick`` leaves
the rerun out). A first command, not timed, reads Python's and torch's files from disk (not
with ``--quick``).

Three settings of each command: one process with torch's default threads (every core), one
process with OMP_NUM_THREADS=1, and two processes (``accelerate launch``, CPU processes over
gloo) with OMP_NUM_THREADS=1 each. One thread against two processes is the data-parallel
speed-up; the default threads against two processes is what splitting the work wins over one
process that already uses every core.

Scoring scores the one-thread row's run (from no scores.jsonl each time) with the tiny random
CLIP, DINO and aesthetic head of tests/evaluation_helpers.py (built here, never downloaded),
which are far smaller than ViT-L/14: those rows measure the scorer around the models (start-up,
decoding, crops, the merge). Then with the real models (``--clip-model`` and the others, by
default the scorer's own) when CLIP is in the local Hugging Face cache or a folder; a model that
is not there skips its metrics, as ``evaluate score`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.evaluation_helpers import eval_models, score_argv
from tests.launch_helpers import ROOT, accelerate_cpu, cpu_env, run_workers

BENCH = ROOT / "presets" / "benchmark"
# (label, processes, OMP_NUM_THREADS: None keeps torch's default)
SETTINGS = (("default threads", 1, None), ("1 thread", 1, "1"), ("1 thread each", 2, "1"))
FULL = {"limit": 9, "seeds": 4, "steps": 8, "size": "128x128"}
QUICK = {"limit": 3, "seeds": 1, "steps": 2, "size": "64x64"}  # 3 images: uneven shares


def command(argv: Sequence[str], processes: int, threads: str | None) -> tuple[list[str], dict]:
    """``python -m sigma_core ARGV`` in one process, or in ``processes`` through accelerate."""
    env = cpu_env()
    if threads is None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(name, None)
    else:
        env["OMP_NUM_THREADS"] = threads
    if processes > 1:
        return accelerate_cpu(argv, processes), env
    return [sys.executable, "-m", "sigma_core", *argv], env


def timed(argv: Sequence[str], processes: int, threads: str | None, timeout: float) -> float:
    """The wall-clock seconds of one command, start to exit; a failure stops the benchmark."""
    cmd, env = command(argv, processes, threads)
    start = time.perf_counter()
    result = run_workers(cmd, env, timeout)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])} failed ({processes} processes):\n"
                         f"{result.stderr[-3000:]}")  # fmt: skip
    return seconds


def _run_name(processes: int, threads: str | None) -> str:
    return f"run-{processes}p-{threads or 'default'}t"


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def measure(args: argparse.Namespace, argv: Sequence[str], processes: int,
            threads: str | None) -> tuple[float, float | None]:  # fmt: skip
    """The command's seconds, and its start-up's: the same command again, with nothing left to
    do (None with --quick)."""
    seconds = timed(argv, processes, threads, args.timeout)
    return seconds, None if args.quick else timed(argv, processes, threads, args.timeout)


def generate_rows(args: argparse.Namespace, folder: Path, settings: Sequence) -> list[dict]:
    """Each setting makes the same run into a folder of its own."""
    rows = []
    for label, processes, threads in settings:
        run = folder / _run_name(processes, threads)
        argv = ["evaluate", "generate", str(BENCH), "--out", str(run), "--limit",
                str(args.limit), "--seeds", str(args.seeds), "--steps", str(args.steps),
                "--size", args.size]  # fmt: skip
        seconds, start = measure(args, argv, processes, threads)
        images = _lines(run / "generated.jsonl")
        rows.append(_row(f"generate, {label}", processes, images, seconds, start))
    return rows


def score_rows(
    args: argparse.Namespace, run: Path, argv: list[str], what: str, settings: Sequence
) -> list[dict]:
    """Each setting scores ``run`` from no scores; every image must get one line."""
    rows = []
    images = _lines(run / "generated.jsonl")
    for label, processes, threads in settings:
        for name in ("scores.jsonl", "scores.json"):
            (run / name).unlink(missing_ok=True)
        seconds, start = measure(args, argv, processes, threads)
        lines = _lines(run / "scores.jsonl")
        if lines != images:
            raise SystemExit(f"{what}, {processes} processes: {lines} lines, {images} images")
        metrics = ", ".join(json.loads((run / "scores.json").read_text())["models"])
        rows.append(_row(f"score, {what} ({metrics}), {label}", processes, images, seconds, start))
    return rows


def _row(
    setting: str, processes: int, images: int, seconds: float, start: float | None
) -> dict[str, Any]:
    work = None if start is None else seconds - start
    if work is not None and work < 0.1 * seconds:  # within the noise of the start-up
        work = None
    return {"setting": setting, "processes": processes, "images": images, "seconds": seconds,
            "images_per_s": images / seconds, "startup_s": start,
            "images_per_s_after_startup": images / work if work else None}  # fmt: skip


def real_models(args: argparse.Namespace) -> dict[str, str] | None:
    """The real scoring models (those given, else the scorer's defaults), or None when CLIP is
    neither a folder nor in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    from sigma_core.evaluation.scoring import model_sources

    sources = model_sources(args.clip_model, args.dino_model, args.dreamsim_model, args.aes_model)
    clip = sources["clip"]
    if Path(clip).is_dir() or isinstance(try_to_load_from_cache(clip, "config.json"), str):
        return sources
    return None


def table(rows: Sequence[dict]) -> str:
    def number(value: float | None, digits: int) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    lines = ["| setting | processes | images | seconds | images/s | start-up s | "
             "images/s after start-up |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['setting']} | {r['processes']} | {r['images']} | {r['seconds']:.1f} | "
              f"{r['images_per_s']:.2f} | {number(r['startup_s'], 1)} | "
              f"{number(r['images_per_s_after_startup'], 2)} |" for r in rows]  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 images, 64x64, 2 steps; one thread against two processes, the "
                             "tiny scoring models only, no warm-up or start-up rerun")  # fmt: skip
    parser.add_argument("--limit", type=int, help=f"items (default {FULL['limit']}, all)")
    parser.add_argument("--seeds", type=int, help=f"seeds per item (default {FULL['seeds']})")
    parser.add_argument("--steps", type=int, help=f"timesteps (default {FULL['steps']})")
    parser.add_argument("--size", help=f"WxH (default {FULL['size']})")
    parser.add_argument("--clip-model", help="real CLIP (default the scorer's, if cached)")
    parser.add_argument("--dino-model")
    parser.add_argument("--dreamsim-model")
    parser.add_argument("--aes-model")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per command")
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    settings = SETTINGS[1:] if args.quick else SETTINGS
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.quick:  # not timed: Python's and torch's files into the page cache
        warm = "import sigma_core.evaluation.scoring, sigma_core.runtime.engine"
        run_workers([sys.executable, "-c", warm], cpu_env(), args.timeout)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = generate_rows(args, folder, settings)
        run = folder / _run_name(1, "1")  # the one-thread run
        (folder / "tiny").mkdir()
        tiny = score_argv(run, eval_models(folder / "tiny"))
        rows += score_rows(args, run, tiny, "tiny models", settings)
        real = None if args.quick else real_models(args)
        if real is not None:
            argv_ = ["evaluate", "score", str(run), "--device", "cpu"]
            argv_ += [f"--{kind}-model={source}" for kind, source in real.items()]
            rows += score_rows(args, run, argv_, "real models", settings)
    print(f"{BENCH.relative_to(ROOT)}: {args.limit} items x {args.seeds} seeds, {args.size}, "
          f"{args.steps} steps, preview engine; {os.cpu_count()} CPUs; seconds: the whole "
          "command, start-up included")  # fmt: skip
    if not args.quick and real is None:
        print("real scoring models: CLIP is not in the local cache (rows left out)")
    print(table(rows))
    out = {**{k: getattr(args, k) for k in FULL}, "cpus": os.cpu_count(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
