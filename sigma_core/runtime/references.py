"""Reference images to VAE latent tokens, cached by pixel content and safe to share across runs
and threads."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from sigma_core.inputs.images import vae_resize
from sigma_core.model.bagel import patchify
from sigma_core.model.vae import FluxVAE
from sigma_core.planning.sequence import Plan

LATENT_CACHE_SIZE = 32


def to_pixels(img: Image.Image) -> torch.Tensor:
    """An RGB image -> [1, 3, H, W] in [-1, 1], normalised as BAGEL's transform (mean and std
    0.5); the one conversion inference and training share."""
    pixels = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())
    return pixels.permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)[None]


class ReferenceEncoder:
    """Encodes each placed reference once: BAGEL's resize, pixels to [-1, 1], posterior mean.

    Latents are kept by pixel hash (the last :data:`LATENT_CACHE_SIZE`), so regenerating with
    the same references skips the VAE. A lock guards the cache; encoding runs outside it, so
    two runs encode in parallel (at worst the same image twice, with the same result).
    """

    def __init__(self, vae: FluxVAE, *, capacity: int = LATENT_CACHE_SIZE) -> None:
        self.vae = vae
        self.capacity = capacity
        self._latents: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every cached latent."""
        with self._lock:
            self._latents.clear()

    def __call__(
        self,
        plan: Plan,
        images: dict[int, Image.Image],
        on_reference: Callable[[str, int, int], Any] | None = None,
    ) -> dict[int, torch.Tensor]:
        """Latent tokens [h*w, 64] (fp32) per slot placed in ``plan``; ``on_reference`` gets
        ("encode", k, n) after each of the n references is encoded (k of n done)."""
        out: dict[int, torch.Tensor] = {}
        for seg in plan.segments:
            if seg.kind != "image" or seg.block_slot in out:
                continue
            img = vae_resize(images[seg.block_slot])
            if img.size != seg.size:
                raise RuntimeError(f"slot {seg.slot}: resized to {img.size}, planned {seg.size}")
            out[seg.block_slot] = self._encode(img)
            if on_reference is not None:
                on_reference("encode", len(out), plan.num_references)
        return out

    def _encode(self, img: Image.Image) -> torch.Tensor:
        key = hashlib.sha256(img.tobytes()).hexdigest() + f"{img.size}"
        with self._lock:
            if key in self._latents:
                self._latents.move_to_end(key)
                return self._latents[key]
        pixels = to_pixels(img)
        latent = patchify(self.vae.encode(pixels).float())
        with self._lock:
            self._latents[key] = latent
            while len(self._latents) > self.capacity:
                self._latents.popitem(last=False)
        return latent
