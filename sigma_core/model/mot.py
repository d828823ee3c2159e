"""Qwen2 mixture-of-transformers (MoT): every per-token module has an understanding copy and a
generation copy (suffix ``_moe_gen``); text and vision markers take the first, VAE latent tokens
the second. Attention is shared across both and runs through torch SDPA, so it works on CPU and
GPU without flash-attn.

Shapes: n query tokens, T cached tokens, d hidden, H query heads, Hkv key/value heads, D head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sigma_core.model.config import LLMConfig


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
    """Which tokens of a query take which expert, as index lists computed once per pass.

    Index lists (not boolean masks) keep the per-layer gather/scatter free of host syncs on GPU;
    ``und``/``gen`` are None when every token takes the other expert, so homogeneous segments
    skip the gather entirely.
    """

    und: torch.Tensor | None  # int64 [n_und]
    gen: torch.Tensor | None  # int64 [n_gen]

    @classmethod
    def from_mask(cls, gen: torch.Tensor) -> Routing:
        gen_idx = gen.nonzero().flatten()
        if gen_idx.numel() == gen.numel():
            return cls(None, gen_idx)
        if gen_idx.numel() == 0:
            return cls(torch.arange(gen.numel(), device=gen.device), None)
        return cls((~gen).nonzero().flatten(), gen_idx)

    def apply(
        self,
        x: torch.Tensor,
        und: Callable[[torch.Tensor], torch.Tensor],
        gen: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """und(x) on understanding tokens, gen(x) on generation tokens, in token order."""
        if self.gen is None:
            return und(x)
        if self.und is None:
            return gen(x)
        a, b = und(x.index_select(0, self.und)), gen(x.index_select(0, self.gen))
        out = a.new_empty((x.shape[0], *a.shape[1:]))
        out.index_copy_(0, self.und, a)
        out.index_copy_(0, self.gen, b)
        return out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Default (unscaled) RoPE, computed in fp32 as transformers' Qwen2 does."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta**exponent), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]  # [n, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [n, D]
        return emb.cos().to(dtype), emb.sin().to(dtype)


@dataclass
class KVCache:
    """Keys and values per layer, stored after qk-norm and RoPE, with spare capacity at the end.

    ``length`` tokens are the context. A denoising pass writes its keys into the spare slots
    after ``length`` and attends over them, without moving ``length``: the context is never
    changed and never recomputed.
    """

    keys: list[torch.Tensor]  # per layer [Hkv, capacity, D]
    values: list[torch.Tensor]
    length: int = 0
    position: int = 0  # the rope position of the next token

    @classmethod
    def empty(
        cls, cfg: LLMConfig, capacity: int, *, dtype: torch.dtype, device: torch.device
    ) -> KVCache:
        shape = (cfg.num_key_value_heads, capacity, cfg.head_dim)
        n = cfg.num_hidden_layers
        return cls(
            [torch.empty(shape, dtype=dtype, device=device) for _ in range(n)],
            [torch.empty(shape, dtype=dtype, device=device) for _ in range(n)],
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    def prefix(self, length: int, position: int, capacity: int) -> KVCache:
        """A copy of the first ``length`` tokens, with room for ``capacity`` in all."""

        def grow(t: torch.Tensor) -> torch.Tensor:
            out = t.new_empty((t.shape[0], capacity, t.shape[2]))
            out[:, :length] = t[:, :length]
            return out

        return KVCache(
            [grow(k) for k in self.keys], [grow(v) for v in self.values], length, position
        )


class MoTAttention(nn.Module):
    """Grouped-query attention with qk-norm, one projection set per expert."""

    def __init__(self, cfg: LLMConfig, layer_idx: int) -> None:
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.layer_idx = layer_idx
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
            setattr(self, "q_norm" + suffix, RMSNorm(hd, cfg.rms_norm_eps))
            setattr(self, "k_norm" + suffix, RMSNorm(hd, cfg.rms_norm_eps))

    def _qkv(self, x: torch.Tensor, suffix: str) -> torch.Tensor:
        """[n, d] -> [n, H + 2 Hkv, D]: normed q, normed k, v for one expert."""
        hd = self.head_dim
        q = getattr(self, "q_norm" + suffix)(
            getattr(self, "q_proj" + suffix)(x).unflatten(-1, (-1, hd))
        )
        k = getattr(self, "k_norm" + suffix)(
            getattr(self, "k_proj" + suffix)(x).unflatten(-1, (-1, hd))
        )
        v = getattr(self, "v_proj" + suffix)(x).unflatten(-1, (-1, hd))
        return torch.cat((q, k, v), dim=1)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        route: Routing,
        cache: KVCache,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """x [n, d] -> [n, d]. Keys/values go to the cache slots [length, length + n); queries
        attend over [0, length + n) under ``attn_mask`` (bool [n, length + n]; None = all)."""
        n = x.shape[0]
        qkv = route.apply(x, lambda t: self._qkv(t, ""), lambda t: self._qkv(t, "_moe_gen"))
        q, k, v = qkv.split((self.num_heads, self.num_kv_heads, self.num_kv_heads), dim=1)
        cos, sin = (r[:, None, :] for r in rope)  # [n, 1, D]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        start, end = cache.length, cache.length + n
        if end > cache.capacity:
            raise RuntimeError(f"KV cache overflow: {end} > capacity {cache.capacity}")
        kc, vc = cache.keys[self.layer_idx], cache.values[self.layer_idx]
        kc[:, start:end] = k.transpose(0, 1)
        vc[:, start:end] = v.transpose(0, 1)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],  # [1, H, n, D]
            kc[None, :, :end],  # [1, Hkv, T + n, D]
            vc[None, :, :end],
            attn_mask=attn_mask,
            enable_gqa=True,
        )[0].transpose(0, 1)  # [n, H, D]
        out = out.reshape(n, -1)
        return route.apply(out, self.o_proj, self.o_proj_moe_gen)


class MoTDecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = MoTAttention(cfg, layer_idx)
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
        cache: KVCache,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        h = route.apply(x, self.input_layernorm, self.input_layernorm_moe_gen)
        x = x + self.self_attn(h, rope, route, cache, attn_mask)
        h = route.apply(x, self.post_attention_layernorm, self.post_attention_layernorm_moe_gen)
        return x + route.apply(h, self.mlp, self.mlp_moe_gen)


class Qwen2MoT(nn.Module):
    """The decoder stack. ``forward`` runs one query block against a KV cache."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        gen: torch.Tensor,
        cache: KVCache,
        attn_mask: torch.Tensor | None = None,
        *,
        commit: bool,
    ) -> torch.Tensor:
        """Run query block ``x`` [n, d] at rope ``positions`` [n]; ``gen`` [n] marks
        generation-expert tokens. With ``commit`` the block joins the cached context (prefill);
        without, it only reads the cache (a denoising pass). Returns final-normed states."""
        route = Routing.from_mask(gen)
        rope = self.rotary_emb(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, rope, route, cache, attn_mask)
        if commit:
            cache.length += x.shape[0]
        return route.apply(x, self.norm, self.norm_moe_gen)


class LanguageModel(nn.Module):
    """Holds the decoder as ``.model`` so parameter names match ``language_model.model.*``."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.model = Qwen2MoT(cfg)
