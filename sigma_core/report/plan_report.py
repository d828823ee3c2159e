"""The plan as a report: plain data for ``inspect --json`` and the studio, and its text view
(rendered from the data, so the two never disagree); and the attribute table.

Every range, in both views, is half-open: ``[start, end)`` holds start and stops before end,
like a Python slice. Neither the report nor this module imports torch: the counts come from the
plan's segments.

The layout (:mod:`sigma_core.planning.layout`) is shown because it moves rope positions and, in
the training layout, adds a phantom ViT block per reference: a compact block of 3 tokens whose
one inside token stands for N zero tokens through a logit bias of ln N.
"""

from __future__ import annotations

import json
from typing import Any

from sigma_core.inputs.attributes import ALIASES, ATTRIBUTES, DESCRIPTIONS, find_attribute_tokens
from sigma_core.inputs.composition import Composition
from sigma_core.inputs.settings import AUTO_LAYOUT, LAYOUTS, describe_layout
from sigma_core.planning.layout import phantom_bias
from sigma_core.planning.sequence import Expert, Plan, Segment, TokenType
from sigma_core.planning.tokenizer import MARKER_TOKENS, QWEN25_SIGMA_FIRST_ID

TOKEN_TYPES_NOTE = "special: an attribute token such as <id>; plain: the markers " + " ".join(
    MARKER_TOKENS
)


def plan_report(plan: Plan, comp: Composition) -> dict[str, Any]:
    """Everything ``inspect`` shows, as plain data; the text view is rendered from it so the
    two never disagree. Token ranges (``start``/``end``, ``image_tokens``) and rope
    ``positions`` are half-open ``[start, end)``."""
    groups = _groups(plan)
    if comp.settings.size is not None:
        size_from = "settings.size"
    elif groups:
        size_from = "the last reference in the prompt"
    else:
        size_from = "the default (no reference in the prompt)"
    types, experts = _counts(plan.segments)
    return {
        "name": comp.name,
        "raw_prompt": plan.raw_prompt,
        "layout": plan.layout,
        "layout_auto": comp.settings.layout == AUTO_LAYOUT,
        "layout_description": describe_layout(plan.layout),
        "rope_per_reference": LAYOUTS[plan.layout].rope_per_reference,
        "rope_holes": _rope_holes(plan.segments),
        "phantom_blocks": _phantom_summary(plan),
        "length": plan.length,
        "ranges": "half-open [start, end)",
        "references": plan.num_references,
        "segments": [_segment(i, s) for i, s in enumerate(plan.segments)],
        "groups": groups,
        "token_counts": {t.name.lower(): types[t] for t in TokenType},
        "experts": {e.name.lower(): experts[e] for e in Expert},
        "output_size": list(plan.output_size),
        "output_size_from": size_from,
        "mask": plan.mask,
        "warnings": list(plan.warnings),
    }


def _segment(index: int, s: Segment) -> dict[str, Any]:
    """One segment of the report."""
    is_text = s.kind == "text"
    if is_text:
        group = s.group if s.attribute_offsets else None
        attrs = [m.group(0) for m in find_attribute_tokens(s.text)]
    else:
        group = s.group if s.group >= 0 else None
        attrs = list(s.attributes)
    return {
        "index": index,
        "kind": s.kind,
        "start": s.start,
        "end": s.end,
        "count": s.length,
        "positions": [s.position, s.last_position + 1],
        "slot": s.slot,
        "group": group,
        "attributes": attrs,
        "size": list(s.size) if s.size else None,
        "grid": list(s.grid) if s.grid else None,
        "text": s.text if is_text else None,
        "token_ids": list(s.token_ids) if is_text else None,
        "phantom_tokens": s.phantom_tokens if s.kind == "phantom" else None,
        "key_bias": _bias(s) if s.kind == "phantom" else None,
    }


def _bias(s: Segment) -> float:
    """The logit bias each inside token of phantom block ``s`` carries (0 when literal)."""
    return phantom_bias(s.phantom_tokens, s.length - 2)


def _rope_holes(segments: list[Segment]) -> list[int]:
    """Rope positions below the last one that no token holds: where training-no-vit drops each
    reference's ViT block."""
    held: set[int] = set()
    for s in segments:
        held.update(range(s.position, s.last_position + 1))
    return sorted(set(range(max(held, default=-1) + 1)) - held)


def _phantom_summary(plan: Plan) -> dict[str, Any] | None:
    """What the phantom blocks cost here against SIGMA's literal N + 2 tokens each, so users see
    what the compact block saves; None without phantom blocks."""
    blocks = [s for s in plan.segments if s.kind == "phantom"]
    if not blocks:
        return None
    tokens = sum(s.length for s in blocks)
    literal = sum(s.phantom_tokens + 2 for s in blocks)
    return {
        "blocks": len(blocks),
        "tokens": tokens,
        "literal_tokens": literal,
        "saved": literal - tokens,
        "literal_length": plan.length - tokens + literal,
    }


