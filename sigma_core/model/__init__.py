"""BAGEL's image-generation path in plain torch: the Qwen2 mixture-of-transformers LLM, the latent
connectors and the FLUX VAE. Module and parameter names follow the official ``Bagel`` class, so the
published ``ema.safetensors`` loads unchanged."""

from sigma_core.model.bagel import (
    BagelGenerator,
    DenoiseContext,
    patchify,
    sincos_2d_table,
    unpatchify,
)
from sigma_core.model.cache import CacheMark, KVCache
from sigma_core.model.config import LLMConfig
from sigma_core.model.mot import Routing, Span
from sigma_core.model.vae import FluxVAE, flux_vae_config
from sigma_core.model.weights import check_tensors, header_shapes

__all__ = [
    "BagelGenerator",
    "CacheMark",
    "DenoiseContext",
    "FluxVAE",
    "KVCache",
    "LLMConfig",
    "Routing",
    "Span",
    "check_tensors",
    "flux_vae_config",
    "header_shapes",
    "patchify",
    "sincos_2d_table",
    "unpatchify",
]
