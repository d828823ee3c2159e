"""Planning: the tokenizer check, the interleaved token plan, and SIGMA's mask in the forms the
engine uses. Pure functions of a composition and a tokenizer; no model, no weights.

Names load on first use. Importing this package, :func:`build_plan`, :class:`TokenIds`, the
tokenizer helpers and :func:`load_tiny_tokenizer` / :func:`load_fast_tokenizer` import neither
torch nor transformers; the plan's per-token tensors and the ``mask`` forms import torch, and
:func:`load_tokenizer` imports transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sigma_core.lazy import lazy_package

if TYPE_CHECKING:  # the names; they load on first use (sigma_core.lazy)
    from sigma_core.planning.mask import (
        MaskTokens as MaskTokens,
        SegmentMask as SegmentMask,
        dense_mask as dense_mask,
        mask_mod as mask_mod,
        packed_dense_mask as packed_dense_mask,
        packed_mask_mod as packed_mask_mod,
        segment_masks as segment_masks,
    )
    from sigma_core.planning.sequence import (
        Expert as Expert,
        Plan as Plan,
        Segment as Segment,
        TokenType as TokenType,
        build_plan as build_plan,
        check_bounds as check_bounds,
        tokenize_text as tokenize_text,
    )
    from sigma_core.planning.tokenizer import (
        QWEN25_BASE_VOCAB as QWEN25_BASE_VOCAB,
        QWEN25_SIGMA_FIRST_ID as QWEN25_SIGMA_FIRST_ID,
        SigmaTokenizer as SigmaTokenizer,
        TokenIds as TokenIds,
        add_sigma_tokens as add_sigma_tokens,
        control_tokens as control_tokens,
        load_fast_tokenizer as load_fast_tokenizer,
        load_tiny_tokenizer as load_tiny_tokenizer,
        load_tokenizer as load_tokenizer,
        make_tiny_tokenizer as make_tiny_tokenizer,
    )

if not TYPE_CHECKING:  # type checkers see the imports above; a misspelt name is an error
    __all__, __getattr__, __dir__ = lazy_package(__name__)
