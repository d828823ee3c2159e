"""Sequence layouts: where the reference blocks sit, and SIGMA's phantom ViT block.

SIGMA's checkpoint was trained on one sequence and is run, by its released inferencer, on
another. SIGMA's data code (SepPhotoTokenIterableDataset.parse_row with
PackedDataset.pack_sequence, run with ``--visual_und False``) emits, for every reference:

- the VAE block ``<|vision_start|>`` latents ``<|vision_end|>`` at rope p, as at inference;
- then a ViT block ``<|vision_start|>`` N tokens ``<|vision_end|>`` at rope p + 1, full
  attention inside, through the understanding expert. The ViT is off, so the N inputs are
  exactly zero; the packer still emits the block;
- rope p + 2 for what follows. A dropped block (CFG dropout: VAE 0.3, ViT 0.3 per reference)
  still advances rope by one.

The released inferencer omits the ViT block and advances rope by 1. The three layouts (specified
beside the other settings, as :data:`sigma_core.inputs.settings.LAYOUTS`; this module holds the
phantom block's arithmetic):

======================  ==============================  ========================================
layout                  rope per reference              after each reference's VAE block
======================  ==============================  ========================================
``inference``           +1                              nothing (SIGMA's inferencer; default)
``training``            +2                              the phantom ViT block, at p + 1
``training-no-vit``     +2                              a rope hole (the ViT block dropped)
======================  ==============================  ========================================

**The phantom block, compact.** Its N inputs are identical, sit at one rope position and have
identical mask rows and columns, so in every layer they have identical keys and values. To any
query that sees them, N copies of a key with logit s weigh N e^s = e^(s + ln N): they act as
ONE key whose logit is raised by ln N. So the block is built as ``<|vision_start|>``, one
zero-input token, ``<|vision_end|>`` (3 tokens instead of N + 2, about 1,000), and that token's
key carries a bias of ln N for every query (:attr:`Plan.key_bias`; the model adds it to the
attention logits). The tests materialise the N tokens (tests/phantoms.py) as the reference the
compact form is checked against: equal in fp32 to float rounding; in bf16 the bias is rounded
to bf16.

**N** follows SIGMA's ViT transform (its training config: ``vit_image_transform_args`` with
max 518, min 224, stride 14; ``ImageTransform``'s pixel cap 14*14*9*1024), applied to the
reference as placed (after its crop): (W', H') = MaxLongEdgeMinShortEdgeResize(W, H), and
N = (W' / 14) * (H' / 14). A 768x512 reference gives 518x350, N = 37 * 25 = 925.

**The mask.** The phantom token is an IMAGE token of its reference's group: an attribute token
of another group cannot see it. Its markers are PLAIN, like every block's.

**CFG contexts** (:mod:`sigma_core.runtime.contexts`), each a case SIGMA's training dropout
produces:

- cfg_text: gen without its last text piece, as the released inferencer builds it. Training
  drops a text piece without advancing rope, which is what a trailing piece cut off is.
- cfg_img: the text pieces only. The released inferencer counts their positions over text
  alone, a sequence training never produced; in the training layouts each text piece keeps
  its position, so every reference leaves a rope hole of 2: both of its blocks dropped (9% of
  references in training). The phantom block goes too: image CFG contrasts gen with the
  references absent, and a phantom block without its VAE block (21% in training) is still a
  trace of a reference (its N follows the reference's size).

In bf16 the bias is added in the model dtype, as SDPA takes its mask in the query's dtype
(ln 925 = 6.8298 becomes 6.84375): at most 0.016 in the logit, under 1.6% in the weight of that
one key. fp32 keeps it to 1e-7.
"""

from __future__ import annotations

import math

from sigma_core.geometry import MAX_PIXELS, vae_size

# SIGMA's ViT transform (data/configs: vit_image_transform_args; patch 14)
VIT_MAX_SIDE, VIT_MIN_SIDE, VIT_PATCH = 518, 224, 14


def vit_size(width: int, height: int) -> tuple[int, int]:
    """(W', H'): SIGMA's ViT resize of a (width, height) reference, arithmetic as BAGEL's."""
    return vae_size(
        width,
        height,
        max_size=VIT_MAX_SIDE,
        min_size=VIT_MIN_SIDE,
        stride=VIT_PATCH,
        max_pixels=MAX_PIXELS,
    )


def vit_grid(width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of ViT patches of a reference: N = rows * cols phantom tokens."""
    w, h = vit_size(width, height)
    return h // VIT_PATCH, w // VIT_PATCH


def phantom_bias(tokens: int, inside: int) -> float:
    """The logit bias of each of ``inside`` tokens standing for ``tokens`` identical ones."""
    return math.log(tokens / inside)
