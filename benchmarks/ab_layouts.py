"""A/B of the sequence layouts: the same compositions, seeds and noise in every layout.

SIGMA's checkpoint was trained on one sequence and its released inferencer runs another
(sigma_core.planning.layout). This experiment generates a fixed set of compositions (the presets,
plus any folder or file given) in each layout from the same initial noise, and writes to --out:
one PNG per run (its composition embedded), a grid per composition and seed with the layouts as
labelled columns, a figure of each layout's pixel difference from the inference layout,
results.json and summary.md. When the evaluation models are in the local Hugging Face cache it
also scores every image: CLIP-T (prompt), CLIP-I and DINO (references), with the models
XVerseBench uses. On real weights this is the experiment that decides the default layout:

    huggingface-cli download openai/clip-vit-large-patch14   # once, for the scores
    huggingface-cli download facebook/dino-vits16
    python -m benchmarks.ab_layouts --checkpoint ByteDance-Seed/BAGEL-7B-MoT \\
        --sigma-weights DIR_OR_REPO --seeds 0 1 2 3

Without --checkpoint it runs on the preview engine (tiny random weights: only the plumbing, the
token counts and the costs mean anything), e.g. ``python -m benchmarks.ab_layouts --steps 3``.
Everything given is checked before the model loads; bad input exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sigma_core.errors import PresetError, SigmaError, SigmaInputError
from sigma_core.evaluation.benchmark import BenchmarkItem, ReferenceRole
from sigma_core.evaluation.clip_scores import prompt_text
from sigma_core.evaluation.metrics import label
from sigma_core.evaluation.scoring import Scorers, load_scorers, model_sources, score_item
from sigma_core.geometry import latent_shape
from sigma_core.inputs.composition import Composition
from sigma_core.inputs.png import find_png_text
from sigma_core.inputs.preset import PNG_METADATA_KEY, load_composition
from sigma_core.inputs.settings import LAYOUTS, Settings, parse_size
from sigma_core.model.modes import PRECISIONS

EXIT_OK, EXIT_INPUT = 0, 2
PROJECT_PRESETS = Path(__file__).resolve().parent.parent / "presets"
DEFAULT_OUT = Path("runs/ab_layouts")
DEFAULT_SEEDS = (0, 1, 2)
MAX_RUNS = 500  # compositions x seeds x layouts in one experiment
BASELINE = "inference"  # the layout the others are compared with (when it is run)
DIFF_GAIN = 4  # the difference figure shows |a - b| x 4, so small changes stay visible
GAP, PAD = 4, 3  # pixels between grid columns; around a column's label
METRICS = ("clip_t", "clip_i", "dino")  # the scores XVerseBench reports with these models
SCORE_BATCH = 16


# ----------------------------------------------------------------------------- the inputs


@dataclass(frozen=True)
class Source:
    """One composition of the experiment: ``key`` names its files, ``file`` is where it came
    from, ``text`` its prompt as CLIP-T reads it."""

    key: str
    file: str
    composition: Composition
    text: str

    @property
    def name(self) -> str:
        return self.composition.name or Path(self.file).stem


@dataclass(frozen=True)
class Experiment:
    """Everything the command line asked for, checked."""

    sources: list[Source]
    layouts: tuple[str, ...]
    seeds: tuple[int, ...]
    out: Path
    device: torch.device

    @property
    def baseline(self) -> str:
        return BASELINE if BASELINE in self.layouts else self.layouts[0]


def preset_files(paths: Sequence[str]) -> list[Path]:
    """The preset files named, and those in the folders named (*.json, and PNGs saved by the
    studio: a folder's other PNGs, such as reference images, are passed over), each once."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".json")
            found += sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() == ".png" and find_png_text(p, PNG_METADATA_KEY) is not None
            )
            if not found:
                raise SigmaInputError(
                    f"--presets: no presets in {given} (*.json files, or PNGs saved by the studio)"
                )
            files += found
        elif path.is_file():
            if path.suffix.lower() not in (".json", ".png"):
                raise SigmaInputError(
                    f"--presets: {given} is neither a preset (.json) nor a studio PNG"
                )
            files.append(path)
        else:
            raise SigmaInputError(f"--presets: {given} does not exist")
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def check(args: argparse.Namespace) -> Experiment:
    """The experiment the arguments describe; every problem is a SigmaInputError, raised before
    anything heavy is loaded."""
    from sigma_core.runtime.device import resolve_device

    layouts = tuple(args.layouts)
    if len(set(layouts)) < len(layouts):
        raise SigmaInputError(f"--layouts: {' '.join(layouts)} names a layout twice")
    seeds = tuple(args.seeds)
    for seed in seeds:
        _bounded("--seeds", seed=seed)
    if len(set(seeds)) < len(seeds):
        raise SigmaInputError(f"--seeds: {' '.join(map(str, seeds))} repeats a seed")
    changes: dict[str, Any] = {}
    if args.steps is not None:
        changes["num_timesteps"] = _bounded("--steps", num_timesteps=args.steps)
    if args.size is not None:
        changes["size"] = _bounded("--size", size=parse_size(args.size))
    if args.sigma_weights and not args.checkpoint:
        raise SigmaInputError(
            "--sigma-weights needs --checkpoint (the BAGEL folder that supplies the configs, the "
            "VAE and the tokenizer); the preview engine has no real weights to override"
        )
    files = preset_files(args.presets)
    runs = len(files) * len(seeds) * len(layouts)
    if runs > MAX_RUNS:
        raise SigmaInputError(
            f"{runs} runs ({len(files)} compositions x {len(seeds)} seeds x {len(layouts)} "
            f"layouts) is over the cap of {MAX_RUNS}; give fewer presets, seeds or layouts"
        )
    sources = []
    for i, path in enumerate(files):
        comp = load_composition(path)
        try:
            settings = comp.settings.replace(**changes)
        except PresetError as e:
            raise SigmaInputError(f"{path}: {e}") from None
        comp = replace(comp, settings=settings)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem)[:60]
        try:  # the prompt's errors, before the model loads
            text = prompt_text(comp)
        except SigmaInputError as e:
            raise SigmaInputError(f"{path}: {e}") from None
        sources.append(Source(f"{i + 1:02d}-{slug}", str(path), comp, text))
    out = Path(args.out)
    try:
        for sub in ("images", "grids", "diffs"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SigmaInputError(f"--out: cannot write to {out} ({e.strerror or e})") from None
    return Experiment(sources, layouts, seeds, out, resolve_device(args.device))


def _bounded(option: str, **value: Any) -> Any:
    """One setting's value, checked by :class:`Settings` (the one place its bounds live); a
    refusal names the option."""
    ((name, given),) = value.items()
    try:
        Settings(**value)
    except PresetError as e:
        raise SigmaInputError(f"{option}: {str(e).removeprefix(f'settings.{name}: ')}") from None
    return given


# ----------------------------------------------------------------------------- generation


@dataclass
class Run:
    """One image: a composition and seed in one layout, and what it cost."""

    composition: str
    key: str
    file: str
    seed: int
    layout: str
    tokens: int  # the plan's length, as the engine runs it (a phantom block is 3 tokens)
    phantom_blocks: int
    phantom_tokens: int  # the zero-input tokens the phantom blocks stand for, N each
    max_position: int  # the largest rope position
    output_size: tuple[int, int]
    timings: dict[str, float]
    image: str  # paths relative to --out
    grid: str
    diff: str | None
    mad_vs_baseline: float = 0.0  # mean |pixel difference| (0-255) from the baseline's image
    scores: dict[str, float] = field(default_factory=dict)


def in_layout(composition: Composition, layout: str, seed: int) -> Composition:
    return replace(composition, settings=composition.settings.replace(layout=layout, seed=seed))


def generate(pipe: Any, exp: Experiment) -> Iterator[list[Run]]:
    """Every composition and seed in every layout, from one noise tensor per composition and
    seed; writes the images, the grids and the difference figures, and yields the runs of each
    composition and seed."""
    done = 0
    total = len(exp.sources) * len(exp.seeds) * len(exp.layouts)
    seen_warnings: set[str] = set()
    for src in exp.sources:
        for seed in exp.seeds:
            # the output size follows the composition (its size, or its last reference), which
            # no layout changes: one noise tensor serves every layout
            size = pipe.plan(in_layout(src.composition, exp.layouts[0], seed)).output_size
            noise = torch.randn(latent_shape(size), generator=torch.Generator().manual_seed(seed))
            stem = f"{src.key}__seed{seed}"
            group: list[Run] = []
            images: dict[str, Image.Image] = {}
            for layout in exp.layouts:
                out = pipe(in_layout(src.composition, layout, seed), latents=noise)
                for warning in out.plan.warnings:
                    if warning not in seen_warnings:
                        seen_warnings.add(warning)
                        print(f"warning: {src.name}: {warning}", file=sys.stderr)
                image_path = out.save(exp.out / "images" / f"{stem}__{layout}.png", overwrite=True)
                images[layout] = out.images[0]
                phantoms = [s for s in out.plan.segments if s.kind == "phantom"]
                group.append(
                    Run(
                        composition=src.name, key=src.key, file=src.file, seed=seed,
                        layout=layout, tokens=out.plan.length, phantom_blocks=len(phantoms),
                        phantom_tokens=sum(s.phantom_tokens for s in phantoms),
                        max_position=out.plan.max_position, output_size=out.plan.output_size,
                        timings={k: round(v, 4) for k, v in out.timings.items()},
                        image=image_path.relative_to(exp.out).as_posix(),
                        grid=f"grids/{stem}.png", diff=None,
                    )
                )  # fmt: skip
                done += 1
                print(
                    f"[{done}/{total}] {src.name}, seed {seed}, {layout}: "
                    f"{out.plan.length} tokens, {out.timings['total_s']:.1f} s",
                    file=sys.stderr,
                )
            write_figures(group, images, exp)
            yield group


def write_figures(group: list[Run], images: dict[str, Image.Image], exp: Experiment) -> None:
    """The grid of one composition and seed, and the figure of each layout's pixel difference
    from the baseline's image (when there is another layout); sets the runs' differences."""
    columns = [
        (images[r.layout], [r.layout, f"{r.tokens} tokens, {r.phantom_blocks} phantom"])
        for r in group
    ]
    labelled_columns(columns).save(exp.out / group[0].grid)
    base = images[exp.baseline]
    diffs = []
    for run in group:
        run.mad_vs_baseline, picture = pixel_difference(images[run.layout], base)
        if run.layout != exp.baseline:
            lines = [
                f"{run.layout} vs {exp.baseline}",
                f"MAD {run.mad_vs_baseline:.2f}, x{DIFF_GAIN}",
            ]
            diffs.append((picture, lines))
    if diffs:
        diff_path = group[0].grid.replace("grids/", "diffs/")
        labelled_columns(diffs).save(exp.out / diff_path)
        for run in group:
            run.diff = diff_path


def pixel_difference(image: Image.Image, base: Image.Image) -> tuple[float, Image.Image]:
    """The mean absolute difference of two images of one size (0-255, over pixels and channels),
    and the difference as a grey picture, amplified by DIFF_GAIN (the labels say so)."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    b = np.asarray(base.convert("RGB"), dtype=np.float32)
    diff = np.abs(a - b)
    grey = np.clip(diff.mean(axis=2) * DIFF_GAIN, 0, 255).astype(np.uint8)
    return float(diff.mean()), Image.fromarray(grey).convert("RGB")


def labelled_columns(columns: Sequence[tuple[Image.Image, Sequence[str]]]) -> Image.Image:
    """The images side by side, GAP pixels apart, each under its lines of text (clipped to its
    width), in a font that grows with the images. The images share one size."""
    w, h = columns[0][0].size
    try:
        font = ImageFont.load_default(size=max(11, w // 48))
    except TypeError:  # Pillow 10.0 has one size
        font = ImageFont.load_default()
    line = font.getbbox("Ag")[3] + 2
    header = PAD * 2 + line * max(len(lines) for _, lines in columns)
    grid = Image.new("RGB", (len(columns) * (w + GAP) - GAP, header + h), "white")
    for i, (image, lines) in enumerate(columns):
        label = Image.new("RGB", (w, header), "white")
        draw = ImageDraw.Draw(label)
        for j, text in enumerate(lines):
            draw.text((PAD, PAD + j * line), text, fill="black", font=font)
        grid.paste(label, (i * (w + GAP), 0))
        grid.paste(image.convert("RGB"), (i * (w + GAP), header))
    return grid


# ----------------------------------------------------------------------------- scores


def score_runs(scorers: Scorers, exp: Experiment, runs: list[Run]) -> None:
    """Scores every run, one composition and seed at a time, from the images written."""
    for src in exp.sources:
        wanted = {r.slot: ReferenceRole() for r in src.composition.references}
        item = BenchmarkItem(src.key, "combine", src.composition, wanted)
        for seed in exp.seeds:
            group = [r for r in runs if r.key == src.key and r.seed == seed]
            images = []
            for run in group:
                with Image.open(exp.out / run.image) as im:
                    images.append(im.convert("RGB"))
            for run, row in zip(group, score_item(scorers, item, images), strict=True):
                run.scores = {m: row[m] for m in METRICS if row[m] is not None}


# ----------------------------------------------------------------------------- the report


def by_layout(runs: list[Run], layouts: Sequence[str]) -> list[dict[str, Any]]:
    """Means over each layout's runs."""
    rows = []
    for layout in layouts:
        mine = [r for r in runs if r.layout == layout]
        row: dict[str, Any] = {
            "layout": layout,
            "runs": len(mine),
            "tokens": statistics.mean(r.tokens for r in mine),
            "phantom_blocks": statistics.mean(r.phantom_blocks for r in mine),
            "prefill_s": statistics.mean(r.timings["prefill_s"] for r in mine),
            "denoise_s": statistics.mean(r.timings["denoise_s"] for r in mine),
            "mad_vs_baseline": statistics.mean(r.mad_vs_baseline for r in mine),
        }
        for metric in METRICS:
            values = [r.scores[metric] for r in mine if metric in r.scores]
            if values:
                row[metric] = statistics.mean(values)
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value).replace("|", "\\|")


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def summary_markdown(results: dict[str, Any], runs: Sequence[Run]) -> str:
    """summary.md: what ran, the means by layout, and every run with its image."""
    base, steps = results["baseline"], results["steps"] or "each preset's"
    metrics = [m for m in METRICS if any(m in r.scores for r in runs)]
    head = ["layout", "runs", "tokens", "phantom blocks", "prefill s", "denoise s"]
    head += [f"MAD vs {base}", *(label(m) for m in metrics)]
    keys = ["layout", "runs", "tokens", "phantom_blocks", "prefill_s", "denoise_s"]
    keys += ["mad_vs_baseline", *metrics]
    layout_rows = [[row.get(k, "") for k in keys] for row in results["by_layout"]]
    lines = [
        "# Sequence layouts, A/B",
        "",
        f"Engine: {results['engine']}; compositions: {len(results['compositions'])}, seeds: "
        f"{len(results['seeds'])} (each layout from the same noise), layouts: "
        f"{len(results['layouts'])}; steps: {steps}.",
        "",
        f"MAD: mean absolute pixel difference (0-255) from the {base} layout's image of the same "
        f"composition and seed (diffs/ shows it x{DIFF_GAIN}). Scores are 100 x cosine "
        "similarities: CLIP-T image-prompt, CLIP-I and DINO image-reference (mean over "
        "references), as docs/evaluation.md defines them.",
        "Reference encodes are cached across layouts: compare prefill and denoise times.",
    ]
    lines += [f"{note}." for note in results["scores"]["skipped"]]
    lines += ["", "## By layout", "", *_table(head, layout_rows), "", "## Runs", ""]
    head = ["composition", "seed", "layout", "tokens", "MAD", *(label(m) for m in metrics)]
    run_rows = [
        [
            r.composition, r.seed, r.layout, r.tokens, r.mad_vs_baseline,
            *(r.scores.get(m, "") for m in metrics),
            f"[image]({r.image}) [grid]({r.grid})" + (f" [diff]({r.diff})" if r.diff else ""),
        ]
        for r in runs
    ]  # fmt: skip
    return "\n".join([*lines, *_table([*head, "files"], run_rows), ""])


