"""sigma_core: SIGMA's multi-reference composition on BAGEL, as a library.

The public API (names are loaded on first use, so ``import sigma_core`` stays light; type
checkers read them from the TYPE_CHECKING block below)::

    from sigma_core import SigmaPipeline, Composition, Reference, Settings, load_preset

    pipe = SigmaPipeline.from_pretrained("ByteDance-Seed/BAGEL-7B-MoT")  # or .preview_engine()
    out = pipe(load_preset("presets/combine_astronaut_cat_rocket.json"))

The layers, lowest first (each imports only those below it): ``errors`` and ``geometry``;
``inputs`` (what users give); ``planning`` (the token plan and the mask) beside ``model`` (the
MoT, the VAE); ``runtime`` (loading, sampling, the pipeline); ``report`` (what users see);
``cli``. What a front end needs beyond the engine (vocabulary, the settings' spec table,
limits, prompt and image helpers, the report) is :mod:`sigma_core.frontend`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sigma_core.lazy import lazy_package


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

if TYPE_CHECKING:  # the public API; names load on first use (sigma_core.lazy)
    from sigma_core.errors import (
        CheckpointError as CheckpointError,
        GenerationCancelled as GenerationCancelled,
        ImageInputError as ImageInputError,
        PresetError as PresetError,
        PromptError as PromptError,
        SigmaError as SigmaError,
        SigmaInputError as SigmaInputError,
        SigmaOutOfMemoryError as SigmaOutOfMemoryError,
        SigmaResourceError as SigmaResourceError,
    )
    from sigma_core.inputs.attributes import ATTRIBUTES as ATTRIBUTES
    from sigma_core.inputs.composition import (
        Composition as Composition,
        Reference as Reference,
    )
    from sigma_core.inputs.preset import (
        load_composition as load_composition,
        load_preset as load_preset,
        read_png_composition as read_png_composition,
        save_preset as save_preset,
    )
    from sigma_core.inputs.settings import Settings as Settings
    from sigma_core.planning.sequence import (
        Plan as Plan,
        build_plan as build_plan,
    )
    from sigma_core.runtime.memory import (
        MemoryEstimate as MemoryEstimate,
        estimate_memory as estimate_memory,
    )
    from sigma_core.runtime.output import (
        CancelToken as CancelToken,
        SigmaOutput as SigmaOutput,
    )
    from sigma_core.runtime.pipeline import SigmaPipeline as SigmaPipeline

if not TYPE_CHECKING:  # type checkers see the imports above; a misspelt name is an error
    __all__, __getattr__, __dir__ = lazy_package(__name__)
