"""What the handlers' data looks like on screen: small HTML and Markdown fragments. User text is
always escaped, so a prompt or a file name cannot inject markup into the page."""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path
from typing import Any

from sigma_core import frontend
from studio import slots
from studio.compose import Check, Chip
from studio.engine import EngineInfo
from studio.forms import Draft
from studio.modes import Fit
from studio.runs import Progress, thumbnail_uri

CSS = """
.sigma-banner { padding: 8px 12px; border-radius: 6px; background: #eef3f8; }
.sigma-banner.preview { background: #b00020; color: #fff; font-weight: 600; }
.sigma-problems { color: #b00020; }
.sigma-warnings { color: #8a5a00; }
.sigma-memory { font-size: 0.9em; opacity: 0.85; }
.sigma-seq { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; }
.sigma-chip { border-radius: 4px; padding: 2px 6px; font-size: 0.85em; border: 1px solid #999; }
.sigma-chip.text { background: #e8f0fe; }
.sigma-chip .attr { border-radius: 3px; padding: 0 3px; font-weight: 600; }
.sigma-chip.output { background: #9c27b0; color: #fff; }
.sigma-chip.phantom { border-style: dashed; opacity: 0.6; }
.sigma-chip small { opacity: 0.9; }
.sigma-hint { opacity: 0.85; font-style: italic; }
.sigma-strip { display: flex; flex-wrap: wrap; gap: 8px; padding-top: 22px; }
#workspace { align-items: flex-start; }
/* gradio's webcam prompt asks for 240 px; in a card it hid under the source buttons */
#slot-grid .image-container button:not(.upload-container) > .wrap { min-height: 0 !important;
  gap: 2px !important; font-size: var(--text-sm) !important; line-height: 1.2 !important; }
#slot-grid .image-container button:not(.upload-container) > .wrap .icon-wrap {
  width: 22px !important; height: 22px !important; }
.sigma-drop-here { outline: 2px dashed var(--color-accent); outline-offset: -2px; }
#slot-adders { flex-wrap: nowrap !important; }
#slot-adders > * { min-width: 0 !important; }
#slot-grid { display: grid !important; gap: 8px;
  grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); }
.sigma-slim, .sigma-told { padding: 0 !important; min-height: 0 !important;
  border: none !important; }
.sigma-told:not(:has(.sigma-problems, .sigma-warnings, .sigma-hint)) { display: none; }
#toolbar { align-items: center; }
#slot-grid .token > span { max-width: 5.5em; overflow: hidden; white-space: nowrap;
  text-overflow: ellipsis; }
#slot-grid > .sigma-card { gap: 6px; }
#title h2 { margin: 0; }
#slot-grid > .sigma-card { min-width: 0 !important; }
.sigma-card-head { align-items: center; flex-wrap: nowrap !important; gap: 4px; }
.sigma-card-head > * { flex: 0 0 auto !important; min-width: 0 !important; }
.sigma-card-head > div:first-child { flex: 1 1 auto !important; }
.sigma-card-title { font-weight: 700; font-size: 1.05em; }
.sigma-caption { font-size: 0.8em; opacity: 0.85; }
.sigma-crop-frame { position: relative; display: inline-block; cursor: crosshair;
  touch-action: none; user-select: none; max-width: 100%; }
.sigma-crop-frame img { display: block; max-width: 100%; max-height: 240px; }
.sigma-crop-box { position: absolute; border: 2px solid #ff9800; pointer-events: none;
  box-shadow: 0 0 0 9999px rgba(0, 0, 0, 0.35); }
#result-panel { position: sticky; top: 8px; max-height: calc(100vh - 16px);
  overflow-y: auto; }
@media (max-width: 768px) {
  #workspace { flex-direction: column; }
  #compose-col { display: contents; }
  #prompt-block { order: 1; }
  #result-panel { order: 2; position: static; max-height: none; }
  #slots-block { order: 3; }
  #compose-rest { order: 4; }
}
.sigma-strip-item { cursor: grab; display: flex; flex-direction: column; align-items: center;
  width: 104px; padding: 4px; border: 1px solid #bbb; border-radius: 6px; font-size: 0.8em;
  text-align: center; overflow-wrap: anywhere; }
.sigma-strip-item img { height: 64px; max-width: 96px; object-fit: contain; }
"""


def _colours(group: int | None) -> str:
    """A chip's inline style: its group's colour, and black or white ink, whichever contrasts
    more with it (WCAG's ratio: white on the dark blues, black on the yellows)."""
    if group is None:
        return "background:#888;color:#000"
    r, g, b = frontend.GROUP_COLORS[group % len(frontend.GROUP_COLORS)]
    return f"background:rgb({r},{g},{b});color:{ink_for((r, g, b))}"


