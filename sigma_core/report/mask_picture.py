"""A picture of SIGMA's attention mask, so users see what the leakage guard blocks.

Rows are queries, columns keys; strips along both axes give each token's type and group, and
the cells the mask M blocks are red. Long plans are drawn on a non-uniform axis, one token per
pixel, so the L x L matrix is never built. Drawn with numpy from the plan's arrays: no torch.

In the training layout each reference is followed by a phantom ViT block whose one zero-input
token stands for N (:mod:`sigma_core.planning.layout`): the type strips draw it hatched in its
own colour, and widened on a downsampled axis, so the block that moves the rope is visible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sigma_core.errors import SigmaInputError
from sigma_core.inputs.outfile import write_atomic
from sigma_core.inputs.settings import DEFAULT_LAYOUT, describe_layout
from sigma_core.planning.sequence import ZERO_INPUT_ID, Plan, TokenType

RGB = tuple[int, int, int]
TYPE_COLORS: dict[TokenType, RGB] = {
    TokenType.TEXT: (66, 133, 244),
    TokenType.SPECIAL: (255, 193, 7),
    TokenType.IMAGE: (52, 168, 83),
    TokenType.PLAIN: (120, 120, 120),
    TokenType.NOISE: (156, 39, 176),
}
TYPE_NAMES: dict[TokenType, str] = {
    TokenType.TEXT: "text",
    TokenType.SPECIAL: "attribute token (special)",
    TokenType.IMAGE: "reference image latent",
    TokenType.PLAIN: "marker (plain: im/vision start, end)",
    TokenType.NOISE: "generated image latent (noise)",
}
# Paul Tol's "muted" palette plus brown; group ids cycle through it.
GROUP_COLORS: tuple[RGB, ...] = (
    (204, 102, 119),
    (51, 34, 136),
    (221, 204, 119),
    (17, 119, 51),
    (136, 204, 238),
    (136, 34, 85),
    (68, 170, 153),
    (153, 153, 51),
    (170, 68, 153),
    (120, 72, 24),
)
PHANTOM: RGB = (0, 206, 209)  # a phantom ViT token, hatched with ink in the type strips
NO_GROUP: RGB = (215, 215, 215)
ALLOWED: RGB = (40, 55, 75)
BLOCKED_CAUSAL: RGB = (244, 244, 244)
BLOCKED_MASK: RGB = (220, 30, 30)
LEAK: RGB = (255, 140, 0)  # allowed only because plan.mask is off
_BACKGROUND: RGB = (255, 255, 255)
_INK: RGB = (20, 20, 20)
_MIN_PX = 400
_MIN_SIDE = 64  # smallest matrix worth drawing
_LINE = 14  # line height of Pillow's default font
_MAX_CELL = 24  # pixels per token for short plans
_GRID_FROM = 6  # draw lines between cells from this cell size up
_MAX_GROUP_LINES = 10
_MAX_EMPHASIS = 5  # pixels per attribute or phantom token on a downsampled axis
_HATCH = 3  # every third diagonal of a phantom token's strip pixels is ink
_MAX_PHANTOM_NS = 4  # N values listed in the legend


@dataclass(frozen=True)
class _Run:
    """Tokens [start, start + length) that share pixels on a downsampled axis."""

    start: int
    length: int
    tier: int  # 0 attribute token, 1 text, 2 vision marker, 3 latents: later tiers shrink first
    least: int  # pixels it gets whenever the budget allows
    want: int  # pixels it gets when the budget is ample


def mask_png(
    plan: Plan, path: str | os.PathLike, *, max_px: int = 1024, overwrite: bool = True
) -> Path:
    """:func:`mask_image` saved as a PNG at ``path`` (its folders created) in one step, so a
    failed or interrupted save never leaves half a picture there (the studio draws one only
    when its file is missing). Without ``overwrite`` an existing file is kept and the picture
    goes to the next free name (:func:`~sigma_core.inputs.outfile.write_atomic`). Returns the
    path written; a folder or file that cannot be written is a SigmaInputError, a full disk a
    SigmaResourceError."""
    img = mask_image(plan, max_px=max_px)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        reason = getattr(e, "strerror", None) or e
        raise SigmaInputError(f"cannot write {str(path)!r}: {reason}") from None
    return write_atomic(path, lambda f: img.save(f, format="PNG"), overwrite=overwrite)


def mask_image(plan: Plan, *, max_px: int = 1024) -> Image.Image:
    """Draw B at most ``max_px`` pixels per side, so users see what the guard blocks.

    Rows are queries, columns keys; strips along both axes give each token's type and group.
    Long plans are drawn on a non-uniform axis that compresses image blocks first, so attribute
    tokens and text keep their own rows, and B is evaluated at one token per pixel: the L x L
    matrix is never built.
    """
    if max_px < _MIN_PX:
        raise ValueError(f"mask_png: max_px={max_px} is too small; use at least {_MIN_PX}")
    font = ImageFont.load_default()
    margin, strip = 8, max(5, max_px // 128)
    lead = 2 * strip + 4  # the two strips and their gaps, before the matrix
    legend = _legend(plan)
    legend_w, legend_h, placed = _layout(legend, font, max_px - 2 * margin)
    wide = max_px - 2 * margin
    titles = {z: _wrap(_title(plan, z), font, wide) for z in (False, True)}
    head = margin + _LINE * max(map(len, titles.values())) + 4
    side = min(max_px - 2 * margin - lead, max_px - head - lead - 2 * margin - legend_h)
    if side < _MIN_SIDE:
        raise ValueError(
            f"mask_png: max_px={max_px} leaves no room for the matrix beside the legend; "
            "use a larger max_px"
        )
    rep, scale = _axis(plan, side)
    cells = mask_cells(plan, rep)
    palette = np.array([BLOCKED_CAUSAL, ALLOWED, BLOCKED_MASK, LEAK], dtype=np.uint8)
    matrix = np.repeat(np.repeat(palette[cells], scale, axis=0), scale, axis=1)
    if scale >= _GRID_FROM:
        matrix[scale - 1 :: scale] = _BACKGROUND
        matrix[:, scale - 1 :: scale] = _BACKGROUND

    types = np.array([TYPE_COLORS[TokenType(t)] for t in range(len(TokenType))], dtype=np.uint8)
    type_strip = types[plan.arrays.token_type[rep].astype(np.int64)]
    phantom = plan.arrays.token_ids[rep] == ZERO_INPUT_ID
    type_strip[phantom] = PHANTOM
    grp = plan.arrays.group[rep]
    group_strip = np.array(GROUP_COLORS, dtype=np.uint8)[grp % len(GROUP_COLORS)]
    group_strip[grp < 0] = NO_GROUP
    strips = [type_strip, group_strip]

    n = matrix.shape[0]
    x0, y0 = margin + lead, head + lead
    title = titles[len(rep) < plan.length]
    title_w = max(int(font.getlength(t)) for t in title)
    width = max(x0 + n, legend_w, title_w) + 2 * margin
    canvas = np.full((y0 + n + 2 * margin + legend_h, width, 3), _BACKGROUND, dtype=np.uint8)
    canvas[y0 : y0 + n, x0 : x0 + n] = matrix
    for i, colors in enumerate(strips):  # type strip outermost, group strip next to the matrix
        colors = np.repeat(colors, scale, axis=0)
        canvas[head + i * (strip + 2) : head + i * (strip + 2) + strip, x0 : x0 + n] = colors
        canvas[y0 : y0 + n, margin + i * (strip + 2) : margin + i * (strip + 2) + strip] = colors[
            :, None
        ]
    ink = _hatch(np.repeat(phantom, scale), strip)  # on the type strips, outermost
    canvas[head : head + strip, x0 : x0 + n][ink] = _INK
    canvas[y0 : y0 + n, margin : margin + strip][ink.T] = _INK

    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(title):
        draw.text((margin, margin + i * _LINE), text, fill=_INK, font=font)
    left, top = margin, y0 + n + margin
    for x, y, color, text in placed:
        if color is None:
            draw.text((left + x, top + y), text, fill=_INK, font=font)
            continue
        draw.rectangle(
            (left + x, top + y + 2, left + x + 9, top + y + 11), fill=color, outline=_INK
        )
        if color == PHANTOM:
            for a, b in zip(*np.nonzero(_hatch(np.ones(8, dtype=bool), 8)), strict=True):
                draw.point((left + x + 1 + int(b), top + y + 3 + int(a)), fill=_INK)
        draw.text((left + x + 14, top + y), text, fill=_INK, font=font)
    return img


def mask_cells(plan: Plan, rep: np.ndarray) -> np.ndarray:
    """uint8 [n, n]: what B does at query rep[i], key rep[j]: 0 blocked by causality, 1 may
    attend, 2 blocked by SIGMA's M, 3 seen only because ``plan.mask`` is off.

    B = (C and M) or S, as :func:`sigma_core.planning.mask.dense_mask` computes it (tested equal),
    evaluated only at the drawn tokens.
    """
    tt, grp = plan.arrays.token_type, plan.arrays.group
    blocks = np.full(plan.length, -1, dtype=np.int32)
    for i, seg in enumerate(plan.segments):
        if seg.kind != "text":
            blocks[seg.start : seg.end] = i
    q, k = rep[:, None], rep[None, :]
    causal = k <= q
    same = (blocks[q] == blocks[k]) & (blocks[q] >= 0)
    m = ~((tt[q] == TokenType.SPECIAL) & (tt[k] == TokenType.IMAGE) & (grp[q] != grp[k]))
    allowed = (causal & m) | same if plan.mask else causal | same
    cells = np.zeros(allowed.shape, dtype=np.uint8)
    cells[allowed] = 1
    cells[causal & ~allowed] = 2
    if not plan.mask:
        cells[causal & ~m & ~same] = 3
    return cells


def _hatch(phantom: np.ndarray, strip: int) -> np.ndarray:
    """bool [strip, len(phantom)]: the ink diagonals over a strip's phantom pixels."""
    along, across = np.arange(len(phantom))[None, :], np.arange(strip)[:, None]
    return phantom[None, :] & ((along + across) % _HATCH == 0)


