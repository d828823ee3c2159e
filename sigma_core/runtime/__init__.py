"""The runtime: loading checkpoints, the sampler, the CFG contexts and :class:`SigmaPipeline`."""

from sigma_core.runtime.contexts import CALLBACK_TENSORS, CFGContexts, Denoiser, prefill_contexts
from sigma_core.runtime.loader import LoadReport, load_generator, resolve_checkpoint
from sigma_core.runtime.output import PREVIEW_NOTICE, CancelToken, SigmaOutput
from sigma_core.runtime.pipeline import OUTPUT_TYPES, SigmaPipeline
from sigma_core.runtime.sampler import Guidance, euler_step, guide, timesteps
from sigma_core.runtime.tiny import make_tiny_checkpoint, preview_checkpoint

__all__ = [
    "CALLBACK_TENSORS",
    "OUTPUT_TYPES",
    "PREVIEW_NOTICE",
    "CFGContexts",
    "CancelToken",
    "Denoiser",
    "Guidance",
    "LoadReport",
    "SigmaOutput",
    "SigmaPipeline",
    "euler_step",
    "guide",
    "load_generator",
    "make_tiny_checkpoint",
    "prefill_contexts",
    "preview_checkpoint",
    "resolve_checkpoint",
    "timesteps",
]
