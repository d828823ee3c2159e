"""From training samples to packed sequences: the same plan inference builds, the conditions
dropped as BAGEL's trainer drops them, then several samples laid end to end in one row.

A sample becomes a :class:`Plan` through :func:`build_plan`, the function inference uses, so
the tokenizer path, positions, groups, experts and mask cannot disagree between the two. The
target is the plan's noise block, at the target's own size: last, or where the prompt places
the target (as SIGMA's packer does; see :mod:`sigma_core.training.rows`).

The plan is laid out in the run's layout (:mod:`sigma_core.planning.layout`): in "training",
each reference's VAE block is followed by the phantom ViT block, as SIGMA's packer emits it.

Conditioning dropout follows BAGEL's PackedDataset.pack_sequence: a dropped text piece leaves
no trace (rope does not advance), a dropped reference VAE block or phantom ViT block leaves a
rope hole (rope advances by one as if it were there). The target is never dropped. These drops
are what makes the CFG branches meaningful at inference.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sigma_core.errors import SigmaInputError
from sigma_core.geometry import MAX_SIDE, MIN_SHORT_SIDE, vae_size
from sigma_core.model.attribute_projection import attribute_multi_hot
from sigma_core.model.bagel import PackedSequence
from sigma_core.model.mot import BlockMask, Routing
from sigma_core.model.vae import FluxVAE
from sigma_core.planning.mask import packed_dense_mask, packed_mask_mod
from sigma_core.planning.sequence import LATENT_ID, Plan, build_plan
from sigma_core.training.flow import noised, velocity_target
from sigma_core.training.posteriors import PosteriorCache, PosteriorEncoder
from sigma_core.training.rows import BAD_PROMPT, OVER_BUDGET, SkipCounter, TrainSample


@dataclass(frozen=True)
class ImageBounds:
    """BAGEL's VAE resize bounds for training images, and the random down-scale (``jitter``:
    each image is first scaled by a factor drawn from [1 - jitter, 1])."""

    max_side: int = MAX_SIDE
    min_side: int = MIN_SHORT_SIDE
    jitter: float = 0.0

    def size(self, width: int, height: int, rng: random.Random) -> tuple[int, int]:
        scale = 1.0 - rng.uniform(0.0, self.jitter) if self.jitter else 1.0
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        return vae_size(w, h, max_size=self.max_side, min_size=self.min_side)


@dataclass(frozen=True)
class TrainingExample:
    """One sample ready to pack: its plan and the clean latent tokens of every image."""

    plan: Plan
    references: dict[int, torch.Tensor]  # slot -> clean latent tokens [m, 64] (fp32)
    target: torch.Tensor  # clean target tokens [m_t, 64] (fp32), the plan's noise block
    source: str

    @property
    def length(self) -> int:
        return self.plan.length


@dataclass(frozen=True)
class Draft:
    """A sample planned, its images not yet encoded: the placed reference ``slots`` and the
    ``images`` at their VAE sizes (those slots' images, then the target) in the order their
    posterior noise is drawn, with the ``generator`` that draws it."""

    plan: Plan
    slots: tuple[int, ...]
    images: tuple[Image.Image, ...]
    generator: torch.Generator
    source: str

    @property
    def length(self) -> int:
        return self.plan.length


def drop_conditions(
    plan: Plan, rng: random.Random, *, text: float, image: float, vit: float = 0.0
) -> Plan:
    """The plan with each text piece dropped with probability ``text``, each reference's VAE
    block with probability ``image`` and each phantom ViT block with probability ``vit``; rope
    positions as BAGEL's packer gives them (a dropped block keeps its position as a hole, a
    dropped text piece gives its positions back to what follows)."""
    odds = {"text": text, "image": image, "phantom": vit}
    if not any(odds.values()):
        return plan
    kept, start, returned = [], 0, 0
    for seg in plan.segments:
        if seg.kind in odds and rng.random() < odds[seg.kind]:
            returned += seg.length if seg.kind == "text" else 0
            continue
        kept.append(dataclasses.replace(seg, start=start, position=seg.position - returned))
        start += seg.length
    return dataclasses.replace(plan, segments=kept)


class ExampleMaker:
    """Turns a :class:`TrainSample` into a :class:`Draft`, or None (counted in ``skipped``)
    when its prompt is refused or its plan exceeds ``max_tokens``; :meth:`encode` turns the
    drafts of a batch into :class:`TrainingExample` objects. ``cache`` keeps the posteriors
    on disk."""

    def __init__(
        self,
        tokenizer: object,
        vae: FluxVAE,
        *,
        bounds: ImageBounds,
        max_tokens: int,
        mask: bool,
        layout: str = "inference",
        text_dropout: float = 0.0,
        image_dropout: float = 0.0,
        vit_dropout: float = 0.0,
        skipped: SkipCounter,
        cache: PosteriorCache | None = None,
    ) -> None:
        self.tokenizer, self.bounds = tokenizer, bounds
        self.encoder = PosteriorEncoder(vae, cache)
        self.max_tokens, self.mask, self.layout, self.skipped = max_tokens, mask, layout, skipped
        self.dropout = {"text": text_dropout, "image": image_dropout, "vit": vit_dropout}

    def __call__(
        self, sample: TrainSample, rng: random.Random, generator: torch.Generator
    ) -> Draft | None:
        images = sample.images
        # one VAE size per source size: the plan maps source sizes to block sizes, and reads
        # the source sizes themselves for the ViT resize (as SIGMA's transform does)
        chosen: dict[tuple[int, int], tuple[int, int]] = {}
        for img in images.values():
            if img.size not in chosen:
                chosen[img.size] = self.bounds.size(*img.size, rng)
        target_size = self.bounds.size(*sample.target.size, rng)
        plan = self._plan(sample, images, chosen, target_size)
        if plan is None:
            return None
        plan = drop_conditions(plan, rng, **self.dropout)
        # the set's order is the order the posterior noise has always been drawn in
        slots = tuple({seg.block_slot for seg in plan.segments if seg.kind == "image"})
        resized = [_resized(images[s], chosen[images[s].size]) for s in slots]
        resized.append(_resized(sample.target, target_size))
        return Draft(plan, slots, tuple(resized), generator, sample.source)

    def encode(self, drafts: Sequence[Draft]) -> list[TrainingExample]:
        """The drafts' examples: every image's posterior at once (batched by size, or read
        from the cache), then each latent drawn from it with its draft's generator, in the
        draft's order: the numbers one encode per image gave."""
        posteriors = iter(self.encoder([img for d in drafts for img in d.images]))
        out = []
        for d in drafts:
            latents = [next(posteriors).sample(d.generator) for _ in d.images]
            references = dict(zip(d.slots, latents[:-1], strict=True))
            out.append(TrainingExample(d.plan, references, latents[-1], d.source))
        return out

    def _plan(
        self,
        sample: TrainSample,
        images: dict[int, Image.Image],
        chosen: dict[tuple[int, int], tuple[int, int]],
        target_size: tuple[int, int],
    ) -> Plan | None:
        """The sample's plan at the drawn sizes (``chosen``: VAE size by source size), in this
        run's mask and layout; None after counting a refused prompt or one over the budget."""
        settings = sample.composition.settings.replace(
            size=target_size, mask=self.mask, layout=self.layout
        )
        composition = dataclasses.replace(sample.composition, settings=settings)
        try:
            plan = build_plan(
                composition,
                self.tokenizer,
                {slot: img.size for slot, img in images.items()},
                resize=lambda w, h: chosen[(w, h)],
                target_slot=sample.target_slot,
            )
        except SigmaInputError as e:
            self.skipped.skip(BAD_PROMPT, sample.source, str(e))
            return None
        if plan.length > self.max_tokens:
            detail = f"{plan.length:,} tokens > {self.max_tokens:,}"
            self.skipped.skip(OVER_BUDGET, sample.source, detail)
            return None
        return plan


