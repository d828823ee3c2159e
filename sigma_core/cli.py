"""Command line: check presets, show what the model will read, and generate.

``python -m sigma_core validate|inspect|generate|make-tokenizer|make-tiny|attributes``.
Exit codes: 0 success, 2 bad input (any :class:`SigmaInputError`, and usage errors), 1 a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from sigma_core import attributes as attributes_module
from sigma_core import tokenizer as tokenizer_module
from sigma_core.attributes import ALIASES, ATTRIBUTES, DESCRIPTIONS, find_attribute_tokens
from sigma_core.cache import cached_folder
from sigma_core.composition import Composition, load_preset, read_png_composition
from sigma_core.errors import SigmaInputError
from sigma_core.sequence import Expert, Plan, TokenIds, TokenType, build_plan
from sigma_core.tokenizer import (
    QWEN2_SPECIAL_TOKENS,
    QWEN25_BASE_VOCAB,
    load_tokenizer,
    make_tiny_tokenizer,
)

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2
TINY_NOTE = (
    "token ids are from the tiny offline tokenizer: text token counts differ from Qwen2.5's "
    "(pass --tokenizer DIR with BAGEL's tokenizer files for exact numbers)"
)
QWEN25_SIGMA_FIRST_ID = QWEN25_BASE_VOCAB + len(QWEN2_SPECIAL_TOKENS)  # 151665


# ----------------------------------------------------------------------------- tokenizers


def load_tiny_tokenizer() -> Any:
    """The tiny tokenizer, written once into the user cache."""
    folder = cached_folder(
        "tiny-tokenizer", make_tiny_tokenizer, depends_on=(tokenizer_module, attributes_module)
    )
    return load_tokenizer(folder)


def _tokenizer(path: str | None) -> tuple[Any, str | None]:
    """The tokenizer to plan with, and the caveat to print with its numbers."""
    if path is not None:
        return load_tokenizer(path), None
    return load_tiny_tokenizer(), TINY_NOTE


# ----------------------------------------------------------------------------- loading


def load_composition(path: str) -> Composition:
    """A preset file, or a PNG saved by SIGMA Studio (which carries its composition)."""
    if path.lower().endswith(".png"):
        return read_png_composition(path)
    return load_preset(path)


def check_preset(path: str, tokenizer: Any) -> Plan:
    """Everything a generation would check before touching the GPU: the preset, every image
    (unused ones too) and the plan."""
    return build_plan(load_composition(path), tokenizer)


# ----------------------------------------------------------------------------- the report


def plan_report(plan: Plan, comp: Composition) -> dict[str, Any]:
    """Everything ``inspect`` shows, as plain data; the text view is rendered from it so the
    two never disagree."""
    ttype, group = plan.token_type, plan.group
    special = ttype == TokenType.SPECIAL
    segments = []
    for i, s in enumerate(plan.segments):
        is_text = s.kind == "text"
        if is_text:
            bound = group[s.start : s.end][special[s.start : s.end]].unique().tolist()
            seg_group = bound[0] if bound else None
            attrs = [m.group(0) for m in find_attribute_tokens(s.text)]
        else:
            seg_group = s.group if s.group >= 0 else None
            attrs = list(s.attributes)
        segments.append(
            {
                "index": i,
                "kind": s.kind,
                "start": s.start,
                "end": s.end,
                "count": s.length,
                "positions": [s.position, s.position + (s.length - 1 if is_text else 0)],
                "slot": s.slot,
                "group": seg_group,
                "attributes": attrs,
                "size": list(s.size) if s.size else None,
                "grid": list(s.grid) if s.grid else None,
                "text": s.text if is_text else None,
                "token_ids": plan.token_ids[s.start : s.end].tolist() if is_text else None,
            }
        )
    groups = [
        {
            "group": s.group,
            "slot": s.slot,
            "attributes": list(s.attributes),
            "attribute_tokens": (special & (group == s.group)).nonzero().flatten().tolist(),
            "image_tokens": {"start": s.start + 1, "end": s.end - 1},  # inside the markers
        }
        for s in plan.segments
        if s.kind == "image"
    ]
    if comp.settings.size is not None:
        size_from = "settings.size"
    elif groups:
        size_from = "the last reference in the prompt"
    else:
        size_from = "the default (no reference in the prompt)"
    return {
        "name": comp.name,
        "raw_prompt": plan.raw_prompt,
        "length": plan.length,
        "segments": segments,
        "groups": groups,
        "token_counts": {t.name.lower(): int((ttype == t).sum()) for t in TokenType},
        "experts": {e.name.lower(): int((plan.expert == e).sum()) for e in Expert},
        "output_size": list(plan.output_size),
        "output_size_from": size_from,
        "mask": plan.mask,
        "warnings": list(plan.warnings),
    }


def render_report(report: dict[str, Any]) -> str:
    """The human-readable view of :func:`plan_report`."""
    out = [f"preset: {report['source']}" + (f"  ({report['name']})" if report["name"] else "")]
    out.append(f"tokenizer: {report['tokenizer']}")
    if report["tokenizer_note"]:
        out.append(f"note: {report['tokenizer_note']}")
    out += ["", "raw SIGMA prompt:", f"  {report['raw_prompt']}", ""]

    rows = []
    for s in report["segments"]:
        first, last = s["positions"]
        if s["kind"] == "text":
            content = json.dumps(s["text"], ensure_ascii=False)
        else:
            (w, h), (grid_h, grid_w) = s["size"], s["grid"]
            content = f"{w}x{h} px -> {grid_h}x{grid_w} latents"
            if s["kind"] == "noise":
                content += " (generated)"
        rows.append(
            [
                str(s["index"]),
                s["kind"],
                f"{s['start']}-{s['end'] - 1}",
                str(s["count"]),
                str(first) if first == last else f"{first}-{last}",
                _dash(s["slot"]),
                _dash(s["group"]),
                " ".join(s["attributes"]) or "-",
                content,
            ]
        )
    out.append(f"segments ({report['length']} tokens; ranges are inclusive):")
    headers = ["#", "kind", "tokens", "count", "rope", "slot", "group", "attributes", "content"]
    out += _table(headers, rows, right={0, 3})
    out.append("")

    out.append("groups (with the mask on, an attribute token sees no other group's image):")
    for g in report["groups"]:
        attrs = " ".join(g["attributes"]) or "(no attribute)"
        at = ", ".join(str(i) for i in g["attribute_tokens"]) or "none"
        img = g["image_tokens"]
        out.append(
            f"  group {g['group']}: slot {g['slot']} {attrs}; attribute tokens at {at}; "
            f"image tokens {img['start']}-{img['end'] - 1}"
        )
    if not report["groups"]:
        out.append("  none")
    out.append("")

    counts = report["token_counts"]
    out.append(
        "token types: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f" (total {report['length']})"
    )
    experts = report["experts"]
    out.append(
        f"experts: understanding {experts['und']}, generation {experts['gen']} tokens "
        "(text and markers / VAE latents)"
    )
    w, h = report["output_size"]
    out.append(f"output: {w}x{h} (from {report['output_size_from']})")
    out.append(
        "mask: "
        + ("on (SIGMA's intra-group mask)" if report["mask"] else "off (plain causal, as BAGEL)")
    )
    out.append("warnings:" + ("" if report["warnings"] else " none"))
    out += [f"  - {line}" for line in report["warnings"]]
    return "\n".join(out)


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


def _table(headers: list[str], rows: list[list[str]], *, right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return ("  " + "  ".join(parts)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


# ----------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every preset and report each; one bad file makes the exit code 2."""
    tokenizer, _ = _tokenizer(args.tokenizer)
    bad = 0
    for path in args.presets:
        try:
            plan = check_preset(path, tokenizer)
        except SigmaInputError as e:
            bad += 1
            print(f"{path}: FAILED", file=sys.stderr)
            for line in _without_prefix(str(e), path).splitlines():
                print(f"  {line}", file=sys.stderr)
            continue
        refs = f"{plan.num_groups} reference{'' if plan.num_groups == 1 else 's'}"
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
    comp = load_composition(args.preset)  # bad input fails before the tokenizer loads
    tokenizer, note = _tokenizer(args.tokenizer)
    plan = build_plan(comp, tokenizer)
    report = {
        "source": args.preset,
        "tokenizer": args.tokenizer or "tiny offline tokenizer",
        "tokenizer_note": note,
        **plan_report(plan, comp),
    }
    if args.mask_png:
        from sigma_core.mask import mask_png

        try:
            report["mask_png"] = str(mask_png(plan, args.mask_png))
        except OSError as e:
            raise SigmaInputError(
                f"--mask-png: cannot write {args.mask_png} ({e.strerror or e})"
            ) from None
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(render_report(report))
        if args.mask_png:
            print(f"mask picture: {report['mask_png']}")
    return EXIT_OK


