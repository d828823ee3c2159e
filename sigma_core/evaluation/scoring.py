"""``python -m sigma_core evaluate score RUN``: every image of a run folder scored with the
metrics asked (docs/evaluation.md, "Metrics"), into RUN/scores.jsonl and RUN/scores.json.

Models come from the local cache only; a metric whose model is missing is skipped with a note
naming the download command, and the others still run. Resumable: an image whose last line in
scores.jsonl was made with the same models is not scored again. Under ``accelerate launch``
each process scores its contiguous share of the images (in :func:`score_files.scoring_order`)
into its own part file, and the main process merges them in that order: scores.jsonl gets the
lines one process would write.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sigma_core.errors import SigmaInputError
from sigma_core.evaluation import score_files
from sigma_core.evaluation.aesthetic import DEFAULT_AES, load_aesthetic
from sigma_core.evaluation.benchmark import ROLES, BenchmarkItem
from sigma_core.evaluation.clip_scores import DEFAULT_CLIP, ClipEmbedder, clip_t, prompt_text
from sigma_core.evaluation.dino import DEFAULT_DINO, DinoEmbedder
from sigma_core.evaluation.dreamsim import DreamSimEmbedder, default_dreamsim_dir
from sigma_core.evaluation.embedders import MAX_BATCH, ModelUnavailable, RefView, pair_scores
from sigma_core.evaluation.metrics import METRIC_NAMES
from sigma_core.evaluation.run_record import open_run
from sigma_core.evaluation.runlog import Generated, LogWriter, read_images

KINDS = ("clip", "dino", "dreamsim", "aes")  # the models, in loading order (AES reads CLIP)
NEEDS = {"clip_t": ("clip",), "clip_i": ("clip",), "clip_es": ("clip",), "dino": ("dino",),
         "dreamsim": ("dreamsim",), "aes": ("clip", "aes")}  # fmt: skip
# the pair metrics: image (or its region) vs each reference of a role, with a model's embedding
PAIRS = {"clip_i": ("clip", "wanted"), "dino": ("dino", "wanted"),
         "dreamsim": ("dreamsim", "wanted"), "clip_es": ("clip", "distractor")}  # fmt: skip
LOADERS = {"clip": ClipEmbedder.load, "dino": DinoEmbedder.load, "dreamsim": DreamSimEmbedder.load}


@dataclass(frozen=True)
class Scorers:
    """The models at hand: ``loaded`` by kind (clip, dino, dreamsim: embedders; aes: the head),
    ``models`` (metric -> the model it is scored with) and ``skipped`` (metric -> why not)."""

    loaded: dict[str, Any]
    models: dict[str, str]
    skipped: dict[str, str]


def parse_metrics(text: str) -> tuple[str, ...]:
    """--metrics: "all", or metric names separated by commas; in the metrics table's order."""
    names = METRIC_NAMES if text.strip() == "all" else [n.strip() for n in text.split(",")]
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown or not names:
        raise SigmaInputError(
            f"--metrics: {unknown[0] if unknown else text!r} is not a metric; "
            f"use all or some of {', '.join(METRIC_NAMES)}"
        )
    return tuple(m for m in METRIC_NAMES if m in names)


def model_sources(
    clip: str | None = None,
    dino: str | None = None,
    dreamsim: str | None = None,
    aes: str | None = None,
) -> dict[str, str]:
    """The model (hub id or folder) of each kind: those given, else the defaults."""
    return {
        "clip": clip or DEFAULT_CLIP,
        "dino": dino or DEFAULT_DINO,
        "dreamsim": dreamsim or str(default_dreamsim_dir()),
        "aes": aes or DEFAULT_AES,
    }


def load_scorers(
    metrics: Sequence[str], sources: Mapping[str, str], device: torch.device, batch_size: int
) -> Scorers:
    """The models the metrics need; one that is not on disk skips its metrics, with the reason."""
    wanted = {kind for m in metrics for kind in NEEDS[m]}
    loaded: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for kind in (k for k in KINDS if k in wanted):
        try:
            loaded[kind] = _load(kind, sources[kind], loaded, device, batch_size)
        except ModelUnavailable as e:
            failed[kind] = str(e)
    skipped = _skip_reasons(metrics, failed)
    models = {m: " + ".join(sources[k] for k in NEEDS[m]) for m in metrics if m not in skipped}
    return Scorers(loaded, models, skipped)


def _skip_reasons(metrics: Sequence[str], failed: Mapping[str, str]) -> dict[str, str]:
    """metric -> why it is skipped: the first model it needs that did not load."""
    reasons = {}
    for m in metrics:
        missing = [failed[kind] for kind in NEEDS[m] if kind in failed]
        if missing:
            reasons[m] = missing[0]
    return reasons


def _load(
    kind: str, source: str, loaded: dict[str, Any], device: torch.device, batch_size: int
) -> Any:
    if kind != "aes":
        return LOADERS[kind](source, device, batch_size)
    if "clip" not in loaded:
        raise ModelUnavailable("AES: it reads CLIP's image embeddings, and CLIP is not on disk")
    return load_aesthetic(source, loaded["clip"].dim)


