"""DINO: image vs wanted reference as the cosine of a self-supervised ViT's CLS embeddings.
XVerseBench's is facebook/dino-vits16 (a ViTModel); any ViT-like model with a CLS token (a
DINOv2) may stand in. Images are prepared as XVerseBench's DINOScore does: the short side
resized to 256/224 of the model's input (bicubic), the centre cropped to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from sigma_core.evaluation.embedders import embed_in_batches, load_from_cache

DEFAULT_DINO = "facebook/dino-vits16"
RESIZE_TO_CROP = 256 / 224  # XVerseBench: Resize(256), CenterCrop(224)


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """The short side resized to ``size`` x 256/224 (bicubic), then the central size x size."""
    w, h = image.size
    short = round(size * RESIZE_TO_CROP)
    scale = short / min(w, h)
    image = image.convert("RGB").resize(
        (max(short, round(w * scale)), max(short, round(h * scale))), Image.Resampling.BICUBIC
    )
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


class DinoEmbedder:
    """A ViT's CLS embedding (the last layer, after its norm): unit rows [N, hidden]."""

    def __init__(
        self, model: Any, mean: Sequence[float], std: Sequence[float], batch_size: int
    ) -> None:
        self.model, self.batch_size = model, batch_size
        self.size = int(model.config.image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def load(cls, repo: str, device: torch.device, batch_size: int) -> DinoEmbedder:
        """The model and its normalization from a folder or the local cache."""
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        config = load_from_cache(AutoConfig, repo, "DINO")
        extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}
        model = load_from_cache(AutoModel, repo, "DINO", config=config, **extra)
        processor = load_from_cache(AutoImageProcessor, repo, "DINO")
        return cls(model.to(device).eval(), processor.image_mean, processor.image_std, batch_size)

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Normalized pixels [N, 3, size, size]."""
        crops = [np.asarray(resize_center_crop(im, self.size)) for im in images]
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Each image's CLS embedding, [N, D], prepared as XVerseBench's DINOScore prepares it."""

        def embed(batch: Sequence[Image.Image]) -> torch.Tensor:
            x = self.pixels(batch).to(self.model.device)
            return self.model(pixel_values=x).last_hidden_state[:, 0]

        return embed_in_batches(images, self.batch_size, embed)
