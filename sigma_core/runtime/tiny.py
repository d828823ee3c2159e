"""Tiny random checkpoints in exactly the official BAGEL layout.

They let tests, benchmarks and the offline preview engine run the real loading and sampling code
without the 29 GB download. Every file and tensor name is the official one; only the sizes
(set in llm_config.json, vit_config.json and, for the VAE, ae_config.json) are small. A marker
file says the weights are random, so every result made with them is labelled as a preview.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from sigma_core.errors import SigmaInputError
from sigma_core.inputs.fields import is_int, shown
from sigma_core.limits import MAX_SEED, MAX_TINY_LAYERS
from sigma_core.model.bagel import BagelGenerator, sincos_2d_table
from sigma_core.model.config import LLMConfig
from sigma_core.model.vae import TINY_VAE_CONFIG, write_random_flux_ae
from sigma_core.planning.tokenizer import make_tiny_tokenizer
from sigma_core.runtime.loader import AE_FILE, LLM_CONFIG_FILE, PREVIEW_MARKER, WEIGHTS_FILE
from sigma_core.user_cache import cached_folder

VIT_GRID = 70  # SigLIP positions per side at 980 px / patch 14, as in BAGEL
VIT_PATCH_DIM = 3 * 14 * 14  # the patch conv stored as Linear(588 -> hidden)


def preview_checkpoint() -> Path:
    """The offline preview engine's tiny random checkpoint, written once into the user cache."""
    return cached_folder("preview-checkpoint", make_tiny_checkpoint)


def tiny_llm_config(vocab_size: int, *, layers: int = 2, hidden: int = 64) -> LLMConfig:
    """Hidden 64 by default; benchmarks widen it (heads of 16, two query heads per KV head)."""
    return LLMConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 16,
        num_key_value_heads=hidden // 32,
        vocab_size=vocab_size,
        rope_theta=1_000_000.0,
    )


def write_new_tiny_checkpoint(out_dir: str | os.PathLike, **options: Any) -> Path:
    """:func:`make_tiny_checkpoint` into ``out_dir``, which must be new or empty: written into
    a private folder beside it first and moved in place when complete, so a failure never
    leaves half a checkpoint. ``options`` as for make_tiny_checkpoint."""
    _check_options(options.get("seed", 0), options.get("layers", 2))
    out = Path(out_dir)
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise SigmaInputError(
                f"OUT_DIR: {str(out_dir)!r} already exists and is not an empty folder; "
                "choose a new folder"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or e
        raise SigmaInputError(f"OUT_DIR: cannot write {str(out_dir)!r} ({reason})") from None
    try:
        make_tiny_checkpoint(staging, **options)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except OSError as e:
        raise SigmaInputError(
            f"OUT_DIR: cannot write {str(out_dir)!r} ({e.strerror or e})"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_options(seed: Any, layers: Any) -> None:
    if not is_int(layers) or not 1 <= layers <= MAX_TINY_LAYERS:
        raise SigmaInputError(f"layers: {shown(layers)} must be from 1 to {MAX_TINY_LAYERS}")
    if not is_int(seed) or not 0 <= seed < MAX_SEED:
        raise SigmaInputError(f"seed: {shown(seed)} must be 0 <= seed < 2^63")


def make_tiny_checkpoint(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    layers: int = 2,
    attribute_embed: bool = False,
    vit_hidden: int = 32,
    hidden: int = 64,
) -> Path:
    """Write a random checkpoint folder; returns its path. Deterministic for a given seed."""
    _check_options(seed, layers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    make_tiny_tokenizer(out)
    tok = json.loads((out / "tokenizer.json").read_text())
    n_tokens = len(tok["model"]["vocab"]) + len(tok["added_tokens"])
    # Like BAGEL's 152,064 rows for 151,680 tokens: a table rounded up past the tokenizer.
    if not is_int(hidden) or not 64 <= hidden <= 4096 or hidden % 64:
        raise SigmaInputError(f"hidden: {shown(hidden)} must be a multiple of 64 from 64 to 4096")
    cfg = tiny_llm_config(vocab_size=-(-n_tokens // 64) * 64, layers=layers, hidden=hidden)
    (out / LLM_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    vit_layers = 2
    vit_cfg = {
        "model_type": "siglip_vision_model",
        "hidden_size": vit_hidden,
        "intermediate_size": 2 * vit_hidden,
        "num_hidden_layers": vit_layers + 1,  # BAGEL builds one layer fewer than the file says
        "num_attention_heads": 2,
        "num_channels": 3,
        "image_size": 980,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
    }
    (out / "vit_config.json").write_text(json.dumps(vit_cfg, indent=2) + "\n")

    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = BagelGenerator(cfg, attribute_embed=attribute_embed)
    tensors = {k: _random(k, tuple(v.shape), gen) for k, v in model.state_dict().items()}
    tensors["latent_pos_embed.pos_embed"] = sincos_2d_table(cfg.hidden_size, model.max_latent_size)
    tensors |= _vit_and_head_tensors(cfg, vit_hidden, vit_layers, gen)

    from safetensors.torch import save_file

    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()},
        str(out / WEIGHTS_FILE),
        metadata={"format": "pt"},
    )
    write_random_flux_ae(out / AE_FILE, TINY_VAE_CONFIG, seed=seed)
    marker = {"preview": True, "seed": seed, "note": "random weights written by make-tiny"}
    (out / PREVIEW_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return out


def _random(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Weights that keep activations O(1) through a few layers; norms near 1, not exactly 1,
    and every tensor (both experts, llm2vae) drawn independently so mistakes show."""
    if key.endswith("norm.weight") or "layernorm" in key or "_norm" in key:
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if key.endswith(".bias"):
        return 0.02 * torch.randn(shape, generator=gen)
    fan_in = shape[-1] if len(shape) > 1 else 1
    return torch.randn(shape, generator=gen) / fan_in**0.5


def _vit_and_head_tensors(
    cfg: LLMConfig, vit: int, layers: int, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """The tensors of the official checkpoint that generation skips: SigLIP, its connector,
    the ViT position table and lm_head. Written so the loader's skipping is exercised."""
    d = cfg.hidden_size
    shapes = {
        "language_model.lm_head.weight": (cfg.vocab_size, d),
        "vit_model.vision_model.embeddings.position_embedding.weight": (VIT_GRID**2, vit),
        "vit_model.vision_model.embeddings.patch_embedding.weight": (vit, VIT_PATCH_DIM),
        "vit_model.vision_model.embeddings.patch_embedding.bias": (vit,),
        "vit_model.vision_model.post_layernorm.weight": (vit,),
        "vit_model.vision_model.post_layernorm.bias": (vit,),
        "connector.fc1.weight": (d, vit),
        "connector.fc1.bias": (d,),
        "connector.fc2.weight": (d, d),
        "connector.fc2.bias": (d,),
    }
    for i in range(layers):
        p = f"vit_model.vision_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (vit, vit)
            shapes[p + f"self_attn.{proj}.bias"] = (vit,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[p + f"{ln}.weight"] = (vit,)
            shapes[p + f"{ln}.bias"] = (vit,)
        shapes[p + "mlp.fc1.weight"] = (2 * vit, vit)
        shapes[p + "mlp.fc1.bias"] = (2 * vit,)
        shapes[p + "mlp.fc2.weight"] = (vit, 2 * vit)
        shapes[p + "mlp.fc2.bias"] = (vit,)
    out = {k: _random(k, s, gen) for k, s in shapes.items()}
    out["vit_pos_embed.pos_embed"] = sincos_2d_table(d, VIT_GRID)
    return out
