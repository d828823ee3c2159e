"""Qwen2 mixture-of-transformers (MoT): every per-token module has an understanding copy and a
generation copy (suffix ``_moe_gen``); text and vision markers take the first, VAE latent tokens
the second. Attention is shared across both and runs through torch SDPA, so it works on CPU and
GPU without flash-attn.

Shapes: B batch rows, n query tokens, C cache slots, d hidden, H query heads, Hkv key/value
heads, D head dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from torch.utils.checkpoint import checkpoint

from sigma_core.model.cache import KVCache
from sigma_core.model.config import LLMConfig

UND, GEN = 0, 1  # the two experts


class RMSNorm(nn.Module):
    """Qwen2's RMSNorm: normalise in fp32, scale in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass(frozen=True)
class Routing:
    """Which tokens of a block take which expert, as contiguous runs known on the host.

    ``runs`` are (start, end, expert) in token order and cover the block. They are fixed by the
    block's layout (text: one understanding run; an image block: marker, latents, marker), so
    routing is made once per block shape, holds no tensors and costs no host sync: each expert
    reads its runs as slices (a view when it has one run) and the outputs are put back in order.
    """

    runs: tuple[tuple[int, int, int], ...]
    # Training the generation branch alone: every understanding-expert output is detached, so
    # text and markers act as a fixed context and no gradient runs through them (BAGEL's
    # freeze_und). The forward numbers are unchanged.
    frozen_und: bool = False

    @classmethod
    def uniform(cls, n: int, expert: int = UND) -> Routing:
        return cls(((0, n, expert),))

    @classmethod
    def block(cls, n: int) -> Routing:
        """<|vision_start|> latents <|vision_end|>: markers through und, latents through gen."""
        return cls(((0, 1, UND), (1, n - 1, GEN), (n - 1, n, UND)))

    @classmethod
    def from_experts(cls, experts: Sequence[int], *, frozen_und: bool = False) -> Routing:
        """Run-length encode a per-token expert list (host ints)."""
        runs: list[tuple[int, int, int]] = []
        for i, e in enumerate(experts):
            if runs and runs[-1][2] == int(e):
                runs[-1] = (runs[-1][0], i + 1, int(e))
            else:
                runs.append((i, i + 1, int(e)))
        return cls(tuple(runs), frozen_und)

    def apply(
        self,
        x: torch.Tensor,
        und: Callable[[torch.Tensor], torch.Tensor],
        gen: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """und(x) on understanding tokens, gen(x) on generation tokens, in token order.
        ``x`` is [B, n, ...]; tokens are dim 1."""
        if self.frozen_und:
            und = _detached(und)
        if len(self.runs) == 1:
            return (gen if self.runs[0][2] == GEN else und)(x)
        outputs = {}
        for expert, fn in ((UND, und), (GEN, gen)):
            parts = [x[:, s:e] for s, e, ex in self.runs if ex == expert]
            if parts:
                outputs[expert] = fn(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
        pieces, taken = [], {UND: 0, GEN: 0}
        for s, e, expert in self.runs:
            pieces.append(outputs[expert][:, taken[expert] : taken[expert] + e - s])
            taken[expert] += e - s
        return torch.cat(pieces, dim=1)


def _detached(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: fn(t).detach()


@dataclass(frozen=True)
class Span:
    """Where one forward pass writes and reads in a cache: the block's keys and values go to
    slots [start, start + n) of every row, and queries attend over slots [0, end) under ``mask``
    (broadcastable to [B, 1, n, end]: bool, or additive float logits when some key carries a
    bias (see :func:`logit_mask`); None lets every query see every slot).

    A packed training forward has no cache: the block attends to itself, and ``mask`` may be a
    flex_attention :class:`BlockMask` (GPU) instead of a dense one."""

    start: int
    end: int
    mask: torch.Tensor | BlockMask | None = None
    key_bias: torch.Tensor | None = None  # float32 [end]: logit bias per key, with a BlockMask

    def to(self, device: torch.device) -> Span:
        mask = None if self.mask is None else self.mask.to(device)
        bias = None if self.key_bias is None else self.key_bias.to(device)
        return Span(self.start, self.end, mask, bias)


def logit_mask(mask: torch.Tensor | None, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask [..., S] (True: may attend; None: every key) and each key's logit bias
    [S] as one additive mask for SDPA: the bias where attention is allowed, -inf elsewhere."""
    bias = bias.to(dtype)
    if mask is None:
        return bias
    return torch.where(mask, bias, torch.tensor(float("-inf"), dtype=dtype, device=bias.device))


_compiled_flex: Callable[..., torch.Tensor] | None = None


def _flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """flex_attention, compiled once on GPU (its fast path); eager on CPU, forward only.
    ``key_bias`` [S] is added to every logit on that key (a score_mod)."""
    global _compiled_flex
    score_mod = None
    if key_bias is not None:

        def score_mod(
            score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor,
            kv_idx: torch.Tensor,
        ) -> torch.Tensor:  # fmt: skip
            return score + key_bias[kv_idx]

    if q.device.type != "cuda":
        return flex_attention(q, k, v, score_mod, block_mask=mask, enable_gqa=True)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)  # packed lengths vary: dynamic shapes
    return _compiled_flex(q, k, v, score_mod, block_mask=mask, enable_gqa=True)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Default (unscaled) RoPE, computed in fp32 as transformers' Qwen2 does."""

    inv_freq: torch.Tensor  # [D/2], a non-persistent buffer

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta**exponent), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """positions [..., n] -> cos, sin [..., n, 1, D], to broadcast over [B, n, H, D]."""
        freqs = positions.float()[..., None] * self.inv_freq.float()  # [..., n, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[..., None, :]  # [..., n, 1, D]
        return emb.cos().to(dtype), emb.sin().to(dtype)


class MoTAttention(nn.Module):
    """Grouped-query attention with qk-norm, one projection set per expert."""

    # Set by name in __init__ like q/k/v and the norms; Modules, not Linears: a quantized mode
    # or LoRA may replace them.
    o_proj: nn.Module
    o_proj_moe_gen: nn.Module

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            hd,
        )
        for suffix in ("", "_moe_gen"):
            setattr(self, "q_proj" + suffix, nn.Linear(d, self.num_heads * hd, bias=True))
            setattr(self, "k_proj" + suffix, nn.Linear(d, self.num_kv_heads * hd, bias=True))
            setattr(self, "v_proj" + suffix, nn.Linear(d, self.num_kv_heads * hd, bias=True))
            setattr(self, "o_proj" + suffix, nn.Linear(self.num_heads * hd, d, bias=False))
            norm = (lambda: RMSNorm(hd, cfg.rms_norm_eps)) if cfg.qk_norm else nn.Identity
            setattr(self, "q_norm" + suffix, norm())
            setattr(self, "k_norm" + suffix, norm())

    def _qkv(self, x: torch.Tensor, suffix: str) -> torch.Tensor:
        """[B, n, d] -> [B, n, H + 2 Hkv, D]: normed q, normed k, v for one expert."""
        hd = self.head_dim
        q = getattr(self, "q_norm" + suffix)(
            getattr(self, "q_proj" + suffix)(x).unflatten(-1, (-1, hd))
        )
        k = getattr(self, "k_norm" + suffix)(
            getattr(self, "k_proj" + suffix)(x).unflatten(-1, (-1, hd))
        )
        v = getattr(self, "v_proj" + suffix)(x).unflatten(-1, (-1, hd))
        return torch.cat((q, k, v), dim=2)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        route: Routing,
        keys: torch.Tensor | None,
        values: torch.Tensor | None,
        span: Span,
    ) -> torch.Tensor:
        """x [B, n, d] -> [B, n, d]. Keys and values go to ``keys``/``values`` [B, Hkv, C, D] at
        span.start; queries attend over [0, span.end). Without a cache (``keys`` None, a packed
        training forward) the block attends over its own keys."""
        b, n, _ = x.shape
        qkv = route.apply(x, lambda t: self._qkv(t, ""), lambda t: self._qkv(t, "_moe_gen"))
        q, k, v = qkv.split((self.num_heads, self.num_kv_heads, self.num_kv_heads), dim=2)
        cos, sin = rope  # [B or 1, n or 1, 1, D]
        q = (q * cos + rotate_half(q) * sin).transpose(1, 2)  # [B, H, n, D]
        k = (k * cos + rotate_half(k) * sin).transpose(1, 2)  # [B, Hkv, n, D]
        v = v.transpose(1, 2)
        if keys is not None and values is not None:
            keys[:, :, span.start : span.start + n] = k
            values[:, :, span.start : span.start + n] = v
            k, v = keys[:, :, : span.end], values[:, :, : span.end]  # [B, Hkv, end, D]
        if isinstance(span.mask, BlockMask):
            out = _flex(q, k, v, span.mask, span.key_bias)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=span.mask, enable_gqa=True)
        out = out.transpose(1, 2)  # [B, n, H, D]
        return route.apply(out.reshape(b, n, -1), self.o_proj, self.o_proj_moe_gen)


class MoTDecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.self_attn = MoTAttention(cfg)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.mlp_moe_gen = MLP(cfg.hidden_size, cfg.intermediate_size)
        eps = cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.input_layernorm_moe_gen = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm_moe_gen = RMSNorm(cfg.hidden_size, eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        route: Routing,
        keys: torch.Tensor | None,
        values: torch.Tensor | None,
        span: Span,
    ) -> torch.Tensor:
        h = route.apply(x, self.input_layernorm, self.input_layernorm_moe_gen)
        x = x + self.self_attn(h, rope, route, keys, values, span)
        h = route.apply(x, self.post_attention_layernorm, self.post_attention_layernorm_moe_gen)
        return x + route.apply(h, self.mlp, self.mlp_moe_gen)


class Qwen2MoT(nn.Module):
    """The decoder stack. ``forward`` runs one query block against a KV cache."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        # Recompute each layer in backward instead of keeping its activations (training only).
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        route: Routing,
        cache: KVCache | None,
        span: Span,
    ) -> torch.Tensor:
        """Run query block ``x`` [B, n, d] with ``rope`` (cos, sin from :attr:`rotary_emb`)
        against the B rows of ``cache``, writing its keys and values at ``span``. Returns the
        final-normed hidden states [B, n, d]. Cache bookkeeping is the caller's. With no cache
        (a packed training forward) the block attends to itself under ``span.mask``.

        Under a device map each layer runs where its KV cache is: the hidden states, rope and
        mask follow it there (a host-side check, no sync) and come back at the end."""
        home = x.device
        if cache is None:
            for layer in self.layers:
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(layer, x, rope, route, None, None, span, use_reentrant=False)
                else:
                    x = layer(x, rope, route, None, None, span)
            return route.apply(x, self.norm, self.norm_moe_gen)
        for layer, keys, values in zip(self.layers, cache.keys, cache.values, strict=True):
            if keys.device != x.device:
                x, span = x.to(keys.device), span.to(keys.device)
                rope = (rope[0].to(keys.device), rope[1].to(keys.device))
            x = layer(x, rope, route, keys, values, span)
        return route.apply(x.to(home), self.norm, self.norm_moe_gen)


class LanguageModel(nn.Module):
    """Holds the decoder as ``.model`` so parameter names match ``language_model.model.*``."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.model = Qwen2MoT(cfg)
