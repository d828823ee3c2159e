"""Precision modes: which dtype each part of the model holds, and how the LLM's linear layers
are quantized.

- fp32, bf16, fp16: every weight in that dtype.
- int8 (LLM.int8, outlier threshold 6) and nf4 (4-bit NormalFloat, blocks of 64, double-quantized
  absmax): bitsandbytes layers replace every nn.Linear of the decoder layers, both experts, on the
  meta device before anything loads, so each weight is quantized as it is read and no
  full-precision copy of the model ever exists.
- fp8 (torchao, float8 weights and dynamic per-row float8 activations; GPUs of compute
  capability 8.9 or later): each decoder layer is quantized as soon as its weights are loaded.

Embeddings, norms, connectors (vae2llm, llm2vae), the time embedder and W_tau keep the compute
dtype: bf16 on a GPU, fp32 on the CPU for the quantized modes. The VAE is separate: fp32 by
default, as the official code keeps it (see :data:`VAE_DTYPES`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from sigma_core.errors import SigmaInputError
from sigma_core.model.modes import PRECISION_HELP, PRECISIONS, QUANTIZED

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NF4_BLOCK = 64
INT8_THRESHOLD = 6.0
FP8_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class Precision:
    """A precision mode on one device: ``name`` (one of :data:`PRECISIONS`) and the dtype of
    every weight that is not quantized, of activations and of the KV cache."""

    name: str
    dtype: torch.dtype

    @property
    def quantized(self) -> bool:
        return self.name in QUANTIZED

    def linear_weight_bytes(self, out_features: int, in_features: int) -> int:
        """Memory of one quantized-or-not decoder Linear weight [out, in] in this mode, with
        its scales: int8 keeps one fp32 scale per row; nf4 packs two weights a byte plus an
        8-bit absmax per 64-block (fp32 second-level absmax per 256 blocks); fp8 one byte a
        weight and one fp32 scale per row."""
        n = out_features * in_features
        if self.name == "int8":
            return n + 4 * out_features
        if self.name == "nf4":
            blocks = -(-n // NF4_BLOCK)
            return n // 2 + blocks + 4 * -(-blocks // 256) + 64
        if self.name == "fp8":
            return n + 4 * out_features
        return n * self.dtype.itemsize


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Check ``name`` against this machine before anything loads; the mode to load with.

    bf16 and fp16 are refused on nothing; int8 and nf4 need bitsandbytes; fp8 needs torchao and
    a CUDA GPU with float8 matrix units.
    """
    mode = precision_mode(name, on_gpu=device.type == "cuda")
    if name in DTYPES:
        return mode
    if name in ("int8", "nf4"):
        if importlib.util.find_spec("bitsandbytes") is None:
            raise SigmaInputError(
                f"precision: {name} needs bitsandbytes; install it with "
                "pip install 'sigma-studio[quant]' (or pip install bitsandbytes)"
            )
        return mode
    if device.type != "cuda":
        raise SigmaInputError(
            f"precision: fp8 runs on NVIDIA GPUs of compute capability 8.9 or later, not on "
            f"{device.type}; use int8 or nf4 for a smaller model here"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise SigmaInputError(
            f"precision: fp8 needs compute capability 8.9 or later (Ada, Hopper); "
            f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}. "
            "Use int8 or nf4 instead"
        )
    if importlib.util.find_spec("torchao") is None:
        raise SigmaInputError(
            "precision: fp8 needs torchao; install it with pip install 'sigma-studio[fp8]' "
            "(or pip install torchao)"
        )
    return mode


def precision_name(precision: str | None, dtype: torch.dtype | None, device: torch.device) -> str:
    """The precision asked, by name or as a torch dtype (the same choice); bf16 on a GPU and
    fp32 elsewhere when neither is given."""
    if dtype is not None:
        if dtype not in DTYPES.values():
            raise SigmaInputError(f"dtype: {dtype} is not one of float32, bfloat16, float16")
        if precision is not None and DTYPES.get(precision) != dtype:
            raise SigmaInputError(f"precision {precision!r} and dtype {dtype} disagree; give one")
        return dtype_name(dtype)
    if precision is None:
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def dtype_name(dtype: torch.dtype) -> str:
    """ "fp32", "bf16" or "fp16" for a float dtype of :data:`DTYPES`."""
    return next(name for name, d in DTYPES.items() if d == dtype)


