"""Rectified-flow sampling as BAGEL does it: a shifted linear schedule, Euler steps, and
classifier-free guidance over a text branch and an image branch with norm-based renormalisation.

Everything here is a pure function of tensors (no host sync), so the pipeline stays a loop
over these.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from sigma_core.errors import SigmaInputError
from sigma_core.geometry import latent_shape
from sigma_core.inputs.fields import is_int
from sigma_core.inputs.settings import Settings
from sigma_core.limits import MAX_SEED
from sigma_core.model.bagel import patchify

RENORM_EPS = 1e-8  # as in the official _forward_flow


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """BAGEL's timestep shift s*t / (1 + (s-1)*t): s > 1 spends more of the schedule near noise."""
    return shift * t / (1 + (shift - 1) * t)


def timesteps(num_timesteps: int, shift: float, device: torch.device | None = None) -> torch.Tensor:
    """t = linspace(1, 0, N), shifted. N timesteps give N-1 Euler steps."""
    return shift_timesteps(torch.linspace(1, 0, num_timesteps, device=device), shift)


def euler_step(
    x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor
) -> torch.Tensor:
    """x <- x - v * (t_i - t_{i+1}); the velocity points from data to noise. x stays fp32."""
    return x - v.to(x.dtype) * (t - t_next)


@dataclass(frozen=True)
class Guidance:
    """The CFG settings of one run, taken from :class:`Settings` by name (which validated them:
    build it with :meth:`from_settings`)."""

    text_scale: float
    img_scale: float
    interval: tuple[float, float]
    renorm_type: str  # one of sigma_core.inputs.settings.RENORM_TYPES
    renorm_min: float

    @classmethod
    def from_settings(cls, s: Settings) -> Guidance:
        return cls(
            text_scale=s.cfg_text_scale,
            img_scale=s.cfg_img_scale,
            interval=s.cfg_interval,
            renorm_type=s.cfg_renorm_type,
            renorm_min=s.cfg_renorm_min,
        )

    def active(self, t: float) -> bool:
        """CFG runs where interval[0] < t <= interval[1]."""
        return self.interval[0] < t <= self.interval[1]

    def branches(self, t: float) -> tuple[bool, bool]:
        """(text pass, image pass) needed at t. As in the official code a scale <= 1 disables its
        branch, and the image branch only acts inside the text branch: with text scale <= 1 no
        guidance applies at all, so the image pass (which the official code still computes and
        discards) is skipped."""
        if not self.active(t) or self.text_scale <= 1.0:
            return False, False
        return True, self.img_scale > 1.0

    def steps(self, ts: torch.Tensor) -> list[tuple[bool, bool]]:
        """The (text pass, image pass) of every Euler step of schedule ``ts``, computed once on
        the host so the loop reads no tensor back."""
        return [self.branches(t) for t in ts[:-1].tolist()]


def guide(
    v: torch.Tensor,
    v_text: torch.Tensor | None,
    v_img: torch.Tensor | None,
    g: Guidance,
) -> torch.Tensor:
    """Combine the conditional velocity with the unconditional branches ([n, 64] each).

    v_t' = u_text + s_text (v - u_text); then v' = u_img + s_img (v_t' - u_img). Renorm scales by
    clamp(|v| / |v'|, renorm_min, 1): over everything ("global"), per token ("channel"), or on
    the text result before image guidance ("text_channel").
    """
    if v_text is None:
        return v
    guided_text = v_text + g.text_scale * (v - v_text)
    if g.renorm_type == "text_channel":
        guided_text = guided_text * _renorm_scale(v, guided_text, g.renorm_min, per_token=True)
        if v_img is None:
            return guided_text
        return v_img + g.img_scale * (guided_text - v_img)
    out = guided_text if v_img is None else v_img + g.img_scale * (guided_text - v_img)
    return out * _renorm_scale(v, out, g.renorm_min, per_token=g.renorm_type == "channel")


def _renorm_scale(
    ref: torch.Tensor, guided: torch.Tensor, lo: float, *, per_token: bool
) -> torch.Tensor:
    if per_token:
        ratio = ref.norm(dim=-1, keepdim=True) / (guided.norm(dim=-1, keepdim=True) + RENORM_EPS)
    else:
        ratio = ref.norm() / (guided.norm() + RENORM_EPS)
    return ratio.clamp(min=lo, max=1.0)


def initial_noise(
    size: tuple[int, int],
    *,
    generator: torch.Generator | None,
    latents: torch.Tensor | None,
    seed: int | None,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """The starting noise as tokens [m, 64] in fp32 on ``device``, and the seed behind it.

    ``latents`` (VAE layout [1, 16, H/8, W/8]) wins, then ``generator``, then ``seed``; with
    none, a fresh seed is drawn. Noise is drawn in latent layout on the generator's device.
    """
    shape = latent_shape(size)
    if latents is not None:
        if tuple(latents.shape) != shape:
            raise SigmaInputError(
                f"latents: shape {list(latents.shape)} does not match the output "
                f"{size[0]}x{size[1]}: expected {list(shape)}"
            )
        noise = latents
        seed = generator.initial_seed() if generator is not None else (seed or 0)
    else:
        if generator is None:
            seed = seed if seed is not None else secrets.randbelow(MAX_SEED)
            generator = torch.Generator("cpu").manual_seed(seed)
        else:
            seed = generator.initial_seed()
        noise = torch.randn(shape, generator=generator, device=generator.device)
    return patchify(noise.to(device, torch.float32)), seed


def initial_noises(
    size: tuple[int, int],
    count: int,
    *,
    generator: torch.Generator | list[torch.Generator] | None,
    latents: torch.Tensor | None,
    seed: int | None,
    device: torch.device,
) -> list[tuple[torch.Tensor, int]]:
    """The starting noise and seed of each of a call's images: one per generator of a list,
    else ``count`` (see :func:`initial_noise` for one). Image i of ``count`` > 1 draws what a
    call of one image with seed ``seed + i`` draws (from a fresh random ``seed`` when None)."""
    if not is_int(count) or count < 1:
        raise SigmaInputError(f"num_images_per_prompt: {count!r} must be an int >= 1")
    if not isinstance(generator, list):
        if count == 1:
            return [initial_noise(size, generator=generator, latents=latents, seed=seed,
                                  device=device)]  # fmt: skip
        generator = _seeded_generators(count, generator, latents, seed)
    elif not generator or count not in (1, len(generator)) or latents is not None:
        raise SigmaInputError(
            f"generator: a list of {len(generator)} gives one image per generator: "
            "num_images_per_prompt must be 1 or its length, and latents None"
        )
    return [initial_noise(size, generator=g, latents=None, seed=None, device=device)
            for g in generator]  # fmt: skip


def _seeded_generators(
    count: int, generator: torch.Generator | None, latents: torch.Tensor | None, seed: int | None
) -> list[torch.Generator]:
    """Generators for ``count`` consecutive seeds from ``seed`` (or a fresh random one), made
    as :func:`initial_noise` makes one from a seed."""
    if generator is not None or latents is not None:
        raise SigmaInputError(
            f"num_images_per_prompt: {count} images draw their noise from consecutive seeds "
            "(settings.seed) or a list of generators, not from one generator or latents"
        )
    start = seed if seed is not None else secrets.randbelow(MAX_SEED - count + 1)
    if start + count > MAX_SEED:
        raise SigmaInputError(f"settings.seed: {start} + {count} images passes 2^63 - 1")
    return [torch.Generator("cpu").manual_seed(start + i) for i in range(count)]
