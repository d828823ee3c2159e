"""sigma_core: SIGMA's multi-reference composition on BAGEL, as a library.

The public API (names are loaded on first use, so ``import sigma_core`` stays light)::

    from sigma_core import SigmaPipeline, Composition, Reference, Settings, load_preset

    pipe = SigmaPipeline.from_pretrained("ByteDance-Seed/BAGEL-7B-MoT")  # or .preview_engine()
    out = pipe(load_preset("presets/combine_astronaut_cat_rocket.json"))

The layers, lowest first (each imports only those below it): ``errors`` and ``geometry``;
``inputs`` (what users give); ``planning`` (the token plan and the mask) beside ``model`` (the
MoT, the VAE); ``runtime`` (loading, sampling, the pipeline); ``report`` (what users see);
``cli``.
"""

from __future__ import annotations

import logging

from sigma_core.lazy import lazy_exports


class _DropBitsandbytesKernelNotice(logging.Filter):
    """bitsandbytes logs a warning at import on CPUs without its optional 'kernels' package;
    the fallback it then uses is fine, so users should not see it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "gemm_4bit_forward" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropBitsandbytesKernelNotice())

_EXPORTS = {
    "ATTRIBUTES": "sigma_core.inputs.attributes",
    "Composition": "sigma_core.inputs.composition",
    "Reference": "sigma_core.inputs.composition",
    "Settings": "sigma_core.inputs.settings",
    "load_preset": "sigma_core.inputs.preset",
    "save_preset": "sigma_core.inputs.preset",
    "loads_preset": "sigma_core.inputs.preset",
    "dumps_preset": "sigma_core.inputs.preset",
    "load_composition": "sigma_core.inputs.preset",
    "read_png_composition": "sigma_core.inputs.preset",
    "write_png": "sigma_core.inputs.preset",
    "Plan": "sigma_core.planning.sequence",
    "build_plan": "sigma_core.planning.sequence",
    "SigmaPipeline": "sigma_core.runtime.pipeline",
    "SigmaOutput": "sigma_core.runtime.output",
    "CancelToken": "sigma_core.runtime.output",
    "PREVIEW_NOTICE": "sigma_core.runtime.output",
    "SigmaError": "sigma_core.errors",
    "SigmaInputError": "sigma_core.errors",
    "PresetError": "sigma_core.errors",
    "ImageInputError": "sigma_core.errors",
    "PromptError": "sigma_core.errors",
    "CheckpointError": "sigma_core.errors",
    "SigmaResourceError": "sigma_core.errors",
    "SigmaOutOfMemoryError": "sigma_core.errors",
    "GenerationCancelled": "sigma_core.errors",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