def _resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``img`` at its drawn VAE size, resized as BAGEL's transform does."""
    return img if img.size == size else img.resize(size, Image.Resampling.BICUBIC)


def batches(examples: Sequence[TrainingExample], max_tokens: int) -> list[list[TrainingExample]]:
    """Greedy packing in order: a batch takes examples while their tokens fit ``max_tokens``."""
    out: list[list[TrainingExample]] = []
    size = 0
    for ex in examples:
        if not out or size + ex.length > max_tokens:
            out.append([])
            size = 0
        out[-1].append(ex)
        size += ex.length
    return out


@dataclass(frozen=True)
class PackedBatch:
    """A packed sequence and the velocities its loss tokens should predict [k, 64]."""

    sequence: PackedSequence
    target: torch.Tensor
    samples: int

    @property
    def loss_tokens(self) -> int:
        return self.target.shape[0]


def pack(
    examples: Sequence[TrainingExample],
    timesteps: torch.Tensor,
    noise: Sequence[torch.Tensor],
    *,
    max_latent_size: int,
    attributes: bool,
    frozen_und: bool = False,
    flex: bool = False,
    device: torch.device | str = "cpu",
) -> PackedBatch:
    """Lay ``examples`` end to end: targets noised at ``timesteps`` [S] with ``noise`` (one
    [m_t, 64] per example). ``attributes`` adds W_tau rows for the attribute tokens bound to
    each reference (all-zero rows elsewhere, so W_tau takes part in every batch); ``flex``
    builds flex_attention's block mask (GPU) instead of a dense one.
    """
    plans = [ex.plan for ex in examples]
    token_ids, positions, experts = [], [], []
    latents, steps, pos_ids, hot, targets, carries_loss = [], [], [], [], [], []
    for ex, t, eps in zip(examples, timesteps, noise, strict=True):
        arrays = ex.plan.arrays
        token_ids.append(arrays.token_ids)
        positions.append(arrays.position_ids)
        experts.append(arrays.expert)
        for seg in ex.plan.segments:
            if seg.kind in ("text", "phantom"):  # no latent tokens
                continue
            rows, cols = seg.block_grid
            table_ids = np.arange(rows)[:, None] * max_latent_size + np.arange(cols)[None, :]
            pos_ids.append(table_ids.reshape(-1))
            m = rows * cols
            carries_loss.append(torch.full((m,), seg.kind == "noise"))
            if seg.kind == "noise":
                latents.append(noised(ex.target, eps, t))
                steps.append(t.expand(m))
                targets.append(velocity_target(ex.target, eps))
            else:
                latents.append(ex.references[seg.block_slot])
                steps.append(torch.zeros(m))
            hot.append(attribute_multi_hot(seg.attributes).expand(m, -1))
    ids = torch.from_numpy(np.concatenate(token_ids))
    latent_index = (ids == LATENT_ID).nonzero().squeeze(1)
    sequence = PackedSequence(
        token_ids=ids.to(device),
        position_ids=torch.from_numpy(np.concatenate(positions)).to(device),
        routing=Routing.from_experts(np.concatenate(experts).tolist(), frozen_und=frozen_und),
        mask=_packed_mask(plans, ids.shape[0], flex=flex, device=device),
        latent_index=latent_index.to(device),
        latents=torch.cat(latents).to(device),
        timesteps=torch.cat(steps).to(device),
        latent_position_ids=torch.from_numpy(np.concatenate(pos_ids)).to(device),
        attributes=torch.cat(hot).to(device) if attributes else None,
        loss_index=torch.cat(carries_loss).nonzero().squeeze(1).to(device),
        key_bias=_key_bias(plans, device),
    )
    return PackedBatch(sequence, torch.cat(targets).to(device), len(examples))


def _packed_mask(
    plans: list[Plan], n: int, *, flex: bool, device: torch.device | str
) -> torch.Tensor | BlockMask:
    """The mask over all n tokens of the plans laid end to end: dense bool [n, n], or (``flex``)
    flex_attention's block mask, compiled on a GPU (elsewhere it would materialise n x n)."""
    if not flex:
        return packed_dense_mask(plans, max_tokens=1 << 62).to(device)
    from torch.nn.attention.flex_attention import create_block_mask

    mod = packed_mask_mod(plans, device)
    compiled = torch.device(device).type == "cuda"
    return create_block_mask(mod, None, None, n, n, device=device, _compile=compiled)


def _key_bias(plans: list[Plan], device: torch.device | str) -> torch.Tensor | None:
    """Each key's logit bias [n] (compact phantom tokens), or None when every plan has none."""
    if not any(p.has_key_bias for p in plans):
        return None
    return torch.cat([p.key_bias for p in plans]).to(device)
