"""What every metric shares: the evaluation models come from the local Hugging Face cache only
(never downloaded), images go through them in batches, and the results are unit embeddings, so
a similarity is a dot product. A model that is not on disk is a :class:`ModelUnavailable` whose
message names the download command; the scorer skips that metric and runs the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

MAX_BATCH = 1024  # images per forward: --batch-size is checked against it


class ModelUnavailable(Exception):
    """An evaluation model that is not on disk (or cannot serve the metric); the message says
    how to get it. Not a SigmaError: the scorer notes it and goes on with the other metrics."""


class ImageEmbedder(Protocol):
    """An evaluation model (or a test's stand-in): unit embeddings [len(images), D]."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One unit embedding per image, [N, D], in the images' order."""


def download_hint(repo: str) -> str:
    """How to put a hub model into the local cache (the scorer itself never downloads)."""
    return f"download it once with `hf download {repo}` (or `huggingface-cli download {repo}`)"


def load_from_cache(kind: Any, repo: str, what: str, **kwargs: Any) -> Any:
    """``kind.from_pretrained(repo)`` from a folder or the local cache only; a model that is not
    there is a ModelUnavailable naming the download command."""
    try:
        return kind.from_pretrained(repo, local_files_only=True, **kwargs)
    except (OSError, ValueError) as e:  # ValueError: a name that is neither a folder nor an id
        if Path(repo).exists():
            raise ModelUnavailable(f"{what}: {repo} does not hold a model ({e})") from None
        raise ModelUnavailable(
            f"{what}: {repo} is not in the local Hugging Face cache; {download_hint(repo)}"
        ) from None


def unit_rows(features: torch.Tensor) -> np.ndarray:
    """Rows scaled to length 1, in float64 (cosines of them are dot products): [N, D]."""
    rows = features.detach().to(torch.float64).cpu()
    return (rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)).numpy()


@torch.no_grad()
def embed_in_batches(
    items: Sequence[Any], batch_size: int, embed: Callable[[Sequence[Any]], torch.Tensor]
) -> np.ndarray:
    """Unit embeddings [len(items), D]: ``embed`` of ``batch_size`` items at a time."""
    rows = [unit_rows(embed(items[i : i + batch_size])) for i in range(0, len(items), batch_size)]
    return np.concatenate(rows)


def crop_region(
    image: Image.Image, region: tuple[float, float, float, float] | None
) -> Image.Image:
    """The part of ``image`` a reference should land in: ``region`` is (x0, y0, x1, y1) in
    fractions of its width and height; None is the whole image. At least one pixel each way."""
    if region is None:
        return image
    w, h = image.size
    x0, y0 = min(int(region[0] * w), w - 1), min(int(region[1] * h), h - 1)
    x1, y1 = max(round(region[2] * w), x0 + 1), max(round(region[3] * h), y0 + 1)
    return image.crop((x0, y0, x1, y1))


@dataclass(frozen=True)
class RefView:
    """One reference of an item as the pair metrics read it: ``key`` its slot ("1"), ``region``
    where in the generated image it should land (fractions; None: anywhere)."""

    key: str
    image: Image.Image
    region: tuple[float, float, float, float] | None = None


def pair_scores(
    embedder: ImageEmbedder, images: Sequence[Image.Image], refs: Sequence[RefView]
) -> dict[str, np.ndarray]:
    """100 x cosine between each image (cropped to the reference's region) and each reference:
    {key: [len(images)]}. Identical images score 100; the references' order does not matter."""
    if not refs or not images:
        return {}
    regions = list(dict.fromkeys(r.region for r in refs))
    views = [crop_region(im, region) for region in regions for im in images]
    found = embedder.embed_images(views).reshape(len(regions), len(images), -1)  # [R, N, D]
    wanted = embedder.embed_images([r.image for r in refs])  # [K, D]
    return {r.key: 100.0 * found[regions.index(r.region)] @ wanted[k] for k, r in enumerate(refs)}
