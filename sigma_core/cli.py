"""Command line: argument parsing and dispatch only (what each command does:
:mod:`sigma_core.commands`).

``python -m sigma_core validate|inspect|generate|make-tokenizer|make-tiny|train|export|evaluate|
attributes``.
Exit codes: 0 success, 2 bad input or weights, out of memory, a cancelled run (any
:class:`SigmaError`, and usage errors), 1 a bug, 130 interrupted. The options that set sampling
settings (``--steps``, ``--seed``, ``--size``, ``--layout``) are made from the settings' spec
table, so their help and bounds are the settings' own.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from sigma_core import commands
from sigma_core.commands import EXIT_INPUT, EXIT_INTERNAL, EXIT_OK
from sigma_core.errors import SigmaError
from sigma_core.inputs.settings import SPECS
from sigma_core.limits import MAX_TINY_LAYERS
from sigma_core.model.modes import FLAG_HELP, OFFLOAD_MODES, PRECISIONS, VAE_DTYPES


def _setting_option(p: argparse.ArgumentParser, name: str) -> None:
    """The option that sets setting ``name``, from its spec; its value is checked with the
    preset's (default: the preset's value)."""
    spec = SPECS[name]
    bounds = f", {spec.bounds_text()}" if spec.kind in ("int", "number") else ""
    p.add_argument(
        f"--{spec.flag}",
        choices=spec.choices or None,
        metavar="WxH" if spec.kind == "size" else None,
        help=f"{spec.help}{bounds} (default: the preset's)",
    )


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    *parents: argparse.ArgumentParser,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Subcommand ``name`` (``summary`` in the command list, ``description`` atop its help),
    run by :mod:`sigma_core.commands`' ``cmd_<name>``."""
    p = sub.add_parser(name, parents=list(parents), help=summary, description=description)
    p.set_defaults(func=getattr(commands, f"cmd_{name.replace('-', '_')}"))
    return p


def _generate_options(p: argparse.ArgumentParser) -> None:
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
    _engine_options(p)
    for name in ("num_timesteps", "seed", "size", "layout"):
        _setting_option(p, name)


def _engine_options(p: argparse.ArgumentParser) -> None:
    """The weights and how they run: shared by generate and evaluate generate."""
    p.add_argument(
        "--checkpoint", metavar="DIR_OR_REPO", help="BAGEL folder or hub id (default: preview)"
    )
    p.add_argument(
        "--sigma-weights",
        metavar="DIR_OR_REPO",
        help="SIGMA's ema.safetensors (needs --checkpoint)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: cuda if present, else cpu)")
    p.add_argument(
        "--precision",
        "--dtype",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="weights and compute: auto is bf16 on a GPU, fp32 on cpu; " + FLAG_HELP["precision"],
    )
    p.add_argument("--vae-dtype", choices=VAE_DTYPES, default="fp32", help=FLAG_HELP["vae-dtype"])
    p.add_argument("--offload", choices=OFFLOAD_MODES, default="none", help=FLAG_HELP["offload"])
    p.add_argument("--device-map", choices=("auto",), help=FLAG_HELP["device-map"])
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the denoising pass (first run slower; faster on a GPU after)",
    )


def _evaluate_options(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """``evaluate generate|score|report``: the paper's metrics over a benchmark (see
    docs/evaluation.md); each subcommand runs ``main`` of its sigma_core.evaluation module."""
    sub = p.add_subparsers(dest="evaluate", required=True, metavar="STEP")
    g = sub.add_parser("generate", parents=[common], help="make a benchmark's images into RUN")
    g.add_argument("benchmark", metavar="BENCH", help="a benchmark folder or its JSONL manifest")
    g.add_argument("--out", required=True, metavar="RUN", help="the run folder (resumed if there)")
    g.add_argument("--seeds", type=int, default=1, help="images per item and arm (default 1)")
    g.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=A,B",
        help="an ablation over the same items, seeds and noise (repeatable): mask=on,off, "
        "attribute_projection=on,off, layout=inference,training, precision=bf16,int8,nf4, "
        "tokens=on,off (off: the prompt with its attribute tokens stripped)",
    )
    g.add_argument("--limit", type=int, help="only the first N items")
    _engine_options(g)
    for name in ("num_timesteps", "size"):
        _setting_option(g, name)
    s = sub.add_parser("score", parents=[common], help="score RUN's images (scores.jsonl)")
    s.add_argument("run", metavar="RUN")
    s.add_argument(
        "--metrics",
        default="all",
        help="comma-separated: clip_t, clip_i, dino, dreamsim, clip_es, aes (default all)",
    )
    s.add_argument(
        "--clip-model", metavar="ID_OR_DIR", help="default openai/clip-vit-large-patch14"
    )
    s.add_argument("--dino-model", metavar="ID_OR_DIR", help="default facebook/dino-vits16")
    s.add_argument("--dreamsim-model", metavar="ID_OR_DIR", help="DreamSim's checkpoint")
    s.add_argument("--aes-model", metavar="ID_OR_DIR", help="the aesthetic head's weights")
    s.add_argument("--batch-size", type=int, default=16, help="images per forward (default 16)")
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if present, else cpu)")
    r = sub.add_parser("report", parents=[common], help="report.md, results.json, plots")
    r.add_argument("runs", nargs="+", metavar="RUN", help="one run, or several to compare")
    r.add_argument("--out", metavar="DIR", help="where to write (default: RUN/report)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing report")


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
        description="SIGMA Studio: check presets, inspect the interleaved sequence, generate, "
        "post-train.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "validate", "check presets, their images and prompts", common, tok)
    p.add_argument("presets", nargs="+", metavar="PRESET.json")

    p = _add(sub, "inspect", "show the token sequence a preset becomes", common, tok)
    p.add_argument("preset", metavar="PRESET.json", help="a preset, or a PNG saved by the studio")
    p.add_argument("--mask-png", metavar="OUT.png", help="also draw the attention mask")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --mask-png's file if it exists"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _setting_option(p, "layout")

    p = _add(sub, "make-tokenizer", "write the tiny offline tokenizer", common)
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument(
        "--qwen-ids",
        action="store_true",
        help="pad the vocabulary so marker and SIGMA token ids equal Qwen2.5's",
    )

    p = _add(sub, "make-tiny", "write a tiny random checkpoint (official layout)", common)
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--seed", type=int, default=0, help="random seed, 0 <= S < 2^63 (default 0)")
    p.add_argument(
        "--layers", type=int, default=2, help=f"decoder layers, 1 to {MAX_TINY_LAYERS} (default 2)"
    )
    p.add_argument(
        "--attribute-embed", action="store_true", help="include a W_tau attribute projection"
    )

    _generate_options(_add(sub, "generate", "generate an image from a preset", common))

    p = _add(
        sub,
        "train",
        "post-train SIGMA (one process, or many through `accelerate launch`)",
        common,
        description="Train from a YAML config; prints the effective config and writes "
        "it to OUTPUT_DIR/config.yaml. Several GPUs or machines: `accelerate launch -m "
        "sigma_core train ...` with an accelerate config (DDP or FSDP).",
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

    p = _add(
        sub, "export", "write SIGMA weights and a model card from a training checkpoint", common
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--raw", action="store_true", help="export the raw weights, not the EMA")
    p.add_argument("--base", metavar="DIR", help="the base checkpoint (default: the run's)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUT_DIR (a previous export; never a base checkpoint)",
    )

    p = _add(sub, "evaluate", "generate, score and report a benchmark (the paper's metrics)")
    _evaluate_options(p, common)

    _add(sub, "attributes", "list SIGMA's attribute tokens", common)
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