def _title(plan: Plan, downsampled: bool) -> list[str]:
    mask = "on" if plan.mask else "off (plain BAGEL)"
    widened = (
        "attribute and phantom tokens"
        if any(s.kind == "phantom" for s in plan.segments)
        else "attribute tokens"
    )
    lines = [
        f"SIGMA attention mask B = (C and M) or S: {plan.length} tokens, "
        f"{plan.num_groups} reference groups, mask {mask}",
        "rows: queries, columns: keys; outer strip: token type, inner strip: group",
        f"downsampled: image blocks compressed first, {widened} widened"
        if downsampled
        else "1 cell = 1 token",
    ]
    if plan.layout != DEFAULT_LAYOUT:  # the default's picture stays as it was before layouts
        lines.append(f"layout {plan.layout}: {describe_layout(plan.layout)}")
    return lines


def _wrap(
    lines: list[str], font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int
) -> list[str]:
    """Lines broken at spaces so each fits ``width`` pixels."""
    out: list[str] = []
    for text in lines:
        words = text.split(" ")
        current = words[0]
        for word in words[1:]:
            if font.getlength(f"{current} {word}") <= width:
                current = f"{current} {word}"
            else:
                out.append(current)
                current = word
        out.append(current)
    return out


def _legend(plan: Plan) -> list[list[tuple[RGB | None, str]]]:
    """Legend columns: a header line, then (colour, label) entries."""
    types: list[tuple[RGB | None, str]] = [(None, "Token type (outer strip)")]
    types += [(TYPE_COLORS[t], TYPE_NAMES[t]) for t in TokenType]
    ns = [str(s.phantom_tokens) for s in plan.segments if s.kind == "phantom"]
    if ns:
        shown = ", ".join(ns[:_MAX_PHANTOM_NS]) + (", ..." if len(ns) > _MAX_PHANTOM_NS else "")
        types.append((PHANTOM, f"phantom ViT block{'s' * (len(ns) > 1)} (N = {shown})"))
    groups: list[tuple[RGB | None, str]] = [(None, "Group (inner strip)")]
    images = [s for s in plan.segments if s.kind == "image"]
    for s in images[:_MAX_GROUP_LINES]:
        label = " ".join([f"group {s.group}:", *([f"[{s.slot}]"] if s.slot else []), *s.attributes])
        groups.append((GROUP_COLORS[s.group % len(GROUP_COLORS)], label.rstrip(":")))
    if len(images) > _MAX_GROUP_LINES:
        groups.append((None, f"... {len(images) - _MAX_GROUP_LINES} more, colours cycle"))
    groups.append((NO_GROUP, "no group"))
    cells: list[tuple[RGB | None, str]] = [
        (None, "Cell (query row, key column)"),
        (ALLOWED, "may attend"),
        (BLOCKED_CAUSAL, "blocked by causality"),
        (BLOCKED_MASK, "blocked by the SIGMA mask M")
        if plan.mask
        else (LEAK, "seen only because the mask is off"),
    ]
    return [types, groups, cells]


