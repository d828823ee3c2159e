"""The scores of the layout A/B (benchmarks.ab_layouts): CLIP-T, CLIP-I and DINO, the metrics
XVerseBench reports, with its models, read from the local Hugging Face cache only (never
downloaded: a missing model is skipped with a note). Kept apart from the experiment because
it is the only part that needs evaluation models; tests pass stand-ins through the protocols.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from sigma_core.inputs.attributes import find_attribute_tokens
from sigma_core.inputs.composition import Composition
from sigma_core.inputs.prompt import IMAGE_PLACEHOLDER

SCORE_MODELS = {"clip": "openai/clip-vit-large-patch14", "dino": "facebook/dino-vits16"}
METRICS = {"clip_t": "CLIP-T", "clip_i": "CLIP-I", "dino": "DINO"}
EMBED_BATCH = 16


class ImageEmbedder(Protocol):
    """An evaluation model (or a test's stand-in): unit-length embeddings, one row per input."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class TextImageEmbedder(ImageEmbedder, Protocol):
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class Scorers:
    """The evaluation models at hand; ``skipped`` says which were not, and why."""

    clip: TextImageEmbedder | None = None
    dino: ImageEmbedder | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return self.clip is not None or self.dino is not None


def _unit(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True)).cpu().numpy()


@torch.no_grad()
def _embed_in_batches(
    images: Sequence[Image.Image],
    processor: Any,
    device: torch.device,
    features: Callable[[torch.Tensor], torch.Tensor],
) -> np.ndarray:
    """Unit embeddings [len(images), D]: ``features`` of the processor's pixels, in batches."""
    rows = []
    for i in range(0, len(images), EMBED_BATCH):
        batch = [im.convert("RGB") for im in images[i : i + EMBED_BATCH]]
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        rows.append(_unit(features(pixels)))
    return np.concatenate(rows)


class HFClip:
    """CLIP through transformers, from the local cache only."""

    def __init__(self, repo: str, device: torch.device) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.processor = CLIPProcessor.from_pretrained(repo, local_files_only=True)
        self.model = CLIPModel.from_pretrained(repo, local_files_only=True).to(device).eval()
        self.device = device

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        def features(pixels: torch.Tensor) -> torch.Tensor:
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            return self.model.visual_projection(pooled)

        return _embed_in_batches(images, self.processor, self.device, features)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.processor(
            text=list(texts), return_tensors="pt", padding=True, truncation=True
        ).to(self.device)
        pooled = self.model.text_model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output
        return _unit(self.model.text_projection(pooled))


class HFDino:
    """DINO (a ViT) through transformers, from the local cache only: its CLS embedding."""

    def __init__(self, repo: str, device: torch.device) -> None:
        from transformers import AutoImageProcessor, ViTModel

        self.processor = AutoImageProcessor.from_pretrained(repo, local_files_only=True)
        self.model = ViTModel.from_pretrained(
            repo, add_pooling_layer=False, local_files_only=True
        ).to(device)
        self.model.eval()
        self.device = device

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        def features(pixels: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixels).last_hidden_state[:, 0]

        return _embed_in_batches(images, self.processor, self.device, features)


def load_scorers(device: torch.device, models: dict[str, str] = SCORE_MODELS) -> Scorers:
    """The evaluation models found in the local Hugging Face cache; a missing one is skipped
    (never downloaded) with a note in ``skipped``."""
    scorers = Scorers()
    for name, kind in (("clip", HFClip), ("dino", HFDino)):
        try:
            setattr(scorers, name, kind(models[name], device))
        except OSError:
            scorers.skipped.append(f"scores skipped: {models[name]} not in the local cache")
    return scorers


def prompt_text(composition: Composition) -> str:
    """The prompt as CLIP-T reads it: SIGMA's raw prompt without its attribute tokens and
    <image_k> placeholders."""
    raw, _ = composition.raw_prompt()
    text = IMAGE_PLACEHOLDER.sub(" ", raw)
    for m in reversed(find_attribute_tokens(text)):
        text = f"{text[: m.start()]} {text[m.end() :]}"
    return re.sub(r"\s+([,.;:!?])", r"\1", " ".join(text.split()))


def score_images(
    scorers: Scorers,
    images: Sequence[Image.Image],
    text: str,
    references: Sequence[Image.Image],
) -> list[dict[str, float]]:
    """The scores of each image: cosine similarities of the models' embeddings, with ``text``
    (CLIP-T) and averaged over ``references`` (CLIP-I, DINO). A metric whose model is missing,
    or that needs references where there are none, is left out."""
    scores: list[dict[str, float]] = [{} for _ in images]
    if scorers.clip is not None:
        found = scorers.clip.embed_images(images)
        for row, s in zip(found @ scorers.clip.embed_texts([text])[0], scores, strict=True):
            s["clip_t"] = float(row)
        if references:
            refs = scorers.clip.embed_images(references)
            for row, s in zip(found @ refs.T, scores, strict=True):
                s["clip_i"] = float(row.mean())
    if scorers.dino is not None and references:
        found, refs = scorers.dino.embed_images(images), scorers.dino.embed_images(references)
        for row, s in zip(found @ refs.T, scores, strict=True):
            s["dino"] = float(row.mean())
    return scores
