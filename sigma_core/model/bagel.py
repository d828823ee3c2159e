"""BAGEL's generation model: the MoT decoder plus the connectors between VAE latents and the LLM.

A latent token enters the LLM as vae2llm(latent) + time_embedder(t) + latent_pos_embed[pos]
(+ W_tau(attributes) for SIGMA's reference tokens); llm2vae reads the velocity back out. The
SigLIP ViT and lm_head of the checkpoint are not built: SIGMA conditions on VAE tokens only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from sigma_core.attributes import ATTRIBUTES
from sigma_core.model.config import LATENT_PATCH_SIZE, MAX_LATENT_SIZE, LLMConfig
from sigma_core.model.mot import LanguageModel, Qwen2MoT

# W_tau, the paper's attribute projection t_i = v_i + W_tau(tau_i): one row per attribute token,
# in ATTRIBUTES order. The released SIGMA checkpoint has no such tensor; it is then exactly zero.
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
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


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


class BagelGenerator(nn.Module):
    """The modules of ``Bagel`` that generation needs, under the same parameter names."""

    def __init__(
        self,
        cfg: LLMConfig,
        *,
        latent_channels: int = 16,
        max_latent_size: int = MAX_LATENT_SIZE,
        attribute_embed: bool = False,
    ) -> None:
        super().__init__()
        self.config = cfg
        self.latent_channels = latent_channels
        self.max_latent_size = max_latent_size
        patch_dim = LATENT_PATCH_SIZE**2 * latent_channels
        d = cfg.hidden_size
        self.language_model = LanguageModel(cfg)
        self.time_embedder = TimestepEmbedder(d)
        self.vae2llm = nn.Linear(patch_dim, d)
        self.llm2vae = nn.Linear(d, patch_dim)
        self.latent_pos_embed = LatentPositionEmbedding(max_latent_size, d)
        self.attribute_embed = nn.Embedding(len(ATTRIBUTES), d) if attribute_embed else None

    @property
    def llm(self) -> Qwen2MoT:
        return self.language_model.model

    def latent_position_ids(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        """Row-major ids into the position table: i * max_latent_size + j."""
        if rows > self.max_latent_size or cols > self.max_latent_size:
            raise ValueError(
                f"a {rows}x{cols} latent grid exceeds the {self.max_latent_size}-token position "
                "table; images are at most 1024 px per side"
            )
        i = torch.arange(rows, device=device)[:, None]
        j = torch.arange(cols, device=device)[None, :]
        return (i * self.max_latent_size + j).flatten()

    def embed_latents(
        self,
        tokens: torch.Tensor,
        t: torch.Tensor,
        grid: tuple[int, int],
        attributes: tuple[str, ...] = (),
    ) -> torch.Tensor:
        """Latent tokens [n, 64] at timestep t (0 for a clean reference) -> LLM inputs [n, d]."""
        dtype = self.vae2llm.weight.dtype
        pos = self.latent_position_ids(*grid, tokens.device)
        t = t.reshape(1).to(tokens.device)
        x = self.vae2llm(tokens.to(dtype)) + self.time_embedder(t) + self.latent_pos_embed(pos)
        if attributes and self.attribute_embed is not None:
            idx = torch.tensor([ATTRIBUTES.index(a) for a in attributes], device=tokens.device)
            x = x + self.attribute_embed(idx).sum(0)
        return x

    def velocity(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states of latent tokens [n, d] -> velocity [n, 64]."""
        return self.llm2vae(hidden)


def patchify(latent: torch.Tensor, p: int = LATENT_PATCH_SIZE) -> torch.Tensor:
    """VAE latent [1, c, H, W] -> tokens [(H/p)(W/p), p*p*c], row-major, as BAGEL packs them."""
    _, c, h, w = latent.shape
    x = latent[0].reshape(c, h // p, p, w // p, p)
    return torch.einsum("chpwq->hwpqc", x).reshape(-1, p * p * c)


def unpatchify(
    tokens: torch.Tensor, grid: tuple[int, int], c: int, p: int = LATENT_PATCH_SIZE
) -> torch.Tensor:
    """Inverse of :func:`patchify`: tokens [h*w, p*p*c] -> latent [1, c, h*p, w*p]."""
    h, w = grid
    x = tokens.reshape(1, h, w, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(1, c, h * p, w * p)
