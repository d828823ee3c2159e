"""What each CLI command does (:mod:`sigma_core.cli` parses the arguments and dispatches here).

Every command returns its exit code and raises a :class:`SigmaError` for anything the user can
fix. Commands import what they use when they run, so ``validate`` and ``attributes`` never load
torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from sigma_core.errors import PresetError, SigmaError, SigmaInputError
from sigma_core.inputs.settings import SETTING_SPECS, settings_from_text

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2
TINY_NOTE = (
    "token ids are from the tiny offline tokenizer: text token counts differ from Qwen2.5's "
    "(pass --tokenizer DIR with BAGEL's tokenizer files for exact numbers)"
)
SETTING_FLAGS = {spec.flag: spec.name for spec in SETTING_SPECS if spec.flag}


def _tokenizer(path: str | None) -> tuple[Any, str | None]:
    """The tokenizer to plan with, and the caveat to print with its numbers."""
    from sigma_core.planning import load_fast_tokenizer, load_tiny_tokenizer

    if path is not None:
        return load_fast_tokenizer(path), None
    return load_tiny_tokenizer(), TINY_NOTE


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _composition(args: argparse.Namespace) -> Any:
    """The preset (or PNG) named by ``args.preset`` with the setting flags given applied, each
    checked as the preset's own values are; a message names the flag."""
    from sigma_core.inputs import load_composition

    comp = load_composition(args.preset)
    given = {
        name: str(getattr(args, flag))
        for flag, name in SETTING_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    try:
        settings = settings_from_text(given, comp.settings)
    except SigmaInputError as e:
        text = str(e)
        for flag, name in SETTING_FLAGS.items():
            text = text.replace(f"settings.{name}:", f"--{flag} (settings.{name}):")
        raise PresetError(text) from None
    return replace(comp, settings=settings)


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every preset and report each; one bad file makes the exit code 2, and every file
    is still checked and counted in the summary."""
    import sigma_core.planning
    from sigma_core.inputs import load_composition

    tokenizer, _ = _tokenizer(args.tokenizer)
    bad = 0
    for path in args.presets:
        try:
            plan = sigma_core.planning.build_plan(load_composition(path), tokenizer)
        except SigmaError as e:
            bad += 1
            print(f"{path}: FAILED", file=sys.stderr)
            prefix = f"{Path(path)}:"  # preset errors start with the path, printed above
            text = str(e).removeprefix(prefix).lstrip()
            for line in text.splitlines():
                print(f"  {line}", file=sys.stderr)
            continue
        print(f"{path}: OK ({plan.length} tokens, {_plural(plan.num_references, 'reference')})")
        for warning in plan.warnings:
            print(f"  warning: {warning}")
    if len(args.presets) > 1:
        print(f"{len(args.presets) - bad} of {len(args.presets)} presets are valid")
    return EXIT_INPUT if bad else EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the interleaved sequence the model would read, and optionally draw its mask."""
    import sigma_core.planning
    from sigma_core.report import plan_report, render_report

    comp = _composition(args)  # bad input fails before the tokenizer loads
    # refused before the tokenizer loads; mask_png keeps a file that appears meanwhile
    if args.mask_png and os.path.lexists(args.mask_png) and not args.overwrite:
        raise SigmaInputError(
            f"--mask-png: {args.mask_png!r} already exists; pass --overwrite to replace it, or "
            "choose another name"
        )
    tokenizer, note = _tokenizer(args.tokenizer)
    plan = sigma_core.planning.build_plan(comp, tokenizer)
    report = {
        "source": args.preset,
        "tokenizer": args.tokenizer or "tiny offline tokenizer",
        "tokenizer_note": note,
        **plan_report(plan, comp),
    }
    if args.mask_png:
        from sigma_core.report import mask_png

        try:  # written in one step: never half a file
            written = mask_png(plan, args.mask_png, overwrite=args.overwrite)
        except SigmaError as e:  # the reason, or a full disk
            raise type(e)(f"--mask-png: {e}") from None
        report["mask_png"] = str(written)
    if args.json:
        print(json.dumps(report, indent=2))  # ASCII: bidi controls reach no terminal raw
    else:
        print(render_report(report))
        if args.mask_png:
            print(f"mask picture: {report['mask_png']}")
    return EXIT_OK


def cmd_make_tokenizer(args: argparse.Namespace) -> int:
    """Write the tiny tokenizer and show the ids the plan will use."""
    from sigma_core.planning import QWEN25_BASE_VOCAB, TokenIds, load_tokenizer, make_tiny_tokenizer

    try:
        out = make_tiny_tokenizer(
            args.out_dir, pad_base_vocab_to=QWEN25_BASE_VOCAB if args.qwen_ids else None
        )
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or e
        raise SigmaInputError(f"OUT_DIR: cannot write {args.out_dir!r} ({reason})") from None
    tokenizer = load_tokenizer(out)
    ids = TokenIds.from_tokenizer(tokenizer)
    print(f"wrote a tiny Qwen2-layout tokenizer ({len(tokenizer)} entries) to {out}")
    markers = {
        "<|im_start|>": ids.im_start,
        "<|im_end|>": ids.im_end,
        "<|vision_start|>": ids.vision_start,
        "<|vision_end|>": ids.vision_end,
    }
    for title, table in (("markers", markers), ("SIGMA attribute tokens", ids.attributes)):
        print(f"{title}:")
        for token, i in table.items():
            print(f"  {token:<18} {i}")
    return EXIT_OK


def cmd_make_tiny(args: argparse.Namespace) -> int:
    """Write a tiny random checkpoint in the official BAGEL layout into a new folder."""
    from sigma_core.runtime.tiny import write_new_tiny_checkpoint

    out = write_new_tiny_checkpoint(
        args.out_dir, seed=args.seed, layers=args.layers, attribute_embed=args.attribute_embed
    )
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote a tiny random BAGEL checkpoint (seed {args.seed}) to {out}: {files}")
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate an image from a preset, with progress, and save it with its composition.

    Everything the user gave (options, preset, output location, device) is checked before the
    model loads; the plan's warnings are printed before the first step.
    """
    from sigma_core.inputs import check_output_path
    from sigma_core.model.modes import EngineChoice

    choice = EngineChoice.from_args(args)
    comp = _composition(args)
    out_path = check_output_path(args.out, overwrite=args.overwrite)

    from sigma_core.runtime.device import resolve_device

    device = resolve_device(args.device)  # before the pipeline's imports (diffusers: seconds)

    from sigma_core.runtime.engine import load_engine

    if not choice.checkpoint:
        print("no --checkpoint: using the preview engine (random weights)", file=sys.stderr)
    pipe = load_engine(choice, device)
    for warning in pipe.plan(comp).warnings:
        print(f"warning: {warning}", file=sys.stderr)
    live = sys.stderr.isatty()
    out = pipe(comp, callback_on_step_end=_progress_printer(comp.settings.num_timesteps - 1, live))
    if live:
        print(file=sys.stderr)  # end the counter's line
    path = out.save(out_path, overwrite=args.overwrite, rescue=True)
    for warning in out.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    note = f" [{out.notice}]" if out.notice else ""
    print(f"wrote {path} (seed {out.seed}, {out.timings['total_s']:.1f} s){note}")
    return EXIT_OK


def _progress_printer(total: int, live: bool) -> Any:
    """A step callback printing "step i/n": a ``live`` counter on a terminal, one line per
    step in a log file."""

    def progress(pipe: Any, step: int, t: Any, tensors: dict[str, Any]) -> None:
        line = f"step {step + 1}/{total} (t={float(t):.3f})"
        print(f"\r{line}" if live else line, end="" if live else "\n", file=sys.stderr, flush=True)

    return progress


def cmd_train(args: argparse.Namespace) -> int:
    """Train; the effective config goes to stdout first, so a log records it."""
    from sigma_core.inputs import check_run_folder
    from sigma_core.training.config import load_config, parse_override

    overrides = dict(parse_override(text) for text in args.set)
    cfg = load_config(args.config, overrides)
    if args.max_steps is not None and not 1 <= args.max_steps <= cfg.steps:
        raise SigmaInputError(f"--max-steps: {args.max_steps} must be from 1 to {cfg.steps}")
    for what, folder in cfg.folders().items():  # before the model loads, as generate does
        check_run_folder(folder, what)
    from sigma_core.training.trainer import Trainer

    trainer = Trainer(cfg, resume=args.resume)
    main_process = trainer.accelerator.is_main_process
    if main_process:
        print(cfg.to_yaml(), end="", flush=True)
    history = trainer.run(args.max_steps)
    if main_process:
        loss = f"{history[-1].loss:.4f}" if history else "n/a"
        print(f"step {trainer.step} of {cfg.steps}: loss {loss}; {trainer.skipped.summary()}")
        print(f"checkpoints: {Path(cfg.output_dir) / 'checkpoints'}")
        if trainer.interrupted:
            print("stopped by Ctrl-C after a checkpoint; continue with --resume latest",
                  file=sys.stderr)  # fmt: skip
    return 130 if trainer.interrupted else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from sigma_core.training.checkpoints import export

    out = export(
        Path(args.checkpoint),
        Path(args.out_dir),
        use_ema=not args.raw,
        base=args.base,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}: load with SigmaPipeline.from_pretrained(base, sigma_weights={str(out)!r})")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate generate|score|report``: the step's module does the work."""
    import importlib

    module = {"generate": "runs", "score": "scoring", "report": "report"}[args.evaluate]
    return int(importlib.import_module(f"sigma_core.evaluation.{module}").main(args))


def cmd_attributes(args: argparse.Namespace) -> int:
    """List SIGMA's tokens, their ids in a SIGMA checkpoint and the names accepted for them."""
    from sigma_core.report import attributes_table

    print(attributes_table())
    return EXIT_OK
