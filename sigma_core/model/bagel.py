"""BAGEL's generation model: the MoT decoder plus the connectors between VAE latents and the LLM,
and the model's side of generation: embedding text and latent blocks, routing them to the
experts, and keeping the KV cache's books.

A latent token enters the LLM as vae2llm(latent) + time_embedder(t) + latent_pos_embed[pos]
(+ W_tau(attributes) for SIGMA's reference tokens); llm2vae reads the velocity back out. The
SigLIP ViT and lm_head of the checkpoint are not built: SIGMA conditions on VAE tokens only.

The API, in the order a generation uses it (shapes: B context rows, m latent tokens, d hidden):

- :meth:`BagelGenerator.prefill_text`, :meth:`BagelGenerator.prefill_image` and
  :meth:`BagelGenerator.prefill_phantom` append one segment to one row of a :class:`KVCache`
  and advance that row's length and rope position.
- :meth:`BagelGenerator.denoise_context` gathers, once per run, what every denoising pass over
  some rows of the cache needs (rope, key-padding mask, marker and position embeddings).
- :meth:`BagelGenerator.velocity` is one denoising pass: noise tokens [m, 64] at t against B
  rows at once, velocities [B, m, 64]. Fixed shapes and no host sync, so it compiles whole.

Training runs the whole sequence at once instead: :meth:`BagelGenerator.packed_hidden` and
:meth:`BagelGenerator.packed_velocity` take a :class:`PackedSequence` (samples laid end to end,
one mask over all of them) and give the same numbers the prefill and the denoising pass give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sigma_core.geometry import LATENT_CHANNELS, LATENT_PATCH, MAX_LATENT_GRID, MAX_SIDE
from sigma_core.model.attribute_projection import AttributeProjection, attribute_multi_hot
from sigma_core.model.cache import KVCache
from sigma_core.model.config import LLMConfig
from sigma_core.model.mot import BlockMask, LanguageModel, Qwen2MoT, Routing, Span, logit_mask

# W_tau (sigma_core.model.attribute_projection): one row per attribute token, in ATTRIBUTES
# order. The released SIGMA checkpoint has no such tensor; W_tau is then exactly zero.
ATTRIBUTE_EMBED_KEY = "attribute_embed.weight"


class TimestepEmbedder(nn.Module):
    """DiT-style: a 256-dim [cos, sin] frequency embedding of t in [0, 1] (no x1000), then MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]
        emb = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
        return self.mlp(emb.to(next(self.mlp.parameters()).dtype))  # the first Linear's weight


