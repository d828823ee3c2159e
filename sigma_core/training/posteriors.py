"""The frozen VAE's posteriors of training images: encoded in batches of one size, and kept on
disk when the run names a ``latent_cache`` folder, so that later epochs skip the VAE.

The VAE is frozen, so an image's posterior (mean and log-variance) never changes. Keeping it and
drawing mean + std * noise at each use is what encoding again gives: the same distribution, and
for the same generator the same numbers (the noise is drawn per image, in the order and shape
the one-at-a-time encode drew it). A sample is never stored, only the posterior.

The cache is one safetensors file per image and VAE size, named by the SHA-256 of the VAE's
weights and of the resized pixels (what the VAE is given). Files are written to a temporary
name and renamed over the final one, so processes sharing the folder (the ranks of a run, or
several runs) only ever see whole files; an unreadable or truncated file is a miss, encoded
again and replaced. The folder is bounded: when a write would pass ``max_bytes``, the least
recently used files (by modification time; a hit touches its file) go until an eighth of the
bound is free. Each process counts its own writes, so N processes at the same pace may briefly
hold up to about (1 + (N - 1) / 8) times the bound before one of them trims.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sigma_core.errors import SigmaInputError
from sigma_core.inputs import check_run_folder
from sigma_core.model.bagel import patchify
from sigma_core.model.vae import FluxVAE, sample_latent
from sigma_core.runtime.references import pixel_key, to_pixels

log = logging.getLogger(__name__)

# Pixels in one encode: 8 images of 64x64, 2 of 128x128, larger ones one at a time as before.
# Small images are where a call's overhead dominates (8 of 64 px: 2.4x faster per image on a
# 2-core CPU); larger batches ran slower per image there (cache misses), and one full-size image
# at a time keeps the VAE's peak memory where it was.
ENCODE_BATCH_PIXELS = 32 * 1024
SUFFIX = ".safetensors"
TEMP_SUFFIX = ".tmp"
STALE_SECONDS = 600  # a temporary file this old was left by a writer that died
SLACK = 8  # a trim frees an eighth of the bound


@dataclass(frozen=True)
class Posterior:
    """One image's posterior: mean and log-variance [1, z, h, w], unscaled, in the VAE's dtype
    and on its device."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """Latent tokens [h*w, 64] (fp32) drawn with ``generator``: what the VAE's encode of the
        image with that generator returns."""
        return patchify(sample_latent(self.mean, self.logvar, generator).float())


class PosteriorCache:
    """Posteriors in ``folder`` (created if missing; a file there, or a folder that cannot be
    written, is refused), at most ``max_bytes`` of files, least recently used out first.
    Counts its ``hits`` and ``misses``."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int) -> None:
        self.folder = check_run_folder(folder, "latent_cache")
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._warned = False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._bytes = self._trim(0)  # a smaller bound than last time applies at once
        except OSError as e:
            raise SigmaInputError(
                f"latent_cache {str(folder)!r}: cannot be used ({e.strerror or e})"
            ) from None

    @property
    def hit_rate(self) -> float:
        """Hits over lookups; 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def get(self, key: str, shape: tuple[int, ...], device: torch.device) -> Posterior | None:
        """The posterior kept under ``key`` (its file now the most recently used), or None when
        there is none, or its file cannot be read or does not hold two tensors of ``shape``."""
        path = self.folder / f"{key}{SUFFIX}"
        try:
            tensors = load_file(path, device=str(device))
            os.utime(path)
        except (OSError, SafetensorError):
            tensors = {}
        mean, logvar = tensors.get("mean"), tensors.get("logvar")
        if mean is None or logvar is None or mean.shape != shape or logvar.shape != shape:
            self.misses += 1
            return None
        self.hits += 1
        return Posterior(mean, logvar)

    def put(self, key: str, posterior: Posterior) -> None:
        """Keep ``posterior`` under ``key``: written whole to a temporary file, then renamed
        over the name (a reader sees the old file or the new one). A write that fails (a full
        disk) is skipped with one warning; the run goes on encoding."""
        tensors = {"mean": posterior.mean, "logvar": posterior.logvar}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=TEMP_SUFFIX, dir=self.folder)
            os.close(fd)
            save_file(tensors, tmp)
            size = os.path.getsize(tmp)
            if size <= self.max_bytes:
                if self._bytes + size > self.max_bytes:
                    self._bytes = self._trim(size)
                os.replace(tmp, self.folder / f"{key}{SUFFIX}")
                self._bytes += size
        except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own
            if not self._warned:
                log.warning("latent_cache %s: cannot write (%s); encoding instead", self.folder, e)
                self._warned = True
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def _trim(self, incoming: int) -> int:
        """Delete the least recently used files (and temporary files of dead writers) until
        ``incoming`` more bytes leave an eighth of the bound free; the bytes left."""
        entries, now = [], time.time()
        with os.scandir(self.folder) as listing:
            for entry in listing:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:  # gone meanwhile: another process trimmed it
                    continue
                if entry.name.endswith(TEMP_SUFFIX) and now - st.st_mtime > STALE_SECONDS:
                    Path(entry.path).unlink(missing_ok=True)
                elif entry.name.endswith(SUFFIX):
                    entries.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        room = self.max_bytes - self.max_bytes // SLACK - incoming
        for _, size, path in sorted(entries):
            if total <= room:
                break
            Path(path).unlink(missing_ok=True)
            total -= size
        return total


def open_cache(folder: str | None, max_bytes: int) -> PosteriorCache | None:
    """The cache in ``folder``, or None where a run names none (every image is encoded)."""
    return PosteriorCache(folder, max_bytes) if folder else None


class PosteriorEncoder:
    """Posteriors of images at their VAE sizes: read from ``cache`` where it holds them, the
    others encoded in batches of one size and at most ``batch_pixels`` pixels (at least one
    image). ``batch_pixels`` is ENCODE_BATCH_PIXELS; the tests and benchmarks/bench_train.py set
    it to 0 on a built trainer's encoder to encode one at a time, the path before batching.

    ``encoded`` counts the images run through the VAE. Only the tests read it: it is their one
    window on how many images a run without a cache encodes (with one, its misses say it)."""

    def __init__(self, vae: FluxVAE, cache: PosteriorCache | None = None) -> None:
        self.vae, self.cache = vae, cache
        self.batch_pixels = ENCODE_BATCH_PIXELS
        self.encoded = 0
        self._identity = vae.fingerprint() if cache is not None else ""

    def __call__(self, images: Sequence[Image.Image]) -> list[Posterior]:
        """One posterior per image, in order."""
        keys = [self._key(img) if self.cache is not None else None for img in images]
        device = self.vae.device  # diffusers walks every module to answer: once a call
        out: dict[int, Posterior] = {}
        waiting: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (img, key) in enumerate(zip(images, keys, strict=True)):
            hit = self._lookup(img, key, device)
            if hit is None:
                waiting[img.size].append(i)
            else:
                out[i] = hit
        for (w, h), order in waiting.items():
            per = max(1, self.batch_pixels // (w * h))
            for k in range(0, len(order), per):
                out.update(self._encode(images, keys, order[k : k + per]))
        return [out[i] for i in range(len(images))]

    def _encode(
        self, images: Sequence[Image.Image], keys: list[str | None], batch: list[int]
    ) -> dict[int, Posterior]:
        """The posteriors of ``images[i]`` for i in ``batch`` (one size), in one encode; each
        kept in the cache under its key."""
        mean, logvar = self.vae.posterior(torch.cat([to_pixels(images[i]) for i in batch]))
        self.encoded += len(batch)
        out = {}
        for j, i in enumerate(batch):
            out[i] = Posterior(mean[j : j + 1], logvar[j : j + 1])
            key = keys[i]
            if self.cache is not None and key is not None:
                self.cache.put(key, out[i])
        return out

    def _key(self, img: Image.Image) -> str:
        return hashlib.sha256(f"{self._identity}|{pixel_key(img)}".encode()).hexdigest()

    def _lookup(self, img: Image.Image, key: str | None, device: torch.device) -> Posterior | None:
        if self.cache is None or key is None:
            return None
        w, h = img.size
        down = self.vae.downsample
        return self.cache.get(key, (1, self.vae.z_channels, h // down, w // down), device)
