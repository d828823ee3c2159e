"""Command line: check presets, show what the model will read, and generate.

``python -m sigma_core validate|inspect|generate|make-tokenizer|make-tiny|attributes``.
Exit codes: 0 success, 2 bad input or weights, out of memory, a cancelled run (any
:class:`SigmaError`, and usage errors), 1 a bug. Only argument parsing and dispatch live here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from sigma_core.errors import PresetError, SigmaError, SigmaInputError, SigmaResourceError
from sigma_core.inputs.settings import LAYOUT_CHOICES
from sigma_core.limits import MAX_SEED, MAX_TIMESTEPS, MAX_TINY_LAYERS, MIN_TIMESTEPS
from sigma_core.model.modes import FLAG_HELP, OFFLOAD_MODES, PRECISIONS, VAE_DTYPES

# Commands import what they use when they run, so `validate` and `attributes` never load torch.

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2
TINY_NOTE = (
    "token ids are from the tiny offline tokenizer: text token counts differ from Qwen2.5's "
    "(pass --tokenizer DIR with BAGEL's tokenizer files for exact numbers)"
)


def _tokenizer(path: str | None) -> tuple[Any, str | None]:
    """The tokenizer to plan with, and the caveat to print with its numbers."""
    from sigma_core.planning import load_fast_tokenizer, load_tiny_tokenizer

    if path is not None:
        return load_fast_tokenizer(path), None
    return load_tiny_tokenizer(), TINY_NOTE


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every preset and report each; one bad file makes the exit code 2, and every file
    is still checked and counted in the summary."""
    from sigma_core.inputs import load_composition
    from sigma_core.planning import build_plan

    tokenizer, _ = _tokenizer(args.tokenizer)
    bad = 0
    for path in args.presets:
        try:
            plan = build_plan(load_composition(path), tokenizer)
        except SigmaError as e:
            bad += 1
            print(f"{path}: FAILED", file=sys.stderr)
            for line in _without_prefix(str(e), path).splitlines():
                print(f"  {line}", file=sys.stderr)
            continue
        refs = _plural(plan.num_references, "reference")
        print(f"{path}: OK ({plan.length} tokens, {refs})")
        for warning in plan.warnings:
            print(f"  warning: {warning}")
    if len(args.presets) > 1:
        print(f"{len(args.presets) - bad} of {len(args.presets)} presets are valid")
    return EXIT_INPUT if bad else EXIT_OK


