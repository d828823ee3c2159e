"""Tiny random evaluation models for the tests: a CLIP (character-level tokenizer, projection
768 as ViT-L/14's, so AES reads it), a DINO (a ViTModel as facebook/dino-vits16 is, or a DINOv2)
and the aesthetic head, each saved to a folder and loaded through the real loading path; built
from small configs, never downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sigma_core.evaluation import aesthetic

CPU = torch.device("cpu")
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": 32, "patch_size": 8}  # fmt: skip


def clip_folder(folder: Path) -> Path:
    """A random CLIP with a character-level tokenizer; projection 768, as ViT-L/14's (AES)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    chars = [chr(i) for i in range(33, 127)]
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars)])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    text = {k: v for k, v in TINY.items() if k not in ("image_size", "patch_size")}
    text |= {"vocab_size": len(vocab), "max_position_embeddings": 64,
             "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
             "pad_token_id": tok.pad_token_id}  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=TINY, projection_dim=768)).save_pretrained(
        folder
    )
    return folder


def dino_folder(folder: Path, v2: bool = False) -> Path:
    """A random DINO: a ViTModel as facebook/dino-vits16 is (or a DINOv2)."""
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(1)
    model = Dinov2Model(Dinov2Config(**TINY)) if v2 else ViTModel(ViTConfig(**TINY), False)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def score(run: Path, models: dict[str, Path], *extra: str) -> int:
    """``evaluate score RUN`` in this process with the tiny models, on CPU; DreamSim's weights
    are never on disk here, so it is skipped."""
    from sigma_core import cli

    argv = ["evaluate", "score", str(run), "--clip-model", str(models["clip"]),
            "--dino-model", str(models["dino"]), "--aes-model", str(models["aes"]),
            "--dreamsim-model", str(run.parent / "no-dreamsim"), "--device", "cpu",
            *extra]  # fmt: skip
    return cli.main(argv)


def eval_models(root: Path) -> dict[str, Path]:
    """The tiny CLIP, DINO and aesthetic head in folders under ``root``, by kind."""
    clip, dino = root / "clip", root / "dino"
    clip.mkdir(), dino.mkdir()
    torch.manual_seed(2)
    aes = root / "aes.pth"
    torch.save(aesthetic.AestheticHead().state_dict(), aes)  # the published file's layout
    return {"clip": clip_folder(clip), "dino": dino_folder(dino), "aes": aes}
