"""The runtime: loading checkpoints, the sampler, the CFG contexts and :class:`SigmaPipeline`.

Names load on first use: :func:`resolve_device` needs only torch, the pipeline also diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sigma_core.lazy import lazy_package

if TYPE_CHECKING:  # the names; they load on first use (sigma_core.lazy)
    from sigma_core.runtime.contexts import (
        CALLBACK_TENSORS as CALLBACK_TENSORS,
        CFGContexts as CFGContexts,
        Denoiser as Denoiser,
        prefill_contexts as prefill_contexts,
    )
    from sigma_core.runtime.device import (
        available_memory as available_memory,
        resolve_device as resolve_device,
    )
    from sigma_core.runtime.live_preview import (
        LIVE_PREVIEW_TENSORS as LIVE_PREVIEW_TENSORS,
        LatentPreviewer as LatentPreviewer,
        estimate_x0 as estimate_x0,
        fit_latent_rgb as fit_latent_rgb,
        previewer_for as previewer_for,
        step_x0 as step_x0,
        vae_identity as vae_identity,
    )
    from sigma_core.runtime.loader import (
        LoadReport as LoadReport,
        load_generator as load_generator,
        resolve_checkpoint as resolve_checkpoint,
    )
    from sigma_core.runtime.memory import (
        MemoryEstimate as MemoryEstimate,
        MemoryMeter as MemoryMeter,
        estimate_memory as estimate_memory,
    )
    from sigma_core.runtime.output import (
        OUTPUT_TYPES as OUTPUT_TYPES,
        PREVIEW_NOTICE as PREVIEW_NOTICE,
        CancelToken as CancelToken,
        SigmaOutput as SigmaOutput,
    )
    from sigma_core.runtime.pipeline import SigmaPipeline as SigmaPipeline
    from sigma_core.runtime.sampler import (
        Guidance as Guidance,
        euler_step as euler_step,
        guide as guide,
        timesteps as timesteps,
    )
    from sigma_core.runtime.tiny import (
        make_tiny_checkpoint as make_tiny_checkpoint,
        preview_checkpoint as preview_checkpoint,
    )

if not TYPE_CHECKING:  # type checkers see the imports above; a misspelt name is an error
    __all__, __getattr__, __dir__ = lazy_package(__name__)