def _layout(
    columns: list[list[tuple[RGB | None, str]]],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int,
) -> tuple[int, int, list[tuple[int, int, RGB | None, str]]]:
    """Place legend columns left to right, wrapping to a new row when ``width`` is full.

    Returns the legend's width, height and (x, y, colour, text) items.
    """
    placed: list[tuple[int, int, RGB | None, str]] = []
    x = y = row_h = used_w = 0
    for col in columns:
        col_w = max(int(font.getlength(t)) + (14 if c else 0) for c, t in col) + 16
        if x and x + col_w > width:
            x, y, row_h = 0, y + row_h + 4, 0
        placed += [(x, y + i * _LINE, c, t) for i, (c, t) in enumerate(col)]
        x += col_w
        used_w, row_h = max(used_w, x), max(row_h, len(col) * _LINE)
    return used_w, y + row_h, placed


def _axis(plan: Plan, budget: int) -> tuple[np.ndarray, int]:
    """The token drawn at each pixel of an axis at most ``budget`` px long, and the cell size.

    Short plans get one cell of ``scale`` px per token. Longer ones share pixels: every
    attribute token, text run and block gets at least one, then attribute tokens are widened
    (so their blocked cells stand out), then text, vision markers and latents get pixels in
    that order; each run is spread evenly over its pixels.
    """
    n = plan.length
    if n <= budget:
        return np.arange(n), max(1, min(budget // n, _MAX_CELL))
    runs = _runs(plan, emphasis=max(1, min(_MAX_EMPHASIS, budget // 160)))
    px = [r.least for r in runs]
    left = budget - sum(px)
    if left < 0:  # more attribute tokens and segments than pixels: plain proportional
        px = _share([r.length for r in runs], budget)
    else:
        for tier in range(4):
            idx = [i for i, r in enumerate(runs) if r.tier == tier]
            want = [runs[i].want - px[i] for i in idx]
            got = want if sum(want) <= left else _share(want, left)
            for i, g in zip(idx, got, strict=True):
                px[i] += g
            left -= sum(got)
    reps = [
        r.start + (2 * np.arange(p, dtype=np.int64) + 1) * r.length // (2 * p)
        for r, p in zip(runs, px, strict=True)
        if p
    ]
    return np.concatenate(reps), 1


def _runs(plan: Plan, emphasis: int) -> list[_Run]:
    """The plan cut into runs: each attribute token alone and each phantom block's inside
    (wanting ``emphasis`` px, so they stay visible), the text between them, and each block as
    marker, latents, marker."""
    runs: list[_Run] = []
    for seg in plan.segments:
        if seg.kind != "text":
            if seg.length < 3:
                runs.append(_Run(seg.start, seg.length, 3, 1, seg.length))
                continue
            inside = (
                _Run(seg.start + 1, seg.length - 2, 0, 1, emphasis)
                if seg.kind == "phantom"
                else _Run(seg.start + 1, seg.length - 2, 3, 1, seg.length - 2)
            )
            runs += [_Run(seg.start, 1, 2, 0, 1), inside, _Run(seg.end - 1, 1, 2, 0, 1)]
            continue
        start = seg.start
        special = (plan.arrays.token_type[seg.start : seg.end] == TokenType.SPECIAL).tolist()
        for t in range(seg.start, seg.end):
            if special[t - seg.start]:
                if t > start:
                    runs.append(_Run(start, t - start, 1, 1, t - start))
                runs.append(_Run(t, 1, 0, 1, emphasis))
                start = t + 1
        if start < seg.end:
            runs.append(_Run(start, seg.end - start, 1, 1, seg.end - start))
    return runs


def _share(weights: list[int], budget: int) -> list[int]:
    """``budget`` split in proportion to ``weights`` (largest remainder); never above a weight
    while the budget is below their sum."""
    total = sum(weights)
    if total == 0:
        return [0] * len(weights)
    exact = [w * budget / total for w in weights]
    out = [int(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: out[i] - exact[i])
    for i in order[: budget - sum(out)]:
        out[i] += 1
    return out
