"""W_tau, SIGMA's attribute projection: a reference's latent tokens enter the LLM as
t_i = v_i + W_tau(tau_i), where tau_i is the set of attribute tokens bound to the reference.

One formulation serves inference and training: tau is a multi-hot over :data:`ATTRIBUTES`
([A] for one reference, [n, A] with one row per latent token of a packed sequence), and
W_tau(tau) = tau @ weight with weight [A, d]. For one attribute the one-hot product is exactly
that attribute's row (1 * w plus zeros); for several it is the sum of their rows.

The parameter is named ``weight`` so the checkpoint key stays ``attribute_embed.weight``
(the module sits at ``BagelGenerator.attribute_embed``). It is no Linear, so the quantized
precision modes leave it in the compute dtype.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from sigma_core.inputs.attributes import ATTRIBUTES


def attribute_multi_hot(
    attributes: Iterable[str], device: torch.device | str | None = None
) -> torch.Tensor:
    """tau [A] float32: 1 at the row of each attribute in ``attributes`` (a set: a repeated
    attribute counts once), 0 elsewhere."""
    hot = torch.zeros(len(ATTRIBUTES), device=device)
    for a in attributes:
        hot[ATTRIBUTES.index(a)] = 1.0
    return hot


class AttributeProjection(nn.Module):
    """W_tau: multi-hot attribute sets [..., A] -> additions to the latent tokens [..., d]."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(len(ATTRIBUTES), hidden))
        # nn.Embedding's N(0, 1); loaded weights, or the trainer's zeros, replace it
        nn.init.normal_(self.weight)

    def forward(self, hot: torch.Tensor) -> torch.Tensor:
        """``hot`` [A] or [n, A] (0/1) -> [d] or [n, d] in the weight's dtype."""
        return hot.to(self.weight.dtype) @ self.weight
