"""The names of the precision, offload and training modes, importable without torch (the CLI's
parser and the studio's controls list them before anything heavy loads). What each mode does is
in :mod:`sigma_core.model.precision`, :mod:`sigma_core.runtime.placement` and
:mod:`sigma_core.training.trainer`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from sigma_core.errors import SigmaInputError

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
# The help of the engine flags, shared by the CLI and the studio so the two say the same.
FLAG_HELP = {
    "precision": "int8 and nf4 quantize the LLM (bitsandbytes), fp8 needs torchao and an "
    "Ada/Hopper GPU",
    "vae-dtype": "the VAE's weights: fp32 as the official code (bf16 saves memory, ~1.5%% error)",
    "offload": "none; model (LLM and VAE take turns on the GPU); sequential (one layer at a "
    "time, for ~8 GB cards, slow)",
    "device-map": "auto: spread the decoder layers over every visible GPU",
}
# What a training run trains (its `train` setting), also read back from exported weights' record.
TRAINABLE = ("gen", "full", "lora")


@dataclass(frozen=True)
class EngineChoice:
    """The engine flags of ``generate`` and ``evaluate generate`` as given (``precision`` "auto"
    included), so a run can record them and compare them on resume; each is checked when the
    engine loads (:func:`sigma_core.runtime.engine.load_engine`)."""

    checkpoint: str | None = None
    sigma_weights: str | None = None
    precision: str = "auto"
    vae_dtype: str = "fp32"
    offload: str = "none"
    device_map: str | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.sigma_weights and not self.checkpoint:
            raise SigmaInputError(
                "--sigma-weights needs --checkpoint (the BAGEL folder that supplies the configs, "
                "the VAE and the tokenizer); the preview engine has no real weights to override"
            )

    @classmethod
    def from_args(cls, args: Any) -> EngineChoice:
        """The choice from parsed options named as these fields (the CLI's engine options)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def load_options(self, device: Any) -> dict[str, Any]:
        """The options of ``SigmaPipeline.from_pretrained`` on ``device``."""
        return {
            "precision": None if self.precision == "auto" else self.precision,
            "vae_dtype": self.vae_dtype,
            "offload": self.offload,
            "device_map": self.device_map,
            "compile": self.compile,
            "device": device,
        }
