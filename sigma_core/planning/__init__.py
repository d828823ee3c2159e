"""Planning: the tokenizer check, the interleaved token plan, and SIGMA's mask in the forms the
engine uses. Pure functions of a composition and a tokenizer; no model, no weights."""

from sigma_core.planning.mask import SegmentMask, dense_mask, mask_mod, segment_masks
from sigma_core.planning.sequence import Expert, Plan, Segment, TokenType, build_plan
from sigma_core.planning.tokenizer import (
    QWEN25_BASE_VOCAB,
    QWEN25_SIGMA_FIRST_ID,
    TokenIds,
    add_sigma_tokens,
    load_tiny_tokenizer,
    load_tokenizer,
    make_tiny_tokenizer,
)

__all__ = [
    "QWEN25_BASE_VOCAB",
    "QWEN25_SIGMA_FIRST_ID",
    "Expert",
    "Plan",
    "Segment",
    "SegmentMask",
    "TokenIds",
    "TokenType",
    "add_sigma_tokens",
    "build_plan",
    "dense_mask",
    "load_tiny_tokenizer",
    "load_tokenizer",
    "make_tiny_tokenizer",
    "mask_mod",
    "segment_masks",
]