def precision_mode(name: str, *, on_gpu: bool) -> Precision:
    """The mode ``name`` names, computing in bf16 on a GPU and fp32 on a CPU for int8 and nf4
    (fp8 always bf16); an unknown name is refused. Nothing about this machine is checked:
    :func:`resolve_precision` does that before loading."""
    if name not in PRECISIONS:
        raise SigmaInputError(
            f"precision: {str(name)[:40]!r} is not one of {', '.join(PRECISIONS)}: "
            + PRECISION_HELP
        )
    if name in DTYPES:
        return Precision(name, DTYPES[name])
    return Precision(name, torch.bfloat16 if on_gpu or name == "fp8" else torch.float32)


def quantized_linears(layers: nn.Module) -> list[str]:
    """Names (relative to ``layers``) of the Linear modules a quantized mode replaces."""
    return [name for name, m in layers.named_modules() if isinstance(m, nn.Linear)]


def swap_linears(layers: nn.Module, precision: Precision) -> None:
    """Replace each decoder Linear under ``layers`` (on the meta device) by a bitsandbytes
    layer of the same shape, for int8 and nf4; other modes leave the module as it is."""
    if precision.name not in ("int8", "nf4"):
        return
    bnb = _bitsandbytes()
    for name in quantized_linears(layers):
        parent, _, child = name.rpartition(".")
        old = layers.get_submodule(name)
        bias = old.bias is not None
        if precision.name == "nf4":
            new = bnb.nn.Linear4bit(
                old.in_features, old.out_features, bias=bias, compute_dtype=precision.dtype,
                compress_statistics=True, quant_type="nf4", device="meta",
            )  # fmt: skip
        else:
            new = bnb.nn.Linear8bitLt(
                old.in_features, old.out_features, bias=bias, has_fp16_weights=False,
                threshold=INT8_THRESHOLD, device="meta",
            )  # fmt: skip
        setattr(layers.get_submodule(parent) if parent else layers, child, new)


def place_tensor(
    model: nn.Module, key: str, value: torch.Tensor, device: torch.device, precision: Precision
) -> None:
    """Put checkpoint tensor ``key`` into ``model`` (built on meta) on ``device``: quantized if
    its module is a bitsandbytes layer, else cast to the compute dtype. ``value`` may be on any
    device; only this one tensor is ever held at full precision."""
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name)
    old = module._parameters.get(attr)
    if old is None:
        raise KeyError(key)
    kind = type(old).__name__
    if device.type == "meta":
        param = nn.Parameter(torch.empty_like(old, device="meta"), requires_grad=False)
    elif kind == "Params4bit":
        bnb = _bitsandbytes()
        param = bnb.nn.Params4bit(
            value.to(device="cpu" if device.type != "cuda" else device, dtype=precision.dtype),
            requires_grad=False, quant_type="nf4", compress_statistics=True, blocksize=NF4_BLOCK,
        ).to(device)  # fmt: skip
    elif kind == "Int8Params":
        bnb = _bitsandbytes()
        param = bnb.nn.Int8Params(
            value.to(device="cpu" if device.type != "cuda" else device, dtype=precision.dtype),
            requires_grad=False, has_fp16_weights=False,
        ).to(device)  # fmt: skip
    else:
        param = nn.Parameter(value.to(device=device, dtype=precision.dtype), requires_grad=False)
    module._parameters[attr] = param


def finish_layer(layer: nn.Module, precision: Precision) -> None:
    """Called once a decoder layer holds all its weights: fp8 quantizes its Linears now, so at
    most one layer is ever resident in bf16."""
    if precision.name != "fp8":
        return
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(layer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


def layer_of(key: str, prefix: str) -> int | None:
    """The decoder layer index of a checkpoint key under ``prefix`` (e.g.
    'language_model.model.layers.'), else None."""
    if not key.startswith(prefix):
        return None
    return int(key[len(prefix) :].split(".", 1)[0])


def by_layer(keys: Iterable[str], prefix: str) -> list[str]:
    """Keys in load order: everything outside the layers first, then layer by layer, so a layer
    can be finished (fp8) as soon as its last tensor is in."""

    def order(key: str) -> tuple[int, str]:
        layer = layer_of(key, prefix)
        return (-1 if layer is None else layer, key)

    return sorted(keys, key=order)


def _bitsandbytes():
    """bitsandbytes, imported on first use (its CPU notice is filtered in sigma_core)."""
    import bitsandbytes

    return bitsandbytes
