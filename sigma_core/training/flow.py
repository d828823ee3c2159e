"""BAGEL's flow-matching objective, as its training code computes it (modeling/bagel/bagel.py
and train/pretrain_unified_navit.py):

- one timestep per target image: t = sigmoid(randn), then the same shift the sampler uses,
  s*t / (1 + (s-1)*t), with s = ``timestep_shift`` (1.0 in BAGEL's and SIGMA's training, so
  t stays logit-normal);
- x_t = (1 - t) * x0 + t * noise; clean conditions keep t = 0;
- the target is the velocity noise - x0, read out by llm2vae at the noised tokens;
- the MSE is averaged over the 64 values of a token, summed over tokens and divided by the
  number of loss tokens in the whole global batch (all processes), so every token weighs the
  same however the batch is packed.
"""

from __future__ import annotations

import torch

from sigma_core.runtime.sampler import shift_timesteps


def sample_timesteps(
    n: int, shift: float, *, generator: torch.Generator, device: torch.device | None = None
) -> torch.Tensor:
    """[n] timesteps in (0, 1), one per target image: logit-normal, then shifted."""
    z = torch.randn(n, generator=generator, device=generator.device)
    return shift_timesteps(torch.sigmoid(z), shift).to(device)


def noised(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, for tokens [m, 64] at a 0-dim or [m] t."""
    t = t.reshape(-1, 1) if t.ndim else t
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity the model learns to predict: noise - x0."""
    return noise - x0


def flow_loss(
    pred: torch.Tensor, target: torch.Tensor, total_tokens: float | torch.Tensor
) -> torch.Tensor:
    """Per-token MSE of velocities [k, 64], summed over tokens, over ``total_tokens``.

    ``total_tokens`` is the global batch's loss-token count divided by the number of processes:
    DDP and FSDP average gradients over processes, so the result weighs every token alike."""
    return (pred.float() - target.float()).pow(2).mean(-1).sum() / total_tokens
