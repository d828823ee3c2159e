"""Benchmark: build_plan + segment_masks for 1, 3 and 8 references of 1024 x 1024.

The engine rebuilds the plan and its masks for every generation, so both must stay cheap even at
the largest composition the studio allows. Goal: 8 references (~37k tokens) in < 50 ms and
< 64 MB peak memory.

It also times the mask picture (``inspect --mask-png``) of the 8-reference plan, which must stay
interactive: goal < 3 s.

Run: python -m benchmarks.bench_sequence [--runs 30]   (from the repository root)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch

from sigma_core import Composition, Reference
from sigma_core.planning import (
    Plan,
    SegmentMask,
    build_plan,
    load_tokenizer,
    make_tiny_tokenizer,
    segment_masks,
)
from sigma_core.report import mask_png

ROOT = Path(__file__).resolve().parent.parent
GOAL_REFS, GOAL_MS, GOAL_MB = 8, 50.0, 64.0
GOAL_PICTURE_S = 3.0
IMAGE_SIZE = (1024, 1024)
MB = 2**20
PROMPTS = {
    1: "A photo of [1] sitting on a wooden bench in a park at sunset, soft light",
    3: "Place [1] next to [2] on a rooftop terrace at dusk, in the style of [3]",
    8: (
        "Place [1] next to [2] in a sunlit kitchen, with [4] on the table, [5] in the window, "
        "[6] by the door and [7] on the wall, wearing the outfit of [8], in the style of [3]"
    ),
}
SLOTS = [  # (attributes, entity) per slot
    (("<id>",), "the woman with brown hair"),
    (("<subject>",), "the corgi"),
    (("<style>",), "the watercolour painting"),
    (("<subject>",), "the red teapot"),
    (("<subject>",), "the cactus"),
    (("<subject>",), "the bicycle"),
    (("<icon>",), "the logo"),
    (("<clothing>",), "the jacket"),
]


def composition(n_refs: int) -> Composition:
    refs = [
        Reference(slot=k, image=b"unused", attributes=attrs, entity=entity)
        for k, (attrs, entity) in enumerate(SLOTS[:n_refs], start=1)
    ]
    return Composition(prompt=PROMPTS[n_refs], references=refs)


def sizes(n_refs: int) -> dict[int, tuple[int, int]]:
    return {k: IMAGE_SIZE for k in range(1, n_refs + 1)}


def run_once(comp: Composition, tok: object, n_refs: int) -> tuple[float, float]:
    """Milliseconds for build_plan and for segment_masks."""
    t0 = time.perf_counter_ns()
    plan = build_plan(comp, tok, image_sizes=sizes(n_refs))
    t1 = time.perf_counter_ns()
    segment_masks(plan)
    t2 = time.perf_counter_ns()
    return (t1 - t0) / 1e6, (t2 - t1) / 1e6


def tensor_bytes(plan: Plan, masks: list[SegmentMask]) -> int:
    """Storage of the plan's per-token tensors and the explicit (text) masks."""
    tensors = [plan.token_ids, plan.token_type, plan.group, plan.position_ids, plan.expert]
    tensors += [m.mask for m in masks if m.mask is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def traced(comp: Composition, tok: object, n_refs: int) -> tuple[int, int, int]:
    """(tokens, tracemalloc peak bytes, tensor bytes) of one build_plan + segment_masks."""
    gc.collect()
    tracemalloc.start()
    plan = build_plan(comp, tok, image_sizes=sizes(n_refs))
    masks = segment_masks(plan)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return plan.length, peak, tensor_bytes(plan, masks)


def rss_growth(n_refs: int, tok_dir: Path) -> int | None:
    """Peak RSS growth of one call, measured in a fresh process (None where unsupported)."""
    if not Path("/proc/self/statm").exists():
        return None
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_sequence",
            "--rss-child",
            str(n_refs),
            "--tokenizer",
            str(tok_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(out.stdout)["growth"])


def rss_child(n_refs: int, tok_dir: Path) -> None:
    """In a fresh process: warm up on a small plan, then measure max RSS minus current RSS."""
    tok = load_tokenizer(tok_dir)
    run_once(composition(1), tok, 1)  # lazy initialisation, at a low high-water mark
    gc.collect()
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    run_once(composition(n_refs), tok, n_refs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"growth": max(0, peak - before)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the conservative case, and steadier timings
    if args.rss_child:
        rss_child(args.rss_child, args.tokenizer)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = make_tiny_tokenizer(Path(tmp) / "tok")
        tok = load_tokenizer(tok_dir)
        print(
            f"build_plan + segment_masks, references of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, "
            f"median of {args.runs} runs after {args.warmup} warm-up, torch "
            f"{torch.__version__}, 1 thread"
        )
        head = (
            f"{'refs':>4} {'tokens':>7} {'plan ms':>8} {'masks ms':>9} {'total ms':>9} "
            f"{'py MB':>6} {'tensor MB':>9} {'peak MB':>8} {'RSS MB':>7}"
        )
        print(head)
        print("-" * len(head))
        result: tuple[float, float] | None = None
        for n in (1, 3, 8):
            comp = composition(n)
            for _ in range(args.warmup):
                run_once(comp, tok, n)
            times = [run_once(comp, tok, n) for _ in range(args.runs)]
            plan_ms = statistics.median(t[0] for t in times)
            mask_ms = statistics.median(t[1] for t in times)
            total_ms = statistics.median(t[0] + t[1] for t in times)
            tokens, py_peak, tensors = traced(comp, tok, n)
            rss = rss_growth(n, tok_dir)
            peak_mb = max((py_peak + tensors) / MB, (rss or 0) / MB)
            rss_text = f"{rss / MB:7.1f}" if rss is not None else f"{'n/a':>7}"
            print(
                f"{n:>4} {tokens:>7} {plan_ms:8.2f} {mask_ms:9.2f} {total_ms:9.2f} "
                f"{py_peak / MB:6.2f} {tensors / MB:9.2f} {peak_mb:8.2f} {rss_text}"
            )
            if n == GOAL_REFS:
                result = (total_ms, peak_mb)
                picture_s = time_mask_png(comp, tok, n, Path(tmp))
    print(
        "\npy MB: tracemalloc peak of the call (Python objects only: it cannot see torch storage)."
        "\ntensor MB: storage of the plan's per-token tensors and the explicit text-segment masks."
        "\nRSS MB: growth of the max resident set over one call, in a fresh process after a small"
        "\n  warm-up; an upper bound that also counts transient tensors and allocator slack."
        "\npeak MB: the larger of (py + tensor) and RSS; the goal is judged on it.\n"
    )
    assert result is not None
    ok = result[0] < GOAL_MS and result[1] < GOAL_MB
    print(
        f"goal ({GOAL_REFS} refs < {GOAL_MS:.0f} ms and < {GOAL_MB:.0f} MB): "
        f"{'MET' if ok else 'NOT MET'} ({result[0]:.1f} ms, {result[1]:.1f} MB)"
    )
    ok = picture_s < GOAL_PICTURE_S
    print(
        f"goal (mask picture of {GOAL_REFS} refs, 1024 px, < {GOAL_PICTURE_S:.0f} s): "
        f"{'MET' if ok else 'NOT MET'} ({picture_s:.2f} s)"
    )


def time_mask_png(comp: Composition, tok: object, n_refs: int, folder: Path) -> float:
    """Seconds to draw the plan's mask at 1024 px (the best of three)."""
    plan = build_plan(comp, tok, image_sizes=dict.fromkeys(range(1, n_refs + 1), IMAGE_SIZE))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        mask_png(plan, folder / "mask.png", max_px=1024)
        times.append(time.perf_counter() - t0)
    return min(times)


if __name__ == "__main__":
    main()
