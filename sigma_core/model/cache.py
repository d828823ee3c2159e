"""The KV cache: fixed-size buffers per layer, one row per context, and their bookkeeping.

Shapes: B rows (contexts), Hkv key/value heads, C capacity (token slots), D head dim.

A row holds one context: its first ``lengths[b]`` slots, whose rope continues at
``positions[b]``. Prefill appends to one row (the model advances it). A denoising pass writes its
block's keys into the spare slots after the longest row, at ``slot``, and attends over the
context plus that block; shorter rows hide their unused slots with a key-padding mask. The
context is never changed by a denoising pass, and the buffers never grow: the capacity is known
from the plan before anything runs.

A slot may also carry a logit bias, added whenever a query attends to it: a compact phantom ViT
token stands for N identical keys with ln N (see sigma_core.planning.layout). Rows without one
(``biased[b]`` False) attend with plain boolean masks, exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sigma_core.model.config import LLMConfig


@dataclass(frozen=True)
class CacheMark:
    """A row's state at one moment: ``length`` tokens, next rope position ``position``."""

    length: int
    position: int


@dataclass
class KVCache:
    """Keys and values per layer [B, Hkv, C, D], stored after qk-norm and RoPE."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: list[int]  # context tokens per row
    positions: list[int]  # the rope position of each row's next token
    bias: torch.Tensor  # float32 (or wider) [B, C] on the first device: each slot's logit bias
    biased: list[bool]  # whether a row has any non-zero bias

    @classmethod
    def empty(
        cls,
        cfg: LLMConfig,
        *,
        batch: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str | Sequence[torch.device],
    ) -> KVCache:
        """``device``: one for every layer, or one per layer (a device map)."""
        # Zeros, not empty: masked slots must hold finite numbers (0 * NaN is NaN in attention).
        shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim)
        bias_dtype = torch.promote_types(dtype, torch.float32)  # fp32, or fp64 for fp64 checks
        n = cfg.num_hidden_layers
        devices = [device] * n if isinstance(device, str | torch.device) else list(device)
        return cls(
            [torch.zeros(shape, dtype=dtype, device=d) for d in devices],
            [torch.zeros(shape, dtype=dtype, device=d) for d in devices],
            [0] * batch,
            [0] * batch,
            torch.zeros(batch, capacity, dtype=bias_dtype, device=devices[0]),
            [False] * batch,
        )

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def mark(self, row: int) -> CacheMark:
        """Row ``row``'s length and next position, to copy its prefix later."""
        return CacheMark(self.lengths[row], self.positions[row])

    def advance(self, row: int, tokens: int, positions: int) -> None:
        """Record that ``tokens`` were appended to ``row``, moving its rope by ``positions``."""
        self.lengths[row] += tokens
        self.positions[row] += positions

    def set_bias(self, row: int, start: int, count: int, value: float) -> None:
        """Give slots [start, start + count) of ``row`` the logit bias ``value`` (a host float,
        so no sync)."""
        self.bias[row, start : start + count] = value
        self.biased[row] = self.biased[row] or value != 0.0

    def copy_prefix(self, src: int, dst: int, mark: CacheMark) -> None:
        """Row ``dst`` becomes row ``src`` as it was at ``mark`` (its first mark.length tokens)."""
        n = mark.length
        for layer in (*self.keys, *self.values):
            layer[dst, :, :n] = layer[src, :, :n]
        self.bias[dst] = 0
        self.bias[dst, :n] = self.bias[src, :n]
        self.lengths[dst], self.positions[dst] = n, mark.position
        self.biased[dst] = self.biased[src]

    def rows(self, start: int, stop: int) -> KVCache:
        """A view of rows [start, stop): the same buffers, so writes land in this cache."""
        return KVCache(
            [k[start:stop] for k in self.keys],
            [v[start:stop] for v in self.values],
            self.lengths[start:stop],
            self.positions[start:stop],
            self.bias[start:stop],
            self.biased[start:stop],
        )