def ink_for(rgb: tuple[int, int, int]) -> str:
    """ "#000" or "#fff", whichever has the higher contrast ratio with ``rgb``."""
    lum = luminance(rgb)
    return "#000" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "#fff"


def luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG relative luminance of an sRGB colour, 0 (black) to 1 (white)."""
    linear = [c / 255 / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def banner(info: EngineInfo, memory: str) -> str:
    """Which weights, precision, device, offload, VAE dtype and memory; the preview engine in
    red."""
    weights = html.escape(info.weights)
    facts = html.escape(
        f"{info.precision} on {info.device} · offload {info.offload} · VAE {info.vae_dtype} · "
        f"weights {_size(info.weights_bytes)} · {memory}"
    )
    if info.preview:
        return (
            '<div class="sigma-banner preview">PREVIEW ENGINE: a tiny checkpoint of random '
            f"weights, the images are noise, not SIGMA results · {facts}</div>"
        )
    return f'<div class="sigma-banner">Weights: {weights} · {facts}</div>'


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# Folders of this machine that a message has no business showing: where the studio is installed,
# the temporary folder (gradio's uploads, the studio's files by default) and the home folder.
PRIVATE_FOLDERS = sorted(
    {str(Path(frontend.__file__).resolve().parents[1]), tempfile.gettempdir(), str(Path.home())},
    key=len,
    reverse=True,
)


def redact(text: str) -> str:
    """``text`` with this machine's folders shortened to "…": a file keeps its name and the
    folders under the private one, so a message still says which file it means."""
    for folder in PRIVATE_FOLDERS:
        if len(folder) > 1:
            text = text.replace(folder + os.sep, "…" + os.sep).replace(folder, "…")
    return text


def messages(problems: list[str], warnings: list[str]) -> str:
    """The problems and warnings shown next to one control (empty when there are none)."""
    out = [f'<div class="sigma-problems">✖ {html.escape(redact(p))}</div>' for p in problems]
    out += [f'<div class="sigma-warnings">! {html.escape(redact(w))}</div>' for w in warnings]
    return "".join(out)


def note(text: str) -> str:
    """A neutral note next to a control (what was done for the user, and how to undo it)."""
    return f'<div class="sigma-hint">{html.escape(text)}</div>' if text else ""


START_HINT = (
    "To start: drop a reference image into slot 1 and choose what it gives (its attribute), then "
    "describe the picture in the prompt, placing the reference with [1]; or open a preset."
)


def problems_panel(check: Check) -> str:
    """Every problem and warning, each with where it is."""
    if check.untouched:
        return f'<div class="sigma-hint">{START_HINT}</div>'
    if not check.problems and not check.warnings:
        return '<div class="sigma-ok">✓ ready to generate</div>'
    return messages(
        [p.message for p in check.problems], [_located(w.where, w.message) for w in check.warnings]
    )


def _located(where: str, message: str) -> str:
    """A warning with the control it concerns, unless it already starts with a field path."""
    return (
        message
        if message.startswith(("prompt", "references", "settings"))
        else (f"{where}: {message}")
    )


def _chip(chip: Chip) -> str:
    count = f"<small> · {chip.tokens} tok</small>"
    if chip.kind == "text":
        inner = " ".join(
            f'<span class="attr" style="{_colours(p.group)}">{html.escape(p.text)}</span>'
            if p.group is not None
            else html.escape(p.text)
            for p in chip.parts
        )
        return f'<span class="sigma-chip text">{inner}{count}</span>'
    w, h = chip.size or (0, 0)
    if chip.kind == "output":
        return f'<span class="sigma-chip output">output {w}×{h}{count}</span>'
    if chip.kind == "phantom":
        return (
            f'<span class="sigma-chip image phantom" style="{_colours(chip.group)}" '
            f'title="zero inputs: one token weighted as {chip.stands_for}">'
            f"ViT [{chip.slot}] {w}×{h}, {chip.stands_for} as one{count}</span>"
        )
    attrs = html.escape(" ".join(chip.attributes)) or "no attribute"
    return (
        f'<span class="sigma-chip image" style="{_colours(chip.group)}">'
        f"image [{chip.slot}] {attrs} · {w}×{h}{count}</span>"
    )


def sequence(check: Check) -> str:
    """The interleaved sequence as chips coloured by group, with the token totals."""
    if check.plan is None:
        return (
            '<div class="sigma-seq"><em>The sequence shows once the problems are fixed.</em></div>'
        )
    chips = "".join(_chip(c) for c in check.chips)
    counts = ", ".join(f"{name} {n}" for name, n in check.token_counts)
    w, h = check.output_size or (0, 0)
    mask = "on" if check.plan.mask else "off"
    layout = check.plan.layout  # resolved; "(auto)" after it says the weights chose it
    if check.composition is not None and check.composition.settings.layout != layout:
        layout += f" ({check.composition.settings.layout})"
    return (
        f'<div class="sigma-seq">{chips}</div><div><small>{check.length} tokens ({counts}); '
        f"output {w}×{h}; SIGMA mask {mask}; layout {layout}</small></div>"
    )


PHASE_TEXT = {
    "plan": "Planning the run…",
    "prefill": "Reading the prompt and the references (prefill)…",
    "decode": "Decoding the image…",
}


def progress(p: Progress) -> str:
    """Where the run is: its phase, or its step, how fast the steps go and the time left at
    that rate (the rate of this image's denoising steps alone)."""
    image = f"image {p.image}/{p.images} · " if p.images > 1 else ""
    if p.phase == "encode":
        reused = f" ({p.reused} reused from an earlier run)" if p.reused else ""
        if p.step < p.steps:
            return f"{image}Encoding reference {p.step + 1} of {p.steps}…{reused}"
        return f"{image}{p.steps} reference{'s' * (p.steps != 1)} ready{reused}"
    if p.phase == "decode" and p.steps > 1:  # a run's images are decoded together
        return f"Decoding the {p.steps} images…"
    if p.phase != "denoise":
        return image + PHASE_TEXT.get(p.phase, f"{p.phase}…")
    if p.step == 0:
        return f"{image}Denoising: step 1 of {p.steps} running…"
    per_step = p.elapsed_s / p.step
    left = ((p.images - p.image) * p.steps + p.steps - p.step) * per_step
    return f"{image}step {p.step}/{p.steps} · {per_step:.2f} s/step · about {left:.0f} s left"


def result_info(entry: dict[str, Any]) -> str:
    """A result's seed, settings, timings and warnings, as Markdown."""
    s = entry.get("settings") or {}
    t = entry.get("timings") or {}
    size = entry.get("size") or ["?", "?"]
    title = str(entry.get("name") or "untitled")
    lines = [
        f"**{title}**: {entry.get('prompt') or ''}",
        f"**Seed {entry.get('seed')}** · {size[0]}×{size[1]}"
        + (" · made by the **preview engine** (random weights)" if entry.get("preview") else ""),
        f"steps {s.get('num_timesteps')} · cfg text {s.get('cfg_text_scale')} · cfg image "
        f"{s.get('cfg_img_scale')} · interval {s.get('cfg_interval')} · shift "
        f"{s.get('timestep_shift')} · renorm {s.get('cfg_renorm_type')} "
        f"(min {s.get('cfg_renorm_min')}) · mask {'on' if s.get('mask') else 'off'} · W_tau "
        f"{'on' if s.get('attribute_projection') else 'off'}"
        + (f" · layout {s['layout']}" if s.get("layout") else ""),  # results before layouts: none
        "timings: "
        + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in t.items() if _is_num(v))
        + _reuse(entry.get("references")),
    ]
    lines += [f"warning: {w}" for w in entry.get("warnings") or []]
    return "\n\n".join(html.escape(line, quote=False) for line in lines)


