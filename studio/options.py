"""The flags of ``python app.py``, checked before anything heavy loads: a bad flag exits 2 with
a message in a second, not after the weights have loaded."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sigma_core

PREVIEW = "preview"  # --model preview: the preview engine even when real weights are cached
PRECISIONS = ("fp32", "bf16", "fp16")  # what the engine runs today
LATER_PRECISIONS = ("int8", "nf4")  # accepted names, refused until quantisation lands
OFFLOAD_MODES = ("none", "model", "sequential")  # only "none" runs today
DEFAULT_MAX_REFERENCES = 8
DEFAULT_TIME_LIMIT_S = 900
DEFAULT_QUEUE_SIZE = 16
PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


@dataclass(frozen=True)
class StudioOptions:
    """What the studio was started with. ``model`` None means the preview engine."""

    model: str | None = None
    sigma_weights: str | None = None
    precision: str | None = None  # None: bf16 on a GPU, fp32 on CPU (the engine's default)
    offload: str = "none"
    max_references: int = DEFAULT_MAX_REFERENCES
    device: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    share: bool = False
    inbrowser: bool = False
    outputs: Path | None = None  # results and restored images; None: a new temporary folder
    presets: Path = PRESETS_DIR
    time_limit_s: int = DEFAULT_TIME_LIMIT_S
    queue_size: int = DEFAULT_QUEUE_SIZE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python app.py",
        description="SIGMA Studio: compose one image from several attribute-tagged references.",
    )
    p.add_argument(
        "--model",
        metavar="DIR_OR_REPO",
        help=f"a BAGEL folder or hub id, or '{PREVIEW}' (default: BAGEL-7B-MoT when it is in the "
        "local Hugging Face cache, else the preview engine with random weights)",
    )
    p.add_argument(
        "--sigma-weights",
        metavar="DIR_OR_REPO",
        help="SIGMA's ema.safetensors over the base weights; needs real --model weights",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS + LATER_PRECISIONS,
        help="weights dtype (default: bf16 on a GPU, fp32 on CPU); int8 and nf4 come later",
    )
    p.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="none",
        help="CPU offload of the weights (only 'none' for now)",
    )
    p.add_argument(
        "--max-references",
        type=int,
        default=DEFAULT_MAX_REFERENCES,
        metavar="N",
        help=f"reference slots offered, 1 to {sigma_core.MAX_REFERENCES} "
        f"(default {DEFAULT_MAX_REFERENCES})",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when there is one)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: gradio's, 7860 or the next free)")
    p.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    p.add_argument("--inbrowser", action="store_true", help="open the studio in a browser tab")
    p.add_argument(
        "--outputs", type=Path, metavar="DIR", help="where results are saved (default: temporary)"
    )
    p.add_argument(
        "--presets",
        type=Path,
        default=PRESETS_DIR,
        metavar="DIR",
        help="folder of preset JSON files for the dropdown and the examples",
    )
    p.add_argument(
        "--time-limit",
        type=int,
        default=DEFAULT_TIME_LIMIT_S,
        metavar="SECONDS",
        help=f"stop a run after this long (default {DEFAULT_TIME_LIMIT_S})",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        metavar="N",
        help=f"requests that may wait for the engine (default {DEFAULT_QUEUE_SIZE})",
    )
    return p


def parse_options(argv: Sequence[str] | None = None) -> StudioOptions:
    """Parse and check the flags; anything wrong exits 2 with a message (argparse's way)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _problem(args)
    if problem:
        parser.error(problem)
    model = args.model
    if model is None:
        model = default_model()
    elif model == PREVIEW:
        model = None
    if args.sigma_weights and model is None:
        parser.error(
            "--sigma-weights needs real base weights (--model DIR_OR_REPO: the BAGEL folder that "
            "supplies the configs, the VAE and the tokenizer); the preview engine has none"
        )
    return StudioOptions(
        model=model,
        sigma_weights=args.sigma_weights,
        precision=args.precision,
        offload=args.offload,
        max_references=args.max_references,
        device=args.device,
        host=args.host,
        port=args.port,
        share=args.share,
        inbrowser=args.inbrowser,
        outputs=args.outputs,
        presets=args.presets,
        time_limit_s=args.time_limit,
        queue_size=args.queue_size,
    )


def _problem(args: argparse.Namespace) -> str | None:
    """The first flag the engine cannot honour, as a message; None when all are fine."""
    if args.precision in LATER_PRECISIONS:
        return (
            f"--precision {args.precision}: quantised weights (int8, nf4) are not supported yet; "
            f"use {', '.join(PRECISIONS)}"
        )
    if args.offload != "none":
        return (
            f"--offload {args.offload}: offloading is not supported yet; use --offload none, or "
            "--precision bf16 to halve the memory the weights take"
        )
    if not 1 <= args.max_references <= sigma_core.MAX_REFERENCES:
        return (
            f"--max-references: {args.max_references} must be from 1 to {sigma_core.MAX_REFERENCES}"
        )
    if args.port is not None and not 1 <= args.port <= 65535:
        return f"--port: {args.port} must be from 1 to 65535"
    if args.time_limit < 1:
        return f"--time-limit: {args.time_limit} must be at least 1 second"
    if args.queue_size < 1:
        return f"--queue-size: {args.queue_size} must be at least 1"
    if args.outputs is not None and args.outputs.exists() and not args.outputs.is_dir():
        return f"--outputs: {args.outputs} exists and is not a folder"
    if not args.presets.is_dir():
        return f"--presets: {args.presets} is not a folder"
    return None


def default_model() -> str | None:
    """BAGEL's hub id when its weights are already in the local Hugging Face cache (nothing is
    downloaded to find out), else None: the preview engine."""
    from huggingface_hub import try_to_load_from_cache

    wanted = ("llm_config.json", "ema.safetensors", "ae.safetensors")
    found = [try_to_load_from_cache(sigma_core.BAGEL_REPO, name) for name in wanted]
    return sigma_core.BAGEL_REPO if all(isinstance(f, str) for f in found) else None
