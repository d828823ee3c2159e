"""BAGEL's image-generation path in plain torch: the Qwen2 mixture-of-transformers LLM, the latent
connectors, the FLUX VAE and the precision modes. Module and parameter names follow the official
``Bagel`` class, so the published ``ema.safetensors`` loads unchanged.

Names load on first use: the precision constants need only torch, the VAE also diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sigma_core.lazy import lazy_package

if TYPE_CHECKING:  # the names; they load on first use (sigma_core.lazy)
    from sigma_core.model.bagel import (
        BagelGenerator as BagelGenerator,
        DenoiseContext as DenoiseContext,
        patchify as patchify,
        sincos_2d_table as sincos_2d_table,
        unpatchify as unpatchify,
    )
    from sigma_core.model.cache import (
        CacheMark as CacheMark,
        KVCache as KVCache,
    )
    from sigma_core.model.config import LLMConfig as LLMConfig
    from sigma_core.model.modes import (
        OFFLOAD_MODES as OFFLOAD_MODES,
        PRECISIONS as PRECISIONS,
        VAE_DTYPES as VAE_DTYPES,
    )
    from sigma_core.model.mot import (
        Routing as Routing,
        Span as Span,
    )
    from sigma_core.model.precision import (
        Precision as Precision,
        resolve_precision as resolve_precision,
    )
    from sigma_core.model.vae import (
        FluxVAE as FluxVAE,
        flux_vae_config as flux_vae_config,
    )
    from sigma_core.model.weights import (
        check_tensors as check_tensors,
        header_shapes as header_shapes,
    )

if not TYPE_CHECKING:  # type checkers see the imports above; a misspelt name is an error
    __all__, __getattr__, __dir__ = lazy_package(__name__)