def score_item(
    scorers: Scorers, item: BenchmarkItem, images: Sequence[Image.Image]
) -> list[dict[str, Any]]:
    """Each image's scores ({metric: value or None, "per_reference": {metric: {slot: value}}})
    for the metrics in ``scorers.models``. A pair metric is the mean over its references."""
    columns: dict[str, np.ndarray] = {}  # metric -> [len(images)]
    if "clip_t" in scorers.models:
        text = prompt_text(item.composition)
        columns["clip_t"] = clip_t(scorers.loaded["clip"], images, text)
    per_ref = pair_metrics(scorers, item, images)
    columns |= {m: np.mean(list(r.values()), axis=0) for m, r in per_ref.items() if r}
    if "aes" in scorers.models:
        columns["aes"] = scorers.loaded["aes"].score(scorers.loaded["clip"].embed_images(images))
    return [
        {
            **{m: float(columns[m][i]) if m in columns else None for m in METRIC_NAMES},
            "per_reference": {
                m: {k: float(v[i]) for k, v in r.items()} for m, r in per_ref.items()
            },
        }
        for i in range(len(images))
    ]


def reference_views(item: BenchmarkItem) -> dict[str, list[RefView]]:
    """The item's references with images, by role: {"wanted": [...], "distractor": [...]},
    each keyed by its slot ("1") with its region."""
    out: dict[str, list[RefView]] = {role: [] for role in ROLES}
    for ref in item.composition.references:
        if ref.image is not None:
            role = item.references[ref.slot]
            image = item.composition.load_image(ref)
            out[role.role].append(RefView(str(ref.slot), image, role.region))
    return out


def pair_metrics(
    scorers: Scorers, item: BenchmarkItem, images: Sequence[Image.Image]
) -> dict[str, dict[str, np.ndarray]]:
    """The pair metrics asked: {metric: {slot: [len(images)]}}. CLIP-ES compares the whole
    image with each distractor (wherever it might have landed); the others each wanted
    reference with its region."""
    views = reference_views(item)
    out = {}
    for metric, (kind, role) in PAIRS.items():
        if metric in scorers.models:
            refs = [RefView(v.key, v.image, v.region if role == "wanted" else None)
                    for v in views[role]]  # fmt: skip
            out[metric] = pair_scores(scorers.loaded[kind], images, refs)
    return out


def score_images(
    scorers: Scorers, items: dict[str, BenchmarkItem], images: list[Generated], out_path: Path
) -> None:
    """Scores ``images``, an item at a time, appending a line per image to ``out_path``."""
    by_item: dict[str, list[Generated]] = {}
    for image in images:
        by_item.setdefault(image.item, []).append(image)
    out = LogWriter(out_path)
    for item_id, group in by_item.items():
        item = items[item_id]
        rows = score_item(scorers, item, [g.load() for g in group])
        out.extend(
            {"item": g.item, "arm": g.arm, "seed": g.seed, "family": item.family, **row,
             "models": scorers.models} for g, row in zip(group, rows, strict=True)
        )  # fmt: skip


def check_batch_size(size: int) -> int:
    """``size`` when it is an allowed --batch-size, else a SigmaInputError."""
    if not 1 <= size <= MAX_BATCH:
        raise SigmaInputError(f"--batch-size: {size} is not from 1 to {MAX_BATCH}")
    return size


def main(args: argparse.Namespace) -> int:
    """Score RUN; returns the exit code (bad input raises a SigmaInputError: exit 2)."""
    from sigma_core.runtime.device import process_device, process_state

    metrics = parse_metrics(args.metrics)
    batch_size = check_batch_size(args.batch_size)
    opened = open_run(args.run)
    run, items = opened.folder, opened.items
    generated = score_files.scoring_order(read_images(run, opened.record))
    lines = score_files.read_scores(run, opened.record, opened.families, parts=True)
    state = process_state()
    device = process_device(state, args.device)
    sources = model_sources(args.clip_model, args.dino_model, args.dreamsim_model, args.aes_model)
    scorers = load_scorers(metrics, sources, device, batch_size)
    done = score_files.scored(lines, scorers.models) if scorers.models else set()
    todo = [g for g in generated if g.key not in done] if scorers.models else []
    state.wait_for_everyone()  # every process has read the same lines before any appends
    with state.split_between_processes(todo) as mine:
        single = state.num_processes == 1
        out = (
            run / score_files.SCORES if single else score_files.part_file(run, state.process_index)
        )
        score_images(scorers, items, list(mine), out)
    state.wait_for_everyone()
    if state.is_main_process:
        score_files.merge_parts(run, generated)
        score_files.write_summary(run, metrics, scorers.models, scorers.skipped)
        for metric, reason in scorers.skipped.items():
            print(f"{metric} skipped: {reason}", file=sys.stderr)
        if scorers.models:
            print(f"scored {len(todo)} images ({len(generated) - len(todo)} already scored) "
                  f"into {run / score_files.SCORES}")  # fmt: skip
        else:
            print("nothing scored: every metric asked was skipped (see above)")
    return 0
