"""The CFG contexts of one run, prefilled once as BAGEL's inferencer builds them, and the guided
velocity of one denoising step over them.

Three contexts, each a row of one KV cache (inferencer.py, interleave_inference):

- gen: everything, segment by segment, SIGMA's mask on text segments;
- cfg_text: gen as it was before its last text segment (when the prompt ends with an image it
  equals gen, and the conditional pass is reused: bit-identical, one pass fewer);
- cfg_img: the text segments only, causal, positions counted over text (equal to gen when the
  prompt has no image). In the training layouts the text keeps its positions instead: each
  reference leaves a rope hole, as training's dropout does (see sigma_core.planning.layout).

In the training layouts gen also holds each reference's phantom ViT block, or its rope hole.

A step runs the rows it needs either as one forward with B rows (batched CFG) or one forward
per row (sequential, as the official code does); the two agree to float rounding.

Each pass also runs the understanding expert for the block's two marker tokens. No exact way
skips that: the markers attend to the noise latents, so their keys change every step. What they
cost is measured by benchmarks/bench_precision.py (the "markers" row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sigma_core.inputs.settings import LAYOUTS
from sigma_core.model.bagel import BagelGenerator, DenoiseContext, unpatchify
from sigma_core.model.cache import KVCache
from sigma_core.planning.mask import segment_masks
from sigma_core.planning.sequence import Plan
from sigma_core.runtime.sampler import Guidance, euler_step, guide

# What a step callback may ask for (diffusers' callback_on_step_end_tensor_inputs).
CALLBACK_TENSORS = ("latents", "velocity", "v_cond", "v_text", "v_img", "t", "t_next")


@dataclass(frozen=True)
class CFGContexts:
    """The prefilled contexts: row 0 is gen; cfg_text and cfg_img follow where they differ."""

    cache: KVCache
    text_row: int | None  # None: not needed, or equal to gen
    img_row: int | None  # None: not needed, or equal to gen
    hidden: torch.Tensor | None = None  # gen's context hidden states [1, L, d], when asked


def context_rows(plan: Plan, *, need_text: bool, need_img: bool) -> tuple[int | None, int | None]:
    """The cache rows of cfg_text and cfg_img after gen's row 0 (None: not needed, or equal to
    gen): cfg_text when text CFG runs and the context ends with text, cfg_img when image CFG
    runs and the context has an image."""
    context = plan.segments[:-1]
    ends_with_text = bool(context) and context[-1].kind == "text"
    has_images = any(seg.kind == "image" for seg in context)
    text_row = 1 if need_text and ends_with_text else None
    img_row = (1 + (text_row is not None)) if need_img and has_images else None
    return text_row, img_row


def prefill_contexts(
    model: BagelGenerator,
    plan: Plan,
    references: dict[int, torch.Tensor],
    *,
    need_text: bool = True,
    need_img: bool = True,
    attribute_projection: bool = True,
    return_hidden: bool = False,
) -> CFGContexts:
    """Prefill gen, then copy cfg_text as gen's prefix and prefill cfg_img from the text.

    ``references`` are the VAE latent tokens [m, 64] of each placed slot.
    """
    context = plan.segments[:-1]
    text_row, img_row = context_rows(plan, need_text=need_text, need_img=need_img)
    cache = KVCache.empty(
        model.config,
        batch=1 + (text_row is not None) + (img_row is not None),
        capacity=plan.length,
        dtype=model.dtype,
        device=model.layer_devices(),
    )
    holes = LAYOUTS[plan.layout].keeps_holes
    hidden, cut = [], cache.mark(0)
    for seg, seg_mask in zip(context, segment_masks(plan), strict=False):
        _seek(cache, 0, seg.position, holes)
        if seg.kind == "text":
            cut = cache.mark(0)  # the official code copies gen before each text segment
            ids = plan.token_ids[seg.start : seg.end].to(model.device)
            h = model.prefill_text(cache, 0, ids, seg_mask.dense().to(model.device))
        elif seg.kind == "phantom":
            h = model.prefill_phantom(cache, 0, seg.phantom_tokens, seg.length - 2)
        else:
            attributes = seg.attributes if attribute_projection else ()
            h = model.prefill_image(
                cache, 0, references[seg.block_slot], seg.block_grid, attributes
            )
        if return_hidden:
            hidden.append(h)
    _seek(cache, 0, plan.noise.position, holes)
    if text_row is not None:
        cache.copy_prefix(0, text_row, cut)
    if img_row is not None:
        for seg in context:
            if seg.kind == "text":
                if holes:
                    _seek(cache, img_row, seg.position, holes)
                ids = plan.token_ids[seg.start : seg.end].to(model.device)
                model.prefill_text(cache, img_row, ids)
        if holes:
            _seek(cache, img_row, plan.noise.position, holes)
    return CFGContexts(cache, text_row, img_row, torch.cat(hidden, 1) if return_hidden else None)


def _seek(cache: KVCache, row: int, position: int, holes: bool) -> None:
    """Move ``row``'s rope to ``position``: over a rope hole where the layout leaves them;
    anywhere else the row must already be there."""
    if cache.positions[row] == position:
        return
    if not holes or position < cache.positions[row]:
        raise RuntimeError(f"rope position {cache.positions[row]} disagrees with the plan")
    cache.advance(row, 0, position - cache.positions[row])


@dataclass(frozen=True)
class StepVelocities:
    """One step's velocities [m, 64] (fp32): the guided one and each branch that ran."""

    guided: torch.Tensor
    cond: torch.Tensor
    text: torch.Tensor | None
    img: torch.Tensor | None
    passes: int  # LLM passes over the noise block this step

    def callback_tensors(
        self,
        names: Sequence[str],
        x: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        grid: tuple[int, int],
    ) -> dict[str, torch.Tensor | None]:
        """The tensors a step callback asked for (see :data:`CALLBACK_TENSORS`); latents and
        velocities in latent layout [1, 16, H/8, W/8], None for a branch that did not run."""
        tokens: dict[str, torch.Tensor | None] = {"latents": x, "velocity": self.guided}
        tokens |= {"v_cond": self.cond, "v_text": self.text, "v_img": self.img}
        out: dict[str, torch.Tensor | None] = {"t": t, "t_next": t_next}
        for name in names:
            if name in tokens:
                value = tokens[name]
                out[name] = None if value is None else unpatchify(value, grid)
        return {name: out[name] for name in names}


