"""The flags of ``python app.py``, checked before anything heavy loads: a bad flag exits 2 with
a message in a second, not after the weights have loaded."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sigma_core import frontend

PREVIEW = "preview"  # --model preview: the preview engine even when real weights are cached
ENGINE_SWITCH = ("auto", "on", "off")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
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
    vae_dtype: str = "fp32"
    device_map: str | None = None  # "auto": the decoder layers spread over every GPU
    engine_switch: str = "auto"  # may the page change precision and offload? see switch_allowed
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
        choices=frontend.PRECISIONS,
        help="weights and compute (default: bf16 on a GPU, fp32 on CPU); "
        + frontend.FLAG_HELP["precision"]
        + ". A mode this machine cannot run is refused at start with the reason",
    )
    p.add_argument(
        "--vae-dtype",
        choices=frontend.VAE_DTYPES,
        default="fp32",
        help=frontend.FLAG_HELP["vae-dtype"],
    )
    p.add_argument(
        "--offload",
        choices=frontend.OFFLOAD_MODES,
        default="none",
        help=frontend.FLAG_HELP["offload"],
    )
    p.add_argument(
        "--device-map",
        choices=("auto",),
        help=frontend.FLAG_HELP["device-map"] + " (default: one device)",
    )
    p.add_argument(
        "--engine-switch",
        choices=ENGINE_SWITCH,
        default="auto",
        help="may the page's Settings change the precision and offload, for everyone using "
        "the studio? auto: yes when it is served to this machine only (not with --share, "
        "another --host or on a Space); on; off",
    )
    p.add_argument(
        "--max-references",
        type=int,
        default=DEFAULT_MAX_REFERENCES,
        metavar="N",
        help=f"reference slots offered, 1 to {frontend.MAX_REFERENCES} "
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
        vae_dtype=args.vae_dtype,
        device_map=args.device_map,
        engine_switch=args.engine_switch,
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
    """The first flag that is wrong whatever the machine, as a message; None when all are fine.
    What this machine cannot run (fp8 without a recent GPU, offload with int8...) is the
    engine's to refuse, when it loads."""
    if not 1 <= args.max_references <= frontend.MAX_REFERENCES:
        return (
            f"--max-references: {args.max_references} must be from 1 to {frontend.MAX_REFERENCES}"
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


def engine_lock(options: StudioOptions, environ: Mapping[str, str]) -> str | None:
    """Why the page may not change the precision or offload, or None when it may. One engine
    serves every visitor, so by default only a studio served to this machine alone lets its
    page switch it: a shared one (--share, another --host, a Space) would let one visitor
    change everyone's engine."""
    if options.engine_switch == "on":
        return None
    if options.engine_switch == "off":
        return "this studio was started with --engine-switch off"
    if environ.get("SPACE_ID"):
        return "this studio is a Hugging Face Space, shared by its visitors"
    if options.share:
        return "this studio is shared through a public link (--share)"
    if options.host not in LOOPBACK_HOSTS:
        return f"this studio is served on {options.host}, to other machines"
    return None


def default_model() -> str | None:
    """BAGEL's hub id when its weights are already in the local Hugging Face cache (nothing is
    downloaded to find out), else None: the preview engine."""
    from huggingface_hub import try_to_load_from_cache

    wanted = ("llm_config.json", "ema.safetensors", "ae.safetensors")
    found = [try_to_load_from_cache(frontend.BAGEL_REPO, name) for name in wanted]
    return frontend.BAGEL_REPO if all(isinstance(f, str) for f in found) else None
