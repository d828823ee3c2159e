"""BAGEL's image-generation path in plain torch: the Qwen2 mixture-of-transformers LLM, the latent
connectors, the FLUX VAE and the precision modes. Module and parameter names follow the official
``Bagel`` class, so the published ``ema.safetensors`` loads unchanged.

Names load on first use: the precision constants need only torch, the VAE also diffusers.
"""

from __future__ import annotations

from sigma_core.lazy import lazy_exports

_EXPORTS = {
    "BagelGenerator": "sigma_core.model.bagel",
    "DenoiseContext": "sigma_core.model.bagel",
    "patchify": "sigma_core.model.bagel",
    "sincos_2d_table": "sigma_core.model.bagel",
    "unpatchify": "sigma_core.model.bagel",
    "CacheMark": "sigma_core.model.cache",
    "KVCache": "sigma_core.model.cache",
    "LLMConfig": "sigma_core.model.config",
    "Routing": "sigma_core.model.mot",
    "Span": "sigma_core.model.mot",
    "OFFLOAD_MODES": "sigma_core.model.modes",
    "PRECISIONS": "sigma_core.model.modes",
    "VAE_DTYPES": "sigma_core.model.modes",
    "Precision": "sigma_core.model.precision",
    "resolve_precision": "sigma_core.model.precision",
    "FluxVAE": "sigma_core.model.vae",
    "flux_vae_config": "sigma_core.model.vae",
    "check_tensors": "sigma_core.model.weights",
    "header_shapes": "sigma_core.model.weights",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