class Denoiser:
    """The guided velocity of each step over prefilled contexts, for one output grid.

    The rows a step needs are always a prefix (image CFG only runs with text CFG): batched CFG
    is one forward over rows [0, k), sequential CFG one forward per row. The denoise context of
    each row set is made before the loop for the ``steps`` announced, so the loop itself makes
    no tensor from host data. :meth:`sample` may run again from other noise (several images of
    one prefill): a pass writes its block's keys after the context and reads them back in the
    same pass, so the contexts stay as prefilled and each loop is what it would be alone.
    """

    def __init__(
        self,
        model: BagelGenerator,
        contexts: CFGContexts,
        grid: tuple[int, int],
        guidance: Guidance,
        *,
        batched: bool,
        steps: Sequence[tuple[bool, bool]] = (),
        velocity: Callable[[torch.Tensor, torch.Tensor, DenoiseContext], torch.Tensor]
        | None = None,
    ) -> None:
        self.model, self.contexts, self.grid = model, contexts, grid
        self.guidance, self.batched = guidance, batched
        self.velocity = velocity or model.velocity  # or a compiled model.velocity
        self.steps = list(steps)
        self._prepared: dict[tuple[int, int], DenoiseContext] = {}
        for want_text, want_img in set(self.steps):
            for rows in self._row_sets(self._rows(want_text, want_img)[0]):
                self._context(rows)

    def _rows(self, want_text: bool, want_img: bool) -> tuple[int, int | None, int | None]:
        """How many rows a step runs, and which of them are cfg_text and cfg_img."""
        text_row = self.contexts.text_row if want_text else None
        img_row = self.contexts.img_row if want_img else None
        return 1 + (text_row is not None) + (img_row is not None), text_row, img_row

    def _row_sets(self, k: int) -> list[tuple[int, int]]:
        return [(0, k)] if self.batched else [(r, r + 1) for r in range(k)]

    def _context(self, rows: tuple[int, int]) -> DenoiseContext:
        """The denoise context of cache rows [start, stop), made once."""
        if rows not in self._prepared:
            view = self.contexts.cache.rows(*rows)
            self._prepared[rows] = self.model.denoise_context(view, self.grid)
        return self._prepared[rows]

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, want_text: bool, want_img: bool
    ) -> StepVelocities:
        """Velocities at ``t`` (0-dim tensor) for noise tokens ``x`` [m, 64]."""
        k, text_row, img_row = self._rows(want_text, want_img)
        v = torch.cat([self.velocity(x, t, self._context(r)) for r in self._row_sets(k)])
        cond = v[0]
        v_text = (cond if text_row is None else v[text_row]) if want_text else None
        v_img = (cond if img_row is None else v[img_row]) if want_img else None
        return StepVelocities(guide(cond, v_text, v_img, self.guidance), cond, v_text, v_img, k)

    def sample(
        self,
        x: torch.Tensor,
        ts: torch.Tensor,
        on_step: Callable[[int, torch.Tensor, StepVelocities], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """The Euler loop over the ``steps`` announced: noise tokens ``x`` [m, 64] from
        ``ts[0]`` to ``ts[-1]``. After step i, ``on_step(i, x, v)`` returns the tokens to go on
        with (a step callback may replace them; it may also raise to stop). Returns the final
        tokens and the LLM passes made."""
        passes = 0
        for i, (want_text, want_img) in enumerate(self.steps):
            v = self(x, ts[i], want_text, want_img)
            passes += v.passes
            x = euler_step(x, v.guided, ts[i], ts[i + 1])
            if on_step is not None:
                x = on_step(i, x, v)
        return x, passes
