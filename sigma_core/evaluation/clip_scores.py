"""CLIP: the model of CLIP-T (image vs prompt), CLIP-I (image vs wanted reference), CLIP-ES
(image vs distractor reference) and the input of AES. XVerseBench's CLIP is
openai/clip-vit-large-patch14, read through transformers from the local cache.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from sigma_core.evaluation.embedders import embed_in_batches, load_from_cache
from sigma_core.inputs.attributes import strip_tokens
from sigma_core.inputs.composition import Composition
from sigma_core.inputs.prompt import IMAGE_PLACEHOLDER

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


class ClipEmbedder:
    """CLIP's image and text towers: unit embeddings in its shared space [N, projection_dim]."""

    def __init__(self, model: Any, processor: Any, device: torch.device, batch_size: int) -> None:
        self.model, self.processor = model, processor
        self.device, self.batch_size = device, batch_size

    @classmethod
    def load(cls, repo: str, device: torch.device, batch_size: int) -> ClipEmbedder:
        """CLIP from a folder or the local cache (ModelUnavailable when it is not there)."""
        from transformers import CLIPModel, CLIPProcessor

        processor = load_from_cache(CLIPProcessor, repo, "CLIP")
        model = load_from_cache(CLIPModel, repo, "CLIP").to(device).eval()
        return cls(model, processor, device, batch_size)

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Each image's CLIP image embedding, [N, D], in batches of ``batch_size``."""

        def embed(batch: Sequence[Image.Image]) -> torch.Tensor:
            rgb = [im.convert("RGB") for im in batch]
            pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
            pooled = self.model.vision_model(pixel_values=pixels.to(self.device)).pooler_output
            return self.model.visual_projection(pooled)

        return embed_in_batches(images, self.batch_size, embed)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Each text's CLIP text embedding, [N, D]; a text longer than CLIP's context is cut to
        it."""
        limit = self.model.config.text_config.max_position_embeddings

        def embed(batch: Sequence[str]) -> torch.Tensor:
            tokens = self.processor(
                text=list(batch), return_tensors="pt", padding=True, truncation=True,
                max_length=limit,
            ).to(self.device)  # fmt: skip
            pooled = self.model.text_model(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).pooler_output
            return self.model.text_projection(pooled)

        return embed_in_batches(texts, self.batch_size, embed)


def plain_text(raw_prompt: str) -> str:
    """A raw SIGMA prompt as CLIP-T reads it: without its attribute tokens and <image_k>
    placeholders, the spaces they leave closed up."""
    text = strip_tokens(IMAGE_PLACEHOLDER.sub(" ", raw_prompt))
    return re.sub(r"\s+([,.;:!?])", r"\1", text)


def prompt_text(composition: Composition) -> str:
    """The composition's prompt as CLIP-T reads it (templates expanded to raw syntax first)."""
    raw, _ = composition.raw_prompt()
    return plain_text(raw)


def clip_t(clip: ClipEmbedder, images: Sequence[Image.Image], text: str) -> np.ndarray:
    """CLIP-T: 100 x cosine between each image and the text, [len(images)]."""
    return 100.0 * clip.embed_images(images) @ clip.embed_texts([text])[0]