def write_report(exp: Experiment, runs: list[Run], about: dict[str, Any]) -> None:
    """results.json and summary.md: ``about`` the experiment, and the runs so far."""
    results = {**about, "by_layout": by_layout(runs, exp.layouts), "runs": list(map(asdict, runs))}
    (exp.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (exp.out / "summary.md").write_text(summary_markdown(results, runs), encoding="utf-8")


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ab_layouts",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--checkpoint", metavar="DIR_OR_REPO", help="BAGEL folder or hub id (default: preview)"
    )
    p.add_argument(
        "--sigma-weights", metavar="DIR_OR_REPO", help="SIGMA's weights (needs --checkpoint)"
    )
    p.add_argument(
        "--presets",
        nargs="+",
        default=[str(PROJECT_PRESETS)],
        metavar="DIR_OR_FILE",
        help="preset files or studio PNGs, or folders of them (default: the project's presets/)",
    )
    p.add_argument(
        "--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS), help="(default: all)"
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=list(DEFAULT_SEEDS),
        help=f"(default: {' '.join(map(str, DEFAULT_SEEDS))})",
    )
    p.add_argument("--steps", type=int, help="timesteps (default: each preset's)")
    p.add_argument("--size", metavar="WxH", help="output size (default: each preset's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: cuda if present)")
    p.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="auto is bf16 on a GPU, fp32 on cpu",
    )
    p.add_argument(
        "--out", default=str(DEFAULT_OUT), help=f"results folder (default: {DEFAULT_OUT})"
    )
    p.add_argument(
        "--score",
        choices=("auto", "off"),
        default="auto",
        help="auto: CLIP-T, CLIP-I and DINO where the models are in the local cache",
    )
    return p


