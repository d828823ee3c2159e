"""DreamSim: a perceptual distance tuned to human similarity judgements (Fu et al. 2023), an
ensemble of DINO ViT-B/16, CLIP ViT-B/16 and OpenCLIP ViT-B/16 with LoRA weights. Its distance
is 1 - cosine of its embeddings; the score here is 100 x (1 - distance), so higher is more
similar, as the SIGMA paper's table reads (67.87 for SIGMA). Run through the ``dreamsim``
package, from a folder that already holds its published weights: nothing is downloaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sigma_core.evaluation.embedders import ModelUnavailable, embed_in_batches
from sigma_core.user_cache import user_cache_dir

# what the package's published zip unpacks to (the ensemble); dreamsim() downloads when any is
# missing, so each is checked first
DREAMSIM_FILES = (
    "dino_vitb16_pretrain.pth",
    "clip_vitb16_pretrain.pth.tar",
    "open_clip_vitb16_pretrain.pth.tar",
    "dino_vitb16_lora",
    "clip_vitb16_lora",
    "open_clip_vitb16_lora",
)


def default_dreamsim_dir() -> Path:
    """Where DreamSim's weights are looked for when --dreamsim-model is not given."""
    return user_cache_dir() / "dreamsim"


def fetch_hint(folder: str) -> str:
    """The commands that put DreamSim and its weights in ``folder`` (the scorer never downloads)."""
    return (
        'pip install dreamsim, then fetch its weights once with `python -c "from dreamsim '
        f"import dreamsim; dreamsim(pretrained=True, cache_dir='{folder}')\"`"
    )


class DreamSimEmbedder:
    """DreamSim's embedding of each image: unit rows [N, D] (cosine = 1 - its distance)."""

    def __init__(self, model: Any, preprocess: Any, device: torch.device, batch_size: int):
        self.model, self.preprocess = model, preprocess
        self.device, self.batch_size = device, batch_size

    @classmethod
    def load(cls, folder: str, device: torch.device, batch_size: int) -> DreamSimEmbedder:
        """The pretrained ensemble from ``folder`` (ModelUnavailable when the package or any
        of its weights is missing)."""
        missing = [name for name in DREAMSIM_FILES if not (Path(folder) / name).exists()]
        if missing:
            raise ModelUnavailable(
                f"DreamSim: its weights are not in {folder} ({missing[0]} is missing); "
                f"{fetch_hint(folder)}"
            )
        try:
            package = importlib.import_module("dreamsim")
        except ImportError:
            raise ModelUnavailable(f"DreamSim: the dreamsim package is not installed; "
                                   f"{fetch_hint(folder)}") from None  # fmt: skip
        model, preprocess = package.dreamsim(pretrained=True, device=str(device), cache_dir=folder)
        return cls(model, preprocess, device, batch_size)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Each image's DreamSim embedding, [N, D] (the ensemble's features, concatenated)."""

        def embed(batch: Sequence[Image.Image]) -> torch.Tensor:
            x = torch.cat([self.preprocess(im.convert("RGB")) for im in batch])  # [B, 3, 224, 224]
            return self.model.embed(x.to(self.device)).reshape(len(batch), -1)

        return embed_in_batches(images, self.batch_size, embed)
