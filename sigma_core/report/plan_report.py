"""The plan as a report: plain data for ``inspect --json`` and the studio, and its text view
(rendered from the data, so the two never disagree); and the attribute table."""

from __future__ import annotations

import json
from typing import Any

from sigma_core.inputs.attributes import ALIASES, ATTRIBUTES, DESCRIPTIONS, find_attribute_tokens
from sigma_core.inputs.composition import Composition
from sigma_core.planning.sequence import Expert, Plan, TokenType
from sigma_core.planning.tokenizer import QWEN25_SIGMA_FIRST_ID


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
    out += format_table(headers, rows, right={0, 3})
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