def load_pipeline(args: argparse.Namespace, device: torch.device) -> Any:
    """The engine ``generate`` would load for these flags (runtime.engine.load_engine)."""
    from sigma_core.model.modes import EngineChoice
    from sigma_core.runtime.engine import load_engine

    choice = EngineChoice(args.checkpoint, args.sigma_weights, precision=args.precision)
    if not choice.checkpoint:
        print("no --checkpoint: using the preview engine (random weights)", file=sys.stderr)
    return load_engine(choice, device)


def main(argv: list[str] | None = None) -> int:
    """Run the experiment; returns the exit code (0, or 2 for bad input). The report is written
    after every composition and seed, so an interrupted run keeps what it made."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return e.code if isinstance(e.code, int) else EXIT_INPUT
    try:
        exp = check(args)
        pipe = load_pipeline(args, exp.device)
        about: dict[str, Any] = {
            "engine": "preview engine (random weights)" if pipe.preview else args.checkpoint,
            "checkpoint": args.checkpoint,
            "sigma_weights": args.sigma_weights,
            "device": str(exp.device),
            "precision": pipe.precision.name,
            "layouts": list(exp.layouts),
            "baseline": exp.baseline,
            "seeds": list(exp.seeds),
            "steps": args.steps,
            "size": args.size,
            "scores": {"models": {}, "skipped": ["scores pending: the runs are not finished"]},
            "compositions": [
                {"key": s.key, "name": s.name, "file": s.file, "prompt_text": s.text}
                for s in exp.sources
            ],
        }
        runs: list[Run] = []
        for group in generate(pipe, exp):
            runs += group
            write_report(exp, runs, about)
        del pipe  # free the engine's memory for the evaluation models
        about["scores"] = {"models": {}, "skipped": ["scores off (--score off)"]}
        if args.score == "auto":
            scorers = load_scorers(METRICS, model_sources(), exp.device, SCORE_BATCH)
            notes = [f"{label(m)} skipped: {why}" for m, why in scorers.skipped.items()]
            for note in notes:
                print(note, file=sys.stderr)
            if scorers.models:
                score_runs(scorers, exp, runs)
            about["scores"] = {"models": scorers.models, "skipped": notes}
    except SigmaError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
    write_report(exp, runs, about)
    print(f"wrote {len(runs)} runs to {exp.out}: summary.md, results.json, images/, grids/, diffs/")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