def _groups(plan: Plan) -> list[dict[str, Any]]:
    """Each placed reference: its attribute tokens, its latent tokens (inside the markers) and
    its phantom ViT tokens (the mask guards them as the group's image tokens too)."""
    texts = [s for s in plan.segments if s.kind == "text"]
    phantoms = {s.group: s for s in plan.segments if s.kind == "phantom"}
    out = []
    for s in plan.segments:
        if s.kind != "image":
            continue
        ph = phantoms.get(s.group)
        out.append(
            {
                "group": s.group,
                "slot": s.slot,
                "attributes": list(s.attributes),
                "attribute_tokens": [
                    t.start + k for t in texts if t.group == s.group for k in t.attribute_offsets
                ],
                "image_tokens": {"start": s.start + 1, "end": s.end - 1},
                "phantom_tokens": {"start": ph.start + 1, "end": ph.end - 1, "n": ph.phantom_tokens}
                if ph
                else None,
            }
        )
    return out


def _counts(segments: list[Segment]) -> tuple[dict[TokenType, int], dict[Expert, int]]:
    """Tokens per type and per expert, from the segments' layout alone."""
    types = dict.fromkeys(TokenType, 0)
    experts = dict.fromkeys(Expert, 0)
    for s in segments:
        markers = min(2, s.length)
        types[TokenType.PLAIN] += markers
        if s.kind == "text":
            specials = len(s.attribute_offsets)
            types[TokenType.SPECIAL] += specials
            types[TokenType.TEXT] += s.length - markers - specials
            experts[Expert.UND] += s.length
        elif s.kind == "phantom":  # zero-input image tokens of the group, understanding expert
            types[TokenType.IMAGE] += s.length - markers
            experts[Expert.UND] += s.length
        else:
            types[TokenType.IMAGE if s.kind == "image" else TokenType.NOISE] += s.length - markers
            experts[Expert.UND] += markers
            experts[Expert.GEN] += s.length - markers
    return types, experts


def escape_text(text: Any) -> str:
    """``text`` safe to print on a terminal: control characters, bidi overrides and isolates,
    zero-width and other invisible or non-printable characters become escapes such as
    ``\\u202e``, so user text cannot reorder, hide or restyle what is shown around it."""
    return "".join(ch if ch == " " or ch.isprintable() else _escape(ch) for ch in str(text))


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _span(start: int, end: int) -> str:
    return f"[{start}, {end})"


def render_report(report: dict[str, Any]) -> str:
    """The human-readable view of :func:`plan_report`; user text goes through
    :func:`escape_text`."""
    e = escape_text
    name = f"  ({e(report['name'])})" if report.get("name") else ""
    out = [f"preset: {e(report.get('source', '-'))}{name}"]
    out.append(f"tokenizer: {e(report.get('tokenizer', '-'))}")
    if report.get("tokenizer_note"):
        out.append(f"note: {e(report['tokenizer_note'])}")
    out += ["", "raw SIGMA prompt:", f"  {e(report['raw_prompt'])}", ""]
    out += _layout_lines(report)
    out.append(
        f"segments ({report['length']} tokens; ranges are half-open [start, end): start is in "
        "the range, end is not):"
    )
    headers = ["#", "kind", "tokens", "count", "rope", "slot", "group", "attributes", "content"]
    out += format_table(headers, _segment_rows(report), right={0, 3})
    out.append("")
    out += _group_lines(report)
    out.append("")
    out += _count_lines(report)
    w, h = report["output_size"]
    out.append(f"output: {w}x{h} (from {report['output_size_from']})")
    out.append(
        "mask: "
        + ("on (SIGMA's intra-group mask)" if report["mask"] else "off (plain causal, as BAGEL)")
    )
    out.append("warnings:" + ("" if report["warnings"] else " none"))
    out += [f"  - {e(line)}" for line in report["warnings"]]
    return "\n".join(out)


def _segment_rows(report: dict[str, Any]) -> list[list[str]]:
    """One table row per segment: its tokens, rope position(s), group and content."""
    e = escape_text
    rows = []
    for s in report["segments"]:
        first, end = s["positions"]
        if s["kind"] == "text":
            content = e(json.dumps(s["text"], ensure_ascii=False))
        elif s["kind"] == "phantom":
            content = _phantom_content(s)
        else:
            (w, h), (grid_h, grid_w) = s["size"], s["grid"]
            content = f"{w}x{h} px -> {grid_h}x{grid_w} latents"
            if s["kind"] == "noise":
                content += " (generated)"
        rows.append(
            [
                str(s["index"]),
                s["kind"],
                _span(s["start"], s["end"]),
                str(s["count"]),
                str(first) if end == first + 1 else _span(first, end),
                _dash(s["slot"]),
                _dash(s["group"]),
                e(" ".join(s["attributes"])) or "-",
                content,
            ]
        )
    return rows