def _without_prefix(message: str, path: str) -> str:
    """Drop the "PATH:" that preset errors start with; validate already printed the path."""
    prefix = f"{Path(path)}:"
    return message[len(prefix) :].lstrip() if message.startswith(prefix) else message


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the interleaved sequence the model would read, and optionally draw its mask."""
    from sigma_core.inputs import load_composition
    from sigma_core.planning import build_plan
    from sigma_core.report import plan_report, render_report

    comp = load_composition(args.preset)  # bad input fails before the tokenizer loads
    if args.layout is not None:
        comp = replace(comp, settings=comp.settings.replace(layout=args.layout))
    tokenizer, note = _tokenizer(args.tokenizer)
    plan = build_plan(comp, tokenizer)
    report = {
        "source": args.preset,
        "tokenizer": args.tokenizer or "tiny offline tokenizer",
        "tokenizer_note": note,
        **plan_report(plan, comp),
    }
    if args.mask_png:
        from sigma_core.report import mask_png

        try:
            report["mask_png"] = str(mask_png(plan, args.mask_png))
        except (OSError, ValueError) as e:
            reason = getattr(e, "strerror", None) or e
            raise SigmaInputError(
                f"--mask-png: cannot write {args.mask_png!r} ({reason})"
            ) from None
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
    print("markers:")
    markers = {
        "<|im_start|>": ids.im_start,
        "<|im_end|>": ids.im_end,
        "<|vision_start|>": ids.vision_start,
        "<|vision_end|>": ids.vision_end,
    }
    for token, i in markers.items():
        print(f"  {token:<18} {i}")
    print("SIGMA attribute tokens:")
    for token, i in ids.attributes.items():
        print(f"  {token:<18} {i}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """Train; the effective config goes to stdout first, so a log records it."""
    from sigma_core.training.config import load_config, parse_override

    overrides = dict(parse_override(text) for text in args.set)
    cfg = load_config(args.config, overrides)
    if args.max_steps is not None and not 1 <= args.max_steps <= cfg.steps:
        raise SigmaInputError(f"--max-steps: {args.max_steps} must be from 1 to {cfg.steps}")
    from sigma_core.training.trainer import Trainer

    trainer = Trainer(cfg, resume=args.resume)
    if trainer.accelerator.is_main_process:
        print(cfg.to_yaml(), end="", flush=True)
    history = trainer.run(args.max_steps)
    if trainer.accelerator.is_main_process:
        last = history[-1] if history else None
        loss = f"{last.loss:.4f}" if last else "n/a"
        print(f"step {trainer.step} of {cfg.steps}: loss {loss}; {trainer.skipped.summary()}")
        print(f"checkpoints: {Path(cfg.output_dir) / 'checkpoints'}")
        if trainer.interrupted:
            print("stopped by Ctrl-C after a checkpoint; continue with --resume latest",
                  file=sys.stderr)  # fmt: skip
    return 130 if trainer.interrupted else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from sigma_core.training.checkpoints import export

    folder = Path(args.checkpoint)
    if not (folder / "state.json").is_file():
        raise SigmaInputError(f"CHECKPOINT_DIR: {args.checkpoint!r} is not a training checkpoint")
    out = export(folder, Path(args.out_dir), use_ema=not args.raw, base=args.base)
    print(f"wrote {out}: load with SigmaPipeline.from_pretrained(base, sigma_weights={str(out)!r})")
    return EXIT_OK


def cmd_make_tiny(args: argparse.Namespace) -> int:
    """Write a tiny random checkpoint in the official BAGEL layout: into a private folder
    first, moved in place when complete, so a failure never leaves half a checkpoint."""
    from sigma_core.inputs.fields import shown

    out = Path(args.out_dir)
    # The runtime checks these too; checked here first, they fail before torch loads (seconds).
    if not 1 <= args.layers <= MAX_TINY_LAYERS:
        raise SigmaInputError(f"layers: {shown(args.layers)} must be from 1 to {MAX_TINY_LAYERS}")
    if not 0 <= args.seed < MAX_SEED:
        raise SigmaInputError(f"seed: {shown(args.seed)} must be 0 <= seed < 2^63")
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise SigmaInputError(
                f"OUT_DIR: {args.out_dir!r} already exists and is not an empty folder; "
                "choose a new folder"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or e
        raise SigmaInputError(f"OUT_DIR: cannot write {args.out_dir!r} ({reason})") from None
    from sigma_core.runtime import make_tiny_checkpoint

    try:
        make_tiny_checkpoint(
            staging, seed=args.seed, layers=args.layers, attribute_embed=args.attribute_embed
        )
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except OSError as e:
        raise SigmaInputError(
            f"OUT_DIR: cannot write {args.out_dir!r} ({e.strerror or e})"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote a tiny random BAGEL checkpoint (seed {args.seed}) to {out}: {files}")
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate an image from a preset, with progress, and save it with its composition.

    Everything the user gave (options, preset, output location, device) is checked before the
    model loads; the plan's warnings are printed before the first step.
    """
    from sigma_core.inputs import check_output_path, load_composition

    if args.sigma_weights and not args.checkpoint:
        raise SigmaInputError(
            "--sigma-weights needs --checkpoint (the BAGEL folder that supplies the configs, the "
            "VAE and the tokenizer); the preview engine has no real weights to override"
        )
    comp = load_composition(args.preset)
    comp = replace(comp, settings=_settings_with_options(comp.settings, args))
    out_path = check_output_path(args.out, overwrite=args.overwrite)

    from sigma_core.runtime import resolve_device

    device = resolve_device(args.device)  # before the pipeline's imports (diffusers: seconds)

    from sigma_core.runtime import SigmaPipeline

    options = {
        "precision": None if args.precision == "auto" else args.precision,
        "vae_dtype": args.vae_dtype,
        "offload": args.offload,
        "device_map": args.device_map,
        "compile": args.compile,
    }
    if args.checkpoint:
        pipe = SigmaPipeline.from_pretrained(
            args.checkpoint, sigma_weights=args.sigma_weights, device=device, **options
        )
    else:
        print("no --checkpoint: using the preview engine (random weights)", file=sys.stderr)
        pipe = SigmaPipeline.preview_engine(device=device, **options)
    for warning in pipe.plan(comp).warnings:
        print(f"warning: {warning}", file=sys.stderr)

    total = comp.settings.num_timesteps - 1
    live = sys.stderr.isatty()

    def progress(p: SigmaPipeline, step: int, t: Any, kwargs: dict[str, Any]) -> None:
        line = f"step {step + 1}/{total} (t={float(t):.3f})"
        print(f"\r{line}" if live else line, end="" if live else "\n", file=sys.stderr, flush=True)

    out = pipe(comp, callback_on_step_end=progress)
    if live:
        print(file=sys.stderr)
    note = f" [{out.notice}]" if out.notice else ""
    try:
        path = out.save(out_path, overwrite=args.overwrite)
    except SigmaError as e:  # the disk filled up or the folder went away during the run
        rescue = Path(tempfile.gettempdir()) / f"sigma-{out.seed}-{os.getpid()}.png"
        out.save(rescue)
        kind = SigmaResourceError if isinstance(e, SigmaResourceError) else SigmaInputError
        raise kind(f"{e}\nthe image was saved to {rescue} instead") from None
    for warning in out.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {path} (seed {out.seed}, {out.timings['total_s']:.1f} s){note}")
    return EXIT_OK


