"""SIGMA's intra-group attention mask B = (C AND M) OR S, in the forms the project needs.

- :func:`dense_mask` computes the paper's formula literally as an L x L matrix. It is the ground
  truth for tests and is refused for long sequences (8 references at 1024 px is ~37k tokens,
  1.4 GB of booleans).
- :func:`segment_masks` is what the engine prefills with, segment by segment, into a KV cache:
  image and noise blocks see everything up to their end, so only text segments carry a mask.
- :func:`mask_mod` is the same B for ``flex_attention`` on GPU.
- :func:`packed_dense_mask` and :func:`packed_mask_mod` are B over several plans packed end to
  end, as training runs them: each plan's B on the diagonal, nothing across plans.

(:mod:`sigma_core.report.mask_picture` draws it, so users can see what the guard blocks.)

``B[q, k] = True`` means query q may attend to key k. C is causal (k <= q), S is full attention
inside each image or noise block (its vision markers included), and M is False only where an
attribute (SPECIAL) token would see an IMAGE token of another group; with ``plan.mask`` off, M is
all True (plain BAGEL). No token outside the noise block sees it (BAGEL's "noise" split); as
the block is last at inference, that only matters to a training plan that places the target
mid-prompt (``target_slot`` of :func:`sigma_core.planning.sequence.build_plan`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sigma_core.planning.sequence import Plan, Segment, TokenType

DEFAULT_MAX_TOKENS = 16384


class MaskTooLargeError(ValueError):
    """A dense L x L mask was asked for a sequence too long to hold one."""


@dataclass(frozen=True)
class SegmentMask:
    """The mask rows of one segment: its queries over every key up to the segment's end.

    ``mask`` is None for image and noise blocks, whose queries see all of ``[0, segment.end)``
    (intra-block attention plus a causal view of the prefix); the engine can then skip the mask.
    """

    segment: Segment
    mask: torch.Tensor | None  # bool [segment.length, segment.end]

    @property
    def is_full(self) -> bool:
        return self.mask is None

    def dense(self) -> torch.Tensor:
        """The bool [length, end] mask, materialised even when full."""
        if self.mask is None:
            return torch.ones(self.segment.length, self.segment.end, dtype=torch.bool)
        return self.mask


@dataclass(frozen=True)
class MaskTokens:
    """The per-token facts B depends on, for one plan or several packed end to end (a training
    batch): block and group ids are made unique across the plans, and ``sample`` says which
    plan each token is in (attention never crosses samples)."""

    blocks: torch.Tensor  # int32 [L]: the image or noise block of each token, -1 for text
    token_type: torch.Tensor  # int8 [L]: TokenType
    group: torch.Tensor  # int32 [L]: the reference occurrence, -1 outside any group
    sample: torch.Tensor  # int32 [L]: which plan
    noise: torch.Tensor  # bool [L]: in a noise block (its markers included)

    @classmethod
    def of(cls, plans: Sequence[Plan]) -> MaskTokens:
        blocks, types, groups, samples, noise = [], [], [], [], []
        block_base = group_base = 0
        for i, plan in enumerate(plans):
            ids = [j if s.kind != "text" else -1 for j, s in enumerate(plan.segments)]
            lengths = torch.tensor([s.length for s in plan.segments], dtype=torch.long)
            b = torch.tensor(ids, dtype=torch.int32).repeat_interleave(lengths)
            blocks.append(torch.where(b >= 0, b + block_base, b))
            kinds = torch.tensor([s.kind == "noise" for s in plan.segments], dtype=torch.bool)
            noise.append(kinds.repeat_interleave(lengths))
            groups.append(torch.where(plan.group >= 0, plan.group + group_base, plan.group))
            types.append(plan.token_type)
            samples.append(torch.full((plan.length,), i, dtype=torch.int32))
            block_base += len(plan.segments)
            group_base += plan.num_groups
        parts = (blocks, types, groups, samples, noise)
        return cls(*(torch.cat(p) for p in parts))

    @property
    def length(self) -> int:
        return self.blocks.shape[0]

    def to(self, device: torch.device | str | None) -> MaskTokens:
        return MaskTokens(*(t.to(device) for t in dataclasses.astuple(self)))


def formula_terms(
    tokens: MaskTokens, q: torch.Tensor, k: torch.Tensor, *, guard: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """C, M and S at query tokens q and key tokens k (broadcast index tensors); M is all True
    unless ``guard``. C is causal within a sample, less the keys of noise blocks (S alone lets a
    noise block see itself); nothing is seen across samples."""
    causal = (k <= q) & (tokens.sample[q] == tokens.sample[k]) & ~tokens.noise[k]
    blocks = tokens.blocks
    same_block = (blocks[q] == blocks[k]) & (blocks[q] >= 0)
    if guard:
        tt, grp = tokens.token_type, tokens.group
        # plain ints: flex_attention's traced mask_mod mis-compares tensors with IntEnums
        special, image = int(TokenType.SPECIAL), int(TokenType.IMAGE)
        m = ~((tt[q] == special) & (tt[k] == image) & (grp[q] != grp[k]))
    else:
        m = torch.ones_like(causal)
    return causal, m, same_block


def dense_mask(plan: Plan, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> torch.Tensor:
    """bool [L, L]: B = (C AND M) OR S built literally from full C, M and S matrices.

    The reference the efficient forms are tested against. Memory grows as L^2: a few L x L
    bool temporaries at once (about 1.3 GB at the default limit).
    """
    return packed_dense_mask([plan], max_tokens=max_tokens)


def packed_dense_mask(
    plans: Sequence[Plan], *, max_tokens: int = DEFAULT_MAX_TOKENS
) -> torch.Tensor:
    """bool [L, L] over plans packed end to end: each plan's B on the diagonal, False across
    plans. The mask a CPU training forward runs with (flex_attention has no CPU backward)."""
    tokens = MaskTokens.of(plans)
    n = tokens.length
    if n > max_tokens:
        raise MaskTooLargeError(
            f"dense_mask: the plan has {n} tokens, above the limit of {max_tokens} "
            f"(an L x L mask would take {n * n / 2**20:.0f} MB per matrix); use "
            "segment_masks(plan) for long sequences, or pass a larger max_tokens"
        )
    idx = torch.arange(n)
    c, m, s = formula_terms(tokens, idx[:, None], idx[None, :], guard=_guard(plans))
    return (c & m) | s


def _guard(plans: Sequence[Plan]) -> bool:
    """Whether SIGMA's M applies; one batch cannot mix masked and unmasked plans."""
    flags = {p.mask for p in plans}
    if len(flags) != 1:
        raise ValueError("plans packed together must agree on the intra-group mask")
    return flags.pop()


