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


class _DropBitsandbytesNotices(logging.Filter):
    """bitsandbytes logs a warning at import on CPUs when its optional 'kernels' CPU kernel is
    missing or cannot be fetched (its fallback is fine); the 'kernels' package, when installed
    (transformers pulls it in), logs that offline mode skips its publisher check; and
    bitsandbytes logs one on every int8 matmul that casts bf16/fp32 inputs to fp16 (that is how
    LLM.int8 works): users should see none of them."""

    NOTICES = (
        "gemm_4bit_forward",
        "MatMul8bitLt: inputs will be cast",
        "Skipping publisher trust check",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(notice in text for notice in self.NOTICES)


for _name in (
    "bitsandbytes.backends.cpu.ops",
    "bitsandbytes.autograd._functions",
    "kernels._internals.hf_hub",
):
    logging.getLogger(_name).addFilter(_DropBitsandbytesNotices())

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
    "MemoryEstimate": "sigma_core.runtime.memory",
    "available_memory": "sigma_core.runtime.device",
    "estimate_memory": "sigma_core.runtime.memory",
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
    # What the studio needs beyond the engine: vocabulary, prompt helpers, images, the report,
    # and the bounds its controls show (so a slider never offers what the core refuses).
    "DESCRIPTIONS": "sigma_core.inputs.attributes",
    "RENORM_TYPES": "sigma_core.inputs.settings",
    "LAYOUT_CHOICES": "sigma_core.inputs.settings",
    "SETTING_SPECS": "sigma_core.inputs.settings",
    "is_raw": "sigma_core.inputs.prompt",
    "placed_slots": "sigma_core.inputs.prompt",
    "renumber_slots": "sigma_core.inputs.prompt",
    "load_image": "sigma_core.inputs.images",
    "vae_resize": "sigma_core.inputs.images",
    "embeddable_bytes": "sigma_core.inputs.images",
    "image_format": "sigma_core.inputs.images",
    "find_attribute_tokens": "sigma_core.inputs.attributes",
    "plan_report": "sigma_core.report.plan_report",
    "mask_png": "sigma_core.report.mask_picture",
    "GROUP_COLORS": "sigma_core.report.mask_picture",
    "BAGEL_REPO": "sigma_core.runtime.loader",
    "LIVE_PREVIEW_TENSORS": "sigma_core.runtime.live_preview",
    "latent_grid": "sigma_core.geometry",
    "MIN_SIDE": "sigma_core.geometry",
    "MAX_SIDE": "sigma_core.geometry",
    "TOKEN_STRIDE": "sigma_core.geometry",
    "MAX_REFERENCES": "sigma_core.limits",
    "MAX_PROMPT_CHARS": "sigma_core.limits",
    "MAX_ENTITY_CHARS": "sigma_core.limits",
    "MAX_NAME_CHARS": "sigma_core.limits",
    "MIN_TIMESTEPS": "sigma_core.limits",
    "MAX_TIMESTEPS": "sigma_core.limits",
    "MAX_CFG_SCALE": "sigma_core.limits",
    "MIN_SHIFT": "sigma_core.limits",
    "MAX_SHIFT": "sigma_core.limits",
    "MAX_SEED": "sigma_core.limits",
    "PRECISIONS": "sigma_core.model.modes",
    "PRECISION_HELP": "sigma_core.model.modes",
    "VAE_DTYPES": "sigma_core.model.modes",
    "OFFLOAD_MODES": "sigma_core.model.modes",
    "OFFLOAD_HELP": "sigma_core.model.modes",
    "FLAG_HELP": "sigma_core.model.modes",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
