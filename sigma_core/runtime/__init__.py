"""The runtime: loading checkpoints, the sampler, the CFG contexts and :class:`SigmaPipeline`.

Names load on first use: :func:`resolve_device` needs only torch, the pipeline also diffusers.
"""

from __future__ import annotations

from sigma_core.lazy import lazy_exports

_EXPORTS = {
    "CALLBACK_TENSORS": "sigma_core.runtime.contexts",
    "CFGContexts": "sigma_core.runtime.contexts",
    "Denoiser": "sigma_core.runtime.contexts",
    "prefill_contexts": "sigma_core.runtime.contexts",
    "available_memory": "sigma_core.runtime.device",
    "resolve_device": "sigma_core.runtime.device",
    "LIVE_PREVIEW_TENSORS": "sigma_core.runtime.live_preview",
    "LatentPreviewer": "sigma_core.runtime.live_preview",
    "estimate_x0": "sigma_core.runtime.live_preview",
    "fit_latent_rgb": "sigma_core.runtime.live_preview",
    "previewer_for": "sigma_core.runtime.live_preview",
    "step_x0": "sigma_core.runtime.live_preview",
    "vae_identity": "sigma_core.runtime.live_preview",
    "LoadReport": "sigma_core.runtime.loader",
    "load_generator": "sigma_core.runtime.loader",
    "resolve_checkpoint": "sigma_core.runtime.loader",
    "MemoryEstimate": "sigma_core.runtime.memory",
    "MemoryMeter": "sigma_core.runtime.memory",
    "estimate_memory": "sigma_core.runtime.memory",
    "CancelToken": "sigma_core.runtime.output",
    "PREVIEW_NOTICE": "sigma_core.runtime.output",
    "SigmaOutput": "sigma_core.runtime.output",
    "OUTPUT_TYPES": "sigma_core.runtime.output",
    "SigmaPipeline": "sigma_core.runtime.pipeline",
    "Guidance": "sigma_core.runtime.sampler",
    "euler_step": "sigma_core.runtime.sampler",
    "guide": "sigma_core.runtime.sampler",
    "timesteps": "sigma_core.runtime.sampler",
    "make_tiny_checkpoint": "sigma_core.runtime.tiny",
    "preview_checkpoint": "sigma_core.runtime.tiny",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