def _group_lines(report: dict[str, Any]) -> list[str]:
    """Each group's slot, attribute tokens, image tokens and phantom tokens."""
    e = escape_text
    n_groups, n_refs = len(report["groups"]), report.get("references", len(report["groups"]))
    out = [
        f"groups ({n_groups} placement{'s' * (n_groups != 1)} of {n_refs} "
        f"reference{'s' * (n_refs != 1)}; with the mask on, an attribute token sees no other "
        "group's image):"
    ]
    for g in report["groups"]:
        attrs = e(" ".join(g["attributes"])) or "(no attribute)"
        at = ", ".join(str(i) for i in g["attribute_tokens"]) or "none"
        img, ph = g["image_tokens"], g["phantom_tokens"]
        phantom = (
            f"; phantom ViT tokens {_span(ph['start'], ph['end'])} (N = {ph['n']})" if ph else ""
        )
        out.append(
            f"  group {g['group']}: slot {g['slot']} {attrs}; attribute tokens at {at}; "
            f"image tokens {_span(img['start'], img['end'])}{phantom}"
        )
    if not report["groups"]:
        out.append("  none")
    return out


def _count_lines(report: dict[str, Any]) -> list[str]:
    """Tokens per type and per expert, phantom ViT tokens accounted for."""
    counts = report["token_counts"]
    out = [
        "token types: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f" (total {report['length']})",
        f"  ({TOKEN_TYPES_NOTE})",
    ]
    phantoms = report["phantom_blocks"]
    if phantoms:
        inside = phantoms["tokens"] - 2 * phantoms["blocks"]
        out.append(
            f"  (image includes the phantom ViT tokens: {inside}, zero inputs of their "
            "reference's group)"
        )
    experts = report["experts"]
    und = "text, markers and phantom ViT tokens" if phantoms else "text and markers"
    out.append(
        f"experts: understanding {experts['und']}, generation {experts['gen']} tokens "
        f"({und} / VAE latents)"
    )
    return out


def _phantom_content(s: dict[str, Any]) -> str:
    """A phantom row: the ViT block it stands for and how (one token and a bias, or literal)."""
    (w, h), (rows, cols), n = s["size"], s["grid"], s["phantom_tokens"]
    inside = s["count"] - 2
    block = f"phantom ViT block: {w}x{h} px -> {rows}x{cols} ViT patches, N = {n} zero tokens"
    if inside == n:
        return f"{block}, literal (no logit bias)"
    ratio = "N" if inside == 1 else f"(N/{inside})"
    return f"{block} as {inside} (logit bias ln {ratio} = {s['key_bias']:.2f})"


def _layout_lines(report: dict[str, Any]) -> list[str]:
    """The layout, what it means, and what it does to this plan: phantom blocks or rope holes."""
    auto = " (auto)" if report["layout_auto"] else ""
    out = [f"layout: {report['layout']}{auto} - {report['layout_description']}"]
    phantoms = report["phantom_blocks"]
    if phantoms:
        k, tokens = phantoms["blocks"], phantoms["tokens"]
        here = "3 tokens each here" if tokens == 3 * k else f"{tokens:,} tokens here"
        out.append(
            f"  phantom blocks: {k}, {here}, N+2 each literally ({phantoms['saved']:,} tokens "
            f"saved; the literal sequence is {phantoms['literal_length']:,} tokens)"
        )
    if report["rope_holes"]:
        out.append(
            f"  rope holes: {', '.join(map(str, report['rope_holes']))} (positions no token "
            f"holds; rope +{report['rope_per_reference']} per reference)"
        )
    return [*out, ""]


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


def format_table(headers: list[str], rows: list[list[str]], *, right: set[int]) -> list[str]:
    """Left-aligned columns (right-aligned where ``right``), two spaces apart."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return ("  " + "  ".join(parts)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def attributes_table() -> str:
    """SIGMA's tokens, their ids in a SIGMA checkpoint and the names accepted for them."""
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
    headers = ["token", "Qwen2.5 id", "contributes", "also accepted"]
    return "\n".join(
        [
            f"SIGMA's {len(ATTRIBUTES)} attribute tokens, in tokenizer order:",
            *format_table(headers, rows, right=set()),
            "",
            "Place a token right before its image: '<style> the painting <image_2>', "
            "or write [2] in a template prompt.",
        ]
    )