def _settings_with_options(settings: Any, args: argparse.Namespace) -> Any:
    """The preset's settings with --steps, --seed, --size and --layout applied, checked as the
    preset's own values are; a message names the option."""
    changes: dict[str, Any] = {}
    if args.steps is not None:
        changes["num_timesteps"] = args.steps
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.size is not None:
        changes["size"] = parse_size(args.size)
    if args.layout is not None:
        changes["layout"] = args.layout
    try:
        return settings.replace(**changes)
    except PresetError as e:
        text = str(e)
        for option, name in (("--steps", "num_timesteps"), ("--seed", "seed"), ("--size", "size")):
            text = text.replace(f"settings.{name}:", f"{option} (settings.{name}):")
        raise PresetError(text) from None


def _layout_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layout",
        choices=LAYOUT_CHOICES,
        default=None,
        help="sequence layout (default: the preset's): inference is SIGMA's released "
        "inferencer; training adds SIGMA's training rope (+2 per reference) and phantom ViT "
        "blocks; training-no-vit the rope alone; auto follows the weights' model card",
    )


def parse_size(text: str) -> tuple[int, int]:
    """``--size WxH`` as (width, height); the bounds are the settings' to check."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SigmaInputError(f"--size: {text[:40]!r} is not WIDTHxHEIGHT, e.g. 1024x768") from None
    return (w, h)


def cmd_attributes(args: argparse.Namespace) -> int:
    """List SIGMA's tokens, their ids in a SIGMA checkpoint and the names accepted for them."""
    from sigma_core.report import attributes_table

    print(attributes_table())
    return EXIT_OK


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; --debug is accepted before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show a traceback on internal errors (or set SIGMA_DEBUG=1)",
    )
    tok = argparse.ArgumentParser(add_help=False)
    tok.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="folder with Qwen2.5 tokenizer files (default: the tiny offline tokenizer)",
    )

    parser = argparse.ArgumentParser(
        prog="python -m sigma_core",
        description="SIGMA Studio: check presets and inspect the interleaved sequence.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "validate", parents=[common, tok], help="check presets, their images and prompts"
    )
    p.add_argument("presets", nargs="+", metavar="PRESET.json")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "inspect", parents=[common, tok], help="show the token sequence a preset becomes"
    )
    p.add_argument("preset", metavar="PRESET.json", help="a preset, or a PNG saved by the studio")
    p.add_argument("--mask-png", metavar="OUT.png", help="also draw the attention mask")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _layout_option(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("make-tokenizer", parents=[common], help="write the tiny offline tokenizer")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument(
        "--qwen-ids",
        action="store_true",
        help="pad the vocabulary so marker and SIGMA token ids equal Qwen2.5's",
    )
    p.set_defaults(func=cmd_make_tokenizer)

    p = sub.add_parser(
        "make-tiny", parents=[common], help="write a tiny random checkpoint (official layout)"
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--seed", type=int, default=0, help="random seed, 0 <= S < 2^63 (default 0)")
    p.add_argument(
        "--layers", type=int, default=2, help=f"decoder layers, 1 to {MAX_TINY_LAYERS} (default 2)"
    )
    p.add_argument(
        "--attribute-embed", action="store_true", help="include a W_tau attribute projection"
    )
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("generate", parents=[common], help="generate an image from a preset")
    p.add_argument("preset", metavar="PRESET.json")
    p.add_argument(
        "--out",
        "-o",
        default="sigma.png",
        metavar="OUT.png",
        help="where to write (default sigma.png)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace OUT.png if it exists (default: refuse)"
    )
    p.add_argument(
        "--checkpoint", metavar="DIR_OR_REPO", help="BAGEL folder or hub id (default: preview)"
    )
    p.add_argument(
        "--sigma-weights",
        metavar="DIR_OR_REPO",
        help="SIGMA's ema.safetensors (needs --checkpoint)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 or mps (default: cuda if present, else cpu)",
    )
    p.add_argument(
        "--precision",
        "--dtype",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="weights and compute: auto is bf16 on a GPU, fp32 on cpu; " + FLAG_HELP["precision"],
    )
    p.add_argument(
        "--vae-dtype",
        choices=VAE_DTYPES,
        default="fp32",
        help=FLAG_HELP["vae-dtype"],
    )
    p.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="none",
        help=FLAG_HELP["offload"],
    )
    p.add_argument(
        "--device-map",
        choices=("auto",),
        default=None,
        help=FLAG_HELP["device-map"],
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the denoising pass (first run slower; faster on a GPU after)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"timesteps, {MIN_TIMESTEPS} to {MAX_TIMESTEPS} (default: the preset's)",
    )
    p.add_argument("--seed", type=int, default=None, help="0 <= S < 2^63 (default: the preset's)")
    p.add_argument("--size", default=None, metavar="WxH", help="output size, e.g. 1024x768")
    _layout_option(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "train",
        parents=[common],
        help="post-train SIGMA (one process, or many through `accelerate launch`)",
        description="Train from a YAML config; prints the effective config and writes it to "
        "OUTPUT_DIR/config.yaml. Several GPUs or machines: `accelerate launch -m sigma_core "
        "train ...` with an accelerate config (DDP or FSDP).",
    )
    p.add_argument("--config", required=True, metavar="CONFIG.yaml", help="the run's settings")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting (repeatable), e.g. --set steps=200 --set train=lora",
    )
    p.add_argument(
        "--resume", metavar="latest|DIR", help="continue from the newest or a given checkpoint"
    )
    p.add_argument("--max-steps", type=int, help="stop after this many steps of this session")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="write SIGMA weights and a model card from a training checkpoint",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--raw", action="store_true", help="export the raw weights, not the EMA")
    p.add_argument("--base", metavar="DIR", help="the base checkpoint (default: the run's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("attributes", parents=[common], help="list SIGMA's attribute tokens")
    p.set_defaults(func=cmd_attributes)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code instead of exiting, so tests call it in-process."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return e.code if isinstance(e.code, int) else EXIT_INPUT
    debug = getattr(args, "debug", False) or os.environ.get("SIGMA_DEBUG") == "1"
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except SigmaError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # `... | head` closed the pipe: stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print(
            "This is a bug in SIGMA Studio, not in your input. Please report it with the output "
            "of the same command run with --debug.",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