def segment_masks(plan: Plan) -> list[SegmentMask]:
    """One :class:`SegmentMask` per segment, in order, for segment-by-segment prefill.

    A text segment's rows are causal inside the segment and all True over the prefix, except
    that (with ``plan.mask``) its attribute tokens are blocked from other groups' IMAGE keys.
    Image and noise blocks are full. Rows of a segment are False past its end (causality), so
    these masks describe B completely.
    """
    tt, grp = plan.token_type, plan.group
    image_keys = tt == TokenType.IMAGE
    out: list[SegmentMask] = []
    for seg in plan.segments:
        if seg.kind != "text":
            out.append(SegmentMask(seg, None))
            continue
        start, n = seg.start, seg.length
        mask = torch.ones(n, seg.end, dtype=torch.bool)
        mask[:, start:] = torch.ones(n, n, dtype=torch.bool).tril_()
        if plan.mask:
            rows = (tt[start : seg.end] == TokenType.SPECIAL).nonzero().squeeze(1)
            if rows.numel():
                other = grp[: seg.end][None, :] != grp[start + rows][:, None]
                mask[rows] &= ~(image_keys[: seg.end][None, :] & other)
        out.append(SegmentMask(seg, mask))
    return out


def mask_mod(
    plan: Plan, device: torch.device | str | None = None
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``flex_attention`` mask_mod ``(b, h, q_idx, kv_idx) -> bool`` computing B.

    Use with ``create_block_mask(mod, None, None, L, L, device=...)``; pass the same ``device``
    here so the per-token tensors live where the indices do.
    """
    return packed_mask_mod([plan], device)


def packed_mask_mod(
    plans: Sequence[Plan], device: torch.device | str | None = None
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """:func:`mask_mod` over plans packed end to end (a training batch on GPU)."""
    tokens, guard = MaskTokens.of(plans).to(device), _guard(plans)
    last = tokens.length - 1

    def mod(
        b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        # create_block_mask also asks about the padding up to its block size: those indices
        # are read clamped and answered False, so no block holding padding counts as full.
        q, k = q_idx.clamp(max=last), kv_idx.clamp(max=last)
        c, m, s = formula_terms(tokens, q, k, guard=guard)
        return ((c & m) | s) & (q_idx <= last) & (kv_idx <= last)

    return mod