def cmd_make_tokenizer(args: argparse.Namespace) -> int:
    """Write the tiny tokenizer and show the ids the plan will use."""
    try:
        out = make_tiny_tokenizer(
            args.out_dir, pad_base_vocab_to=QWEN25_BASE_VOCAB if args.qwen_ids else None
        )
    except OSError as e:
        raise SigmaInputError(f"OUT_DIR: cannot write {args.out_dir} ({e.strerror or e})") from None
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


def cmd_make_tiny(args: argparse.Namespace) -> int:
    """Write a tiny random checkpoint in the official BAGEL layout."""
    from sigma_core.tiny import make_tiny_checkpoint

    try:
        out = make_tiny_checkpoint(
            args.out_dir, seed=args.seed, layers=args.layers, attribute_embed=args.attribute_embed
        )
    except OSError as e:
        raise SigmaInputError(f"OUT_DIR: cannot write {args.out_dir} ({e.strerror or e})") from None
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote a tiny random BAGEL checkpoint (seed {args.seed}) to {out}: {files}")
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate an image from a preset, with progress, and save it with its composition."""
    import torch

    from sigma_core.pipeline import SigmaPipeline

    comp = load_composition(args.preset)
    if args.seed is not None:
        comp.settings.seed = args.seed
    if args.size is not None:
        comp.settings.size = _parse_size(args.size)
    if args.checkpoint:
        dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        pipe = SigmaPipeline.from_pretrained(
            args.checkpoint, sigma_weights=args.sigma_weights, device=args.device,
            dtype=dtype[args.dtype],
        )  # fmt: skip
    else:
        print("no --checkpoint: using the preview engine (random weights)", file=sys.stderr)
        pipe = SigmaPipeline.preview_engine(device=args.device)

    total = (args.steps or comp.settings.num_timesteps) - 1

    def progress(p: SigmaPipeline, step: int, t: Any, kwargs: dict[str, Any]) -> None:
        print(f"\rstep {step + 1}/{total}", end="", file=sys.stderr, flush=True)

    out = pipe(comp, num_inference_steps=args.steps, callback_on_step_end=progress)
    print(file=sys.stderr)
    path = out.save(args.out)
    note = f" [{out.notice}]" if out.notice else ""
    print(f"wrote {path} (seed {out.seed}, {out.timings['total_s']:.1f} s){note}")
    return EXIT_OK


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SigmaInputError(f"--size: {text!r} is not WIDTHxHEIGHT, e.g. 1024x768") from None
    return (w, h)


def cmd_attributes(args: argparse.Namespace) -> int:
    """List SIGMA's tokens, their ids in a SIGMA checkpoint and the names accepted for them."""
    aliases: dict[str, list[str]] = {}
    for alias, token in ALIASES.items():
        aliases.setdefault(token, []).append(alias)
    rows = [
        [
            token,
            str(QWEN25_SIGMA_FIRST_ID + i),
            DESCRIPTIONS[token],
            ", ".join(aliases.get(token, [])),
        ]
        for i, token in enumerate(ATTRIBUTES)
    ]
    print(f"SIGMA's {len(ATTRIBUTES)} attribute tokens, in tokenizer order:")
    print(
        "\n".join(
            _table(["token", "Qwen2.5 id", "contributes", "also accepted"], rows, right=set())
        )
    )
    print(
        "\nPlace a token right before its image: '<style> the painting <image_2>', "
        "or write [2] in a template prompt."
    )
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    p.add_argument(
        "--attribute-embed", action="store_true", help="include a W_tau attribute projection"
    )
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("generate", parents=[common], help="generate an image from a preset")
    p.add_argument("preset", metavar="PRESET.json")
    p.add_argument("--out", "-o", default="sigma.png", metavar="OUT.png")
    p.add_argument(
        "--checkpoint", metavar="DIR_OR_REPO", help="BAGEL folder or hub id (default: preview)"
    )
    p.add_argument("--sigma-weights", metavar="DIR_OR_REPO", help="SIGMA ema.safetensors")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    p.add_argument("--steps", type=int, default=None, help="timesteps (default: the preset's)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--size", default=None, metavar="WxH", help="output size, e.g. 1024x768")
    p.set_defaults(func=cmd_generate)

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
        return args.func(args)
    except SigmaInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
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
