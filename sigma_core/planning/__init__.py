"""Planning: the tokenizer check, the interleaved token plan, and SIGMA's mask in the forms the
engine uses. Pure functions of a composition and a tokenizer; no model, no weights.

Names load on first use. Importing this package, :func:`build_plan`, :class:`TokenIds`, the
tokenizer helpers and :func:`load_tiny_tokenizer` / :func:`load_fast_tokenizer` import neither
torch nor transformers; the plan's per-token tensors and the ``mask`` forms import torch, and
:func:`load_tokenizer` imports transformers.
"""

from __future__ import annotations

from sigma_core.lazy import lazy_exports

_EXPORTS = {
    "SegmentMask": "sigma_core.planning.mask",
    "dense_mask": "sigma_core.planning.mask",
    "mask_mod": "sigma_core.planning.mask",
    "MaskTokens": "sigma_core.planning.mask",
    "packed_dense_mask": "sigma_core.planning.mask",
    "packed_mask_mod": "sigma_core.planning.mask",
    "segment_masks": "sigma_core.planning.mask",
    "Expert": "sigma_core.planning.sequence",
    "Plan": "sigma_core.planning.sequence",
    "Segment": "sigma_core.planning.sequence",
    "TokenType": "sigma_core.planning.sequence",
    "build_plan": "sigma_core.planning.sequence",
    "check_bounds": "sigma_core.planning.sequence",
    "tokenize_text": "sigma_core.planning.sequence",
    "QWEN25_BASE_VOCAB": "sigma_core.planning.tokenizer",
    "QWEN25_SIGMA_FIRST_ID": "sigma_core.planning.tokenizer",
    "SigmaTokenizer": "sigma_core.planning.tokenizer",
    "TokenIds": "sigma_core.planning.tokenizer",
    "add_sigma_tokens": "sigma_core.planning.tokenizer",
    "control_tokens": "sigma_core.planning.tokenizer",
    "load_fast_tokenizer": "sigma_core.planning.tokenizer",
    "load_tiny_tokenizer": "sigma_core.planning.tokenizer",
    "load_tokenizer": "sigma_core.planning.tokenizer",
    "make_tiny_tokenizer": "sigma_core.planning.tokenizer",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