def sincos_2d_table(hidden: int, grid: int) -> torch.Tensor:
    """The fixed 2D sin-cos table [grid * grid, hidden] (MAE's recipe, as BAGEL initialises it).
    Row r = i * grid + j: the first half encodes j, the second half i."""
    omega = 1.0 / 10000 ** (np.arange(hidden // 4, dtype=np.float64) / (hidden / 4))
    coords = np.arange(grid, dtype=np.float32)
    col, row = np.meshgrid(coords, coords)  # col[i, j] = j, row[i, j] = i
    halves = []
    for c in (col.reshape(-1), row.reshape(-1)):
        out = np.einsum("m,d->md", c, omega)
        halves.append(np.concatenate([np.sin(out), np.cos(out)], axis=1))
    return torch.from_numpy(np.concatenate(halves, axis=1)).float()


class LatentPositionEmbedding(nn.Module):
    """A lookup into the fixed table; the table itself is loaded from the checkpoint."""

    def __init__(self, grid: int, hidden: int) -> None:
        super().__init__()
        self.grid = grid
        self.pos_embed = nn.Parameter(torch.zeros(grid * grid, hidden), requires_grad=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]


@dataclass(frozen=True)
class DenoiseContext:
    """What every denoising pass of one run needs and that does not change between passes.

    Made once by :meth:`BagelGenerator.denoise_context` for a set of cache rows; the block of
    n = m + 2 tokens writes its keys at slot ``start`` (after the longest row) of every row.
    """

    cache: KVCache  # the rows the batch runs against
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin [B, 1, 1, D]: one position per row
    span: Span  # write at the shared slot; key-padding mask for rows shorter than the longest
    routing: Routing  # marker, latents, marker
    pos_embed: torch.Tensor  # [m, d] latent position embeddings of the output grid
    markers: torch.Tensor  # [2, d] <|vision_start|>, <|vision_end|> embeddings


@dataclass(frozen=True)
class PackedSequence:
    """Samples laid end to end as one row of L tokens, for a training forward (BAGEL's packed
    batch). n latent tokens sit among the L; k of them are noised targets carrying the loss."""

    token_ids: torch.Tensor  # int64 [L]; < 0 where a latent (-1) or phantom (-2) token sits
    position_ids: torch.Tensor  # int64 [L]; rope positions, restarting with every sample
    routing: Routing  # which expert each of the L tokens takes
    mask: torch.Tensor | BlockMask  # bool [L, L] (True: may attend), or flex_attention's form
    latent_index: torch.Tensor  # int64 [n]; where the latent tokens sit among the L
    latents: torch.Tensor  # [n, 64]: clean references and noised targets, in sequence order
    timesteps: torch.Tensor  # [n]; 0 for a clean reference, the target's t for its tokens
    latent_position_ids: torch.Tensor  # int64 [n]; rows of the latent position table
    attributes: torch.Tensor | None  # [n, A] multi-hot W_tau rows; None when none apply
    loss_index: torch.Tensor  # int64 [k]; which of the n latent tokens carry the loss
    # float32 [L]: each key's logit bias (ln N at compact phantom tokens); None when all zero
    key_bias: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.token_ids.shape[0]


class BagelGenerator(nn.Module):
    """The modules of ``Bagel`` that generation needs, under the same parameter names.

    ``vision_token_ids`` are the tokenizer's <|vision_start|> and <|vision_end|> ids, which
    frame every latent block.
    """

    def __init__(
        self,
        cfg: LLMConfig,
        *,
        latent_channels: int = LATENT_CHANNELS,
        max_latent_size: int = MAX_LATENT_GRID,
        attribute_embed: bool = False,
        vision_token_ids: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__()
        self.config = cfg
        self.latent_channels = latent_channels
        self.max_latent_size = max_latent_size
        self.vision_token_ids = vision_token_ids
        patch_dim = LATENT_PATCH**2 * latent_channels
        d = cfg.hidden_size
        self.language_model = LanguageModel(cfg)
        self.time_embedder = TimestepEmbedder(d)
        self.vae2llm = nn.Linear(patch_dim, d)
        self.llm2vae = nn.Linear(d, patch_dim)
        self.latent_pos_embed = LatentPositionEmbedding(max_latent_size, d)
        self.attribute_embed = AttributeProjection(d) if attribute_embed else None
        # Set when the weights live elsewhere (sequential offload keeps them on the meta device
        # between forwards): where inputs, the KV cache and every new tensor go.
        self.execution_device: torch.device | None = None

    @property
    def llm(self) -> Qwen2MoT:
        return self.language_model.model

    @property
    def dtype(self) -> torch.dtype:
        return self.vae2llm.weight.dtype

    @property
    def device(self) -> torch.device:
        """Where the packed sequence is built (the first device of a device map)."""
        return self.execution_device or self.vae2llm.weight.device

    def layer_devices(self) -> list[torch.device]:
        """Where each decoder layer computes; its KV cache lives there too."""
        if self.execution_device is not None:
            return [self.execution_device] * len(self.llm.layers)
        return [layer.get_parameter("input_layernorm.weight").device for layer in self.llm.layers]

    # ------------------------------------------------------------------------- embeddings

    def latent_position_ids(self, grid: tuple[int, int]) -> torch.Tensor:
        """Row-major ids into the position table: i * max_latent_size + j."""
        rows, cols = grid
        if rows > self.max_latent_size or cols > self.max_latent_size:
            raise ValueError(
                f"a {rows}x{cols} latent grid exceeds the {self.max_latent_size}-token position "
                f"table; images are at most {MAX_SIDE} px per side"
            )
        i = torch.arange(rows, device=self.device)[:, None]
        j = torch.arange(cols, device=self.device)[None, :]
        return (i * self.max_latent_size + j).flatten()

    def attribute_hot(self, attributes: tuple[str, ...]) -> torch.Tensor | None:
        """W_tau's input [A] for SIGMA's attribute tokens; None when there is no W_tau or none."""
        if not attributes or self.attribute_embed is None:
            return None
        return attribute_multi_hot(attributes, self.device)

    def embed_latent_block(
        self,
        tokens: torch.Tensor,
        t: torch.Tensor,
        pos_embed: torch.Tensor,
        markers: torch.Tensor,
        attributes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """<|vision_start|> latents <|vision_end|> as LLM inputs [1, m + 2, d].

        ``tokens`` [m, 64] at timestep ``t`` (0 for a clean reference), ``pos_embed`` [m, d],
        ``markers`` [2, d]; ``attributes`` [A] (multi-hot) adds W_tau to every latent token.
        """
        x = self.vae2llm(tokens.to(self.dtype)) + self.time_embedder(t.reshape(1)) + pos_embed
        if attributes is not None:
            assert self.attribute_embed is not None, "attributes come from attribute_hot: W_tau"
            x = x + self.attribute_embed(attributes)
        return torch.cat((markers[:1], x, markers[1:]))[None]

    def vision_markers(self) -> torch.Tensor:
        """The <|vision_start|> and <|vision_end|> embeddings [2, d] that frame a latent block."""
        return self.llm.embed_tokens(torch.tensor(self.vision_token_ids, device=self.device))

    # ------------------------------------------------------------------------- prefill

    def prefill_text(
        self,
        cache: KVCache,
        row: int,
        token_ids: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Append text ``token_ids`` [n] to ``row``: understanding expert, rope +1 per token.

        ``mask`` (bool [n, length + n]) says which cached and new tokens each one sees; by
        default text is causal. Returns the final hidden states [1, n, d].
        """
        n, start, pos = token_ids.shape[0], cache.lengths[row], cache.positions[row]
        if mask is None:
            mask = torch.ones(n, start + n, dtype=torch.bool, device=self.device).tril(start)
        positions = torch.arange(pos, pos + n, device=self.device)
        h = self._prefill(
            cache, row, self.llm.embed_tokens(token_ids)[None], positions, Routing.uniform(n), mask
        )
        cache.advance(row, n, n)
        return h

    def prefill_image(
        self,
        cache: KVCache,
        row: int,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        attributes: tuple[str, ...] = (),
    ) -> torch.Tensor:
        """Append a clean latent block (``tokens`` [m, 64] on ``grid``, t = 0) to ``row``.

        The block shares one rope position and sees itself and everything before it; it then
        advances the rope by one. ``attributes`` add W_tau when the checkpoint has it.
        Returns the final hidden states [1, m + 2, d].
        """
        x = self.embed_latent_block(
            tokens,
            torch.zeros(1, device=self.device),
            self.latent_pos_embed(self.latent_position_ids(grid)),
            self.vision_markers(),
            self.attribute_hot(attributes),
        )
        n = x.shape[1]
        positions = torch.full((n,), cache.positions[row], device=self.device)
        h = self._prefill(cache, row, x, positions, Routing.block(n), None)
        cache.advance(row, n, 1)
        return h

    def prefill_phantom(
        self, cache: KVCache, row: int, phantom_tokens: int, inside: int = 1
    ) -> torch.Tensor:
        """Append SIGMA's phantom ViT block to ``row``: <|vision_start|>, ``inside`` zero-input
        tokens standing for ``phantom_tokens`` identical ones, <|vision_end|>; understanding
        expert, one rope position, full attention inside, then rope +1. Each inside token's key
        carries the logit bias ln(phantom_tokens / inside) for every query that sees it, itself
        and its markers included (see sigma_core.planning.layout). Returns [1, inside + 2, d].
        """
        markers = self.vision_markers()
        zeros = markers.new_zeros(inside, markers.shape[1])
        x = torch.cat((markers[:1], zeros, markers[1:]))[None]
        n, start = inside + 2, cache.lengths[row]
        cache.set_bias(row, start + 1, inside, math.log(phantom_tokens / inside))
        positions = torch.full((n,), cache.positions[row], device=self.device)
        h = self._prefill(cache, row, x, positions, Routing.uniform(n), None)
        cache.advance(row, n, 1)
        return h

    def _prefill(
        self,
        cache: KVCache,
        row: int,
        x: torch.Tensor,
        positions: torch.Tensor,
        routing: Routing,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        start, n = cache.lengths[row], x.shape[1]
        if start + n > cache.capacity:
            raise RuntimeError(f"KV cache overflow: {start + n} > capacity {cache.capacity}")
        rope = self.llm.rotary_emb(positions, x.dtype)
        if cache.biased[row]:  # a phantom key in the row: an additive float mask [n or 1, S]
            bias = cache.bias[row : row + 1, : start + n].to(self.device)
            mask = logit_mask(mask, bias, x.dtype)
        # 4-D [1, 1, n or 1, S]: SDPA's fused CPU kernel takes a 4-D mask (3-D falls back to math)
        span = Span(start, start + n, None if mask is None else mask[None, None])
        return self.llm(x, rope, routing, cache.rows(row, row + 1), span)

    # ------------------------------------------------------------------------- denoising

    def denoise_context(self, cache: KVCache, grid: tuple[int, int]) -> DenoiseContext:
        """Everything the denoising passes of a ``grid`` block over ``cache``'s rows share.

        The block's keys go to the slot after the longest row; the rows shorter than that hide
        their unused slots behind a key-padding mask, so contexts of different lengths run as
        one batch. Made once per run (per row set), never per pass.
        """
        m = grid[0] * grid[1]
        n, start = m + 2, max(cache.lengths)
        if start + n > cache.capacity:
            raise RuntimeError(f"KV cache overflow: {start + n} > capacity {cache.capacity}")
        mask = None
        if min(cache.lengths) < start:
            slots = torch.arange(start + n, device=self.device)
            lengths = torch.tensor(cache.lengths, device=self.device)
            mask = (slots[None] < lengths[:, None]) | (slots[None] >= start)  # [B, start + n]
        if any(cache.biased):  # phantom keys: one additive float mask, made once per run
            bias = cache.bias[:, : start + n].to(self.device).clone()
            bias[:, start:] = 0.0  # the block's own slots carry none
            mask = logit_mask(mask, bias, self.dtype)
        if mask is not None:
            mask = mask[:, None, None, :]  # [B, 1, 1, start + n]
        positions = torch.tensor(cache.positions, device=self.device)[:, None]  # [B, 1]
        return DenoiseContext(
            cache=cache,
            rope=self.llm.rotary_emb(positions, self.dtype),
            span=Span(start, start + n, mask),
            routing=Routing.block(n),
            pos_embed=self.latent_pos_embed(self.latent_position_ids(grid)),
            markers=self.vision_markers(),
        )

    def velocity(self, x: torch.Tensor, t: torch.Tensor, ctx: DenoiseContext) -> torch.Tensor:
        """One denoising pass: noise tokens ``x`` [m, 64] at ``t`` (a 0-dim tensor) against
        every row of ``ctx`` at once -> velocities [B, m, 64] in fp32. The cached contexts are
        read, never changed."""
        block = self.embed_latent_block(x, t, ctx.pos_embed, ctx.markers)
        block = block.expand(ctx.cache.batch, -1, -1)
        h = self.llm(block, ctx.rope, ctx.routing, ctx.cache, ctx.span)
        return self.llm2vae(h[:, 1:-1]).float()

    # ------------------------------------------------------------------------- training

    def packed_hidden(self, seq: PackedSequence) -> torch.Tensor:
        """Final hidden states [L, d] of a packed sequence, every token at once under its mask.

        Each latent token enters as in :meth:`embed_latent_block`; text and markers through
        embed_tokens; a phantom ViT token as zeros. Equal to what segment-by-segment prefill
        gives the same plan.
        """
        x = self.llm.embed_tokens(seq.token_ids.clamp(min=0))
        x = x * (seq.token_ids >= 0)[:, None].to(x.dtype)  # phantom ViT tokens: zero input
        latents = (
            self.vae2llm(seq.latents.to(self.dtype))
            + self.time_embedder(seq.timesteps)
            + self.latent_pos_embed(seq.latent_position_ids)
        )
        if seq.attributes is not None and self.attribute_embed is not None:
            latents = latents + self.attribute_embed(seq.attributes)
        x = x.index_put((seq.latent_index,), latents.to(x.dtype))
        rope = self.llm.rotary_emb(seq.position_ids[None], x.dtype)  # [1, L, 1, D]
        if isinstance(seq.mask, BlockMask):
            span = Span(0, seq.length, seq.mask, seq.key_bias)
        else:
            mask = seq.mask if seq.key_bias is None else logit_mask(seq.mask, seq.key_bias, x.dtype)
            span = Span(0, seq.length, mask[None, None])
        return self.llm(x[None], rope, seq.routing, None, span)[0]

    def packed_velocity(self, seq: PackedSequence) -> torch.Tensor:
        """Predicted velocities [k, 64] (fp32) at the loss-carrying latent tokens."""
        h = self.packed_hidden(seq)
        return self.llm2vae(h[seq.latent_index[seq.loss_index]]).float()

    def forward(self, seq: PackedSequence) -> torch.Tensor:
        """The training forward (what DDP and FSDP wrap): :meth:`packed_velocity`."""
        return self.packed_velocity(seq)


def patchify(latent: torch.Tensor, p: int = LATENT_PATCH) -> torch.Tensor:
    """VAE latent [1, c, H, W] -> tokens [(H/p)(W/p), p*p*c], row-major, as BAGEL packs them."""
    _, c, h, w = latent.shape
    x = latent[0].reshape(c, h // p, p, w // p, p)
    return torch.einsum("chpwq->hwpqc", x).reshape(-1, p * p * c)


def unpatchify(
    tokens: torch.Tensor, grid: tuple[int, int], c: int = LATENT_CHANNELS, p: int = LATENT_PATCH
) -> torch.Tensor:
    """Inverse of :func:`patchify`: tokens [h*w, p*p*c] -> latent [1, c, h*p, w*p]."""
    h, w = grid
    x = tokens.reshape(1, h, w, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(1, c, h * p, w * p)
