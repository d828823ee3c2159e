"""Reference images to VAE latent tokens, cached by pixel content and safe to share across runs
and threads."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from sigma_core.errors import SigmaInputError
from sigma_core.inputs.fields import is_int
from sigma_core.inputs.images import vae_resize
from sigma_core.model.bagel import patchify
from sigma_core.model.vae import FluxVAE
from sigma_core.planning.sequence import Plan

# 256 MiB: a 1024x1024 reference's latent is [4096, 64] fp32 (1 MiB), so hundreds of references
LATENT_CACHE_BYTES = 256 * 2**20


def to_pixels(img: Image.Image) -> torch.Tensor:
    """An RGB image -> [1, 3, H, W] in [-1, 1], normalised as BAGEL's transform (mean and std
    0.5); the one conversion inference and training share."""
    pixels = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())
    return pixels.permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)[None]


def pixel_key(img: Image.Image) -> str:
    """The SHA-256 of an image's pixels with its mode and size: what a VAE encode of it depends
    on (for one VAE), so a latent cache's key for it."""
    return f"{hashlib.sha256(img.tobytes()).hexdigest()}-{img.mode}-{img.size}"


def check_cache_bytes(max_bytes: Any) -> int:
    """A latent cache's bound, or a SigmaInputError (0 keeps nothing: every run encodes)."""
    if not is_int(max_bytes) or max_bytes < 0:
        raise SigmaInputError(f"latent_cache_bytes: {str(max_bytes)[:40]!r} must be an int >= 0")
    return max_bytes


@dataclass(frozen=True)
class CacheStats:
    """A latent cache at one moment: lookups served (hits) and encoded (misses) since it was made
    or cleared, what it holds now, and its bound."""

    hits: int
    misses: int
    entries: int
    bytes: int
    max_bytes: int

    @property
    def hit_rate(self) -> float:
        """Hits over lookups; 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class LatentCache:
    """Tensors by key, least recently used first out, never holding more than ``max_bytes``
    (an entry larger than that is not kept at all). One lock guards the books, so threads may
    share it; it never computes anything itself."""

    def __init__(self, max_bytes: int = LATENT_CACHE_BYTES) -> None:
        self.max_bytes = check_cache_bytes(max_bytes)
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = self._hits = self._misses = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> torch.Tensor | None:
        """The tensor kept under ``key`` (now the most recently used), or None: a miss."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self._misses += 1
                return None
            self._hits += 1
            self._entries.move_to_end(key)
            return value

    def put(self, key: str, value: torch.Tensor) -> None:
        """Keep ``value`` as the most recently used, dropping the least recently used until it
        fits; a value larger than the whole bound is not kept."""
        size = value.numel() * value.element_size()
        with self._lock:
            old = self._entries.pop(key, None)  # two runs that encoded the same image
            self._bytes -= 0 if old is None else old.numel() * old.element_size()
            if size > self.max_bytes:
                return
            while self._bytes + size > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.numel() * dropped.element_size()
            self._entries[key] = value
            self._bytes += size

    def clear(self) -> None:
        """Forget every entry, and the hits and misses counted so far."""
        with self._lock:
            self._entries.clear()
            self._bytes = self._hits = self._misses = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits, self._misses, len(self._entries), self._bytes, self.max_bytes
            )


class ReferenceEncoder:
    """Encodes each placed reference once: BAGEL's resize, pixels to [-1, 1], posterior mean.

    Latents are kept in a :class:`LatentCache` of at most ``max_bytes``, so a run that changes
    only the prompt, the seed or the settings skips the VAE. The key is the SHA-256 of the
    resized pixels with their mode and size: the image arrives oriented and cropped, and the
    resize depends on its size alone, so those bytes stand for pixels, crop and size together,
    and the latent is a function of them (for this encoder's VAE; each pipeline has its own).
    Encoding runs outside the cache's lock, so two runs encode in parallel (at worst the same
    image twice, with the same result).
    """

    def __init__(self, vae: FluxVAE, *, max_bytes: int = LATENT_CACHE_BYTES) -> None:
        self.vae = vae
        self.cache = LatentCache(max_bytes)

    def clear(self) -> None:
        """Forget every cached latent (and the cache's counts)."""
        self.cache.clear()

    def stats(self) -> CacheStats:
        """The latent cache's hits, misses, entries and bytes."""
        return self.cache.stats()

    def __call__(
        self,
        plan: Plan,
        images: dict[int, Image.Image],
        on_reference: Callable[[str, int, int], Any] | None = None,
    ) -> dict[int, torch.Tensor]:
        """Latent tokens [h*w, 64] (fp32) per slot placed in ``plan``; ``on_reference`` gets
        ("encode", k, n) after each of the n references is encoded (k of n done), or ("reuse",
        k, n) when its latent came from the cache instead."""
        out: dict[int, torch.Tensor] = {}
        for seg in plan.segments:
            if seg.kind != "image" or seg.block_slot in out:
                continue
            img = vae_resize(images[seg.block_slot])
            if img.size != seg.size:
                raise RuntimeError(f"slot {seg.slot}: resized to {img.size}, planned {seg.size}")
            out[seg.block_slot], reused = self._encode(img)
            if on_reference is not None:
                on_reference("reuse" if reused else "encode", len(out), plan.num_references)
        return out

    def _encode(self, img: Image.Image) -> tuple[torch.Tensor, bool]:
        """The latent of ``img``, and whether the cache held it."""
        key = pixel_key(img)
        latent = self.cache.get(key)
        if latent is not None:
            return latent, True
        latent = patchify(self.vae.encode(to_pixels(img)).float())
        self.cache.put(key, latent)
        return latent, False