def _reuse(refs: Any) -> str:
    """How many of the run's references the engine encoded, and how many it took from its
    latent cache (a run that changed only the prompt, seed or settings encodes none)."""
    if not isinstance(refs, dict) or not all(_is_num(refs.get(k)) for k in ("placed", "reused")):
        return ""  # results made before the studio counted them
    encoded, reused = refs["placed"] - refs["reused"], refs["reused"]
    told = [f"{encoded} encoded"] * (encoded > 0) + [f"{reused} reused from an earlier run"] * (
        reused > 0
    )
    return f" · references: {', '.join(told)}" if told else ""


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def slot_strip(draft: Draft) -> list[dict[str, Any]]:
    """The slot strip's items, in slot order: number, thumbnail as the model sees it (empty
    without a usable image) and label. The strip renders them with its own escaping template,
    and dragging one sends the new order."""
    items = []
    for k, form in enumerate(draft.slots, start=1):
        thumb = slots.thumbnail(form, k).image
        label = " ".join((*form.attributes, form.entity)).strip()
        items.append(
            {"slot": k, "thumb": thumbnail_uri(thumb) if thumb else "", "label": label or "—"}
        )
    return items


def memory(fit: Fit | None) -> str:
    """The predicted peak next to Generate (None: the draft does not plan yet); a run that
    will not fit, as a problem."""
    if fit is None:
        return '<div class="sigma-memory"><em>Memory: predicted once it plans.</em></div>'
    if fit.fits:
        return f'<div class="sigma-memory">{html.escape(fit.text)}</div>'
    return messages([fit.text], [])
