"""The names of the precision and offload modes, importable without torch (the CLI's parser and
the studio's controls list them before anything heavy loads). What each mode does is in
:mod:`sigma_core.model.precision` and :mod:`sigma_core.runtime.placement`."""

from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4", "fp8")
QUANTIZED = ("int8", "nf4", "fp8")
VAE_DTYPES = ("fp32", "bf16", "fp16")
PRECISION_HELP = (
    "fp32, bf16 and fp16 hold every weight in that type; int8 and nf4 quantize the LLM's linear "
    "layers with bitsandbytes (about 1/2 and 1/4 of bf16's memory); fp8 needs torchao and a GPU "
    "of compute capability 8.9 or later (Ada, Hopper)"
)
OFFLOAD_MODES = ("none", "model", "sequential")
OFFLOAD_HELP = (
    "none keeps everything on the GPU; model moves the LLM and the VAE to the GPU in turn; "
    "sequential streams one layer at a time (for about 8 GB cards, slow)"
)
