"""AES: the LAION aesthetic predictor ("improved aesthetic predictor", christophschuhmann), an
MLP from a unit CLIP ViT-L/14 image embedding to a rating (about 1-10; good photos score 5-6).
Its published weights, sac+logos+ava1-l14-linearMSE.pth, are a plain state dict in exactly the
layout of :class:`AestheticHead`; they are read as tensors only (safetensors, or torch.load with
weights_only=True), never unpickled as objects.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sigma_core.evaluation.embedders import ModelUnavailable, download_hint

DEFAULT_AES = "camenduru/improved-aesthetic-predictor"  # a hub copy of the published file
AES_FILE = "sac+logos+ava1-l14-linearMSE.pth"
SAFETENSORS_FILE = "model.safetensors"
CLIP_DIM = 768  # CLIP ViT-L/14's projection


class AestheticHead(nn.Module):
    """The predictor's MLP, keys as published: layers.{0,2,4,6,7}; [N, 768] -> [N]."""

    def __init__(self, dim: int = CLIP_DIM) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )  # fmt: skip

    @torch.no_grad()
    def score(self, unit_embeddings: np.ndarray) -> np.ndarray:
        """The rating of each unit CLIP image embedding: [N, 768] -> [N] (float64)."""
        x = torch.as_tensor(unit_embeddings, dtype=torch.float32)
        return self.layers(x)[:, 0].to(torch.float64).numpy()


def aesthetic_file(given: str) -> Path:
    """The weights file ``given`` names: a file, a folder holding the published file (or
    model.safetensors), or a hub id whose copy is in the local cache."""
    path = Path(given)
    if path.is_file():
        return path
    if path.is_dir():
        for name in (AES_FILE, SAFETENSORS_FILE):
            if (path / name).is_file():
                return path / name
        raise ModelUnavailable(f"AES: {given} holds neither {AES_FILE} nor {SAFETENSORS_FILE}")
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(given, AES_FILE) if given.count("/") == 1 else None
    if isinstance(found, str):
        return Path(found)
    raise ModelUnavailable(
        f"AES: the LAION aesthetic predictor ({AES_FILE}) is not on disk at {given}; "
        f"{download_hint(f'{given} {AES_FILE}')}, or pass --aes-model FILE"
    )


def load_aesthetic(given: str, clip_dim: int) -> AestheticHead:
    """The head with the weights ``given`` names, loaded strictly (a key or shape that differs
    from the published layout is refused). ``clip_dim`` is the CLIP it will read from."""
    if clip_dim != CLIP_DIM:
        raise ModelUnavailable(
            f"AES: the predictor reads CLIP ViT-L/14 embeddings ({CLIP_DIM} values); the CLIP "
            f"loaded gives {clip_dim}"
        )
    file = aesthetic_file(given)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(file)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
        head = AestheticHead()
        head.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, TypeError, pickle.UnpicklingError) as e:
        raise ModelUnavailable(f"AES: {file} is not the predictor's weights ({e})") from None
    return head.eval()
