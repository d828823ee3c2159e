"""How much memory a run needs, predicted from shapes before anything loads, and measured.

:func:`estimate_memory` adds up, in bytes, what the pipeline keeps alive in each phase of a run.
It works on plain data (:class:`EngineShape` describes a loaded engine; the pipeline calls
:func:`estimate_for_plan`), so this module never needs the pipeline:

- weights: the generator as loaded, counted on the model itself built on the meta device (no
  memory), so every module the generator has is counted and none is forgotten: embeddings, both
  experts of every decoder layer, norms, connectors, time embedder, latent position table, W_tau.
  lm_head and the ViT are never built. Quantized Linear weights count at their packed size
  (:meth:`~sigma_core.model.precision.Precision.linear_weight_bytes`), the rest in the compute
  dtype. The VAE's weights are counted apart, in the VAE's dtype, on diffusers' AutoencoderKL
  built the same way (:mod:`sigma_core.runtime.vae_memory`).
- the KV cache: per layer, keys and values [B, Hkv, C, D] with B CFG rows and C the plan's
  length (the context plus the output block's spare slots).
- activations: the largest transient of one forward, either one denoising pass over the output
  block or the prefill of the largest segment. At full size the SwiGLU MLP's three [B, m, FFN]
  tensors dominate. This is the engine's own code, so it is modelled here.
- VAE activations: the largest transient of encoding the largest reference or decoding the
  output, from a table measured on the CPU per VAE config (diffusers' layers are not modelled
  by hand: a table is remeasured when they change; see :mod:`sigma_core.runtime.vae_memory`).

The phases do not overlap: the VAE encodes before the KV cache exists and decodes after it is
freed, so the peak is the resident weights plus the larger of the generator's transient
(KV cache + activations) and the VAE's. Offload "model" keeps one component on the device at a
time (the larger phase wins); "sequential" streams the weights, so about one decoder layer (or
the embedding table) is resident beside the transients. Not modelled: the CUDA context and
the caching allocator's fragmentation (leave headroom), cuDNN/cuBLAS workspaces, one-off
library buffers, and attention kernels that materialise scores (SDPA's math fallback, which
CUDA may take for GQA in fp32 or with a padding mask).

:class:`~sigma_core.runtime.meter.MemoryMeter` measures the same quantity (re-exported here,
with :func:`~sigma_core.runtime.meter.module_bytes`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sigma_core.errors import SigmaInputError, SigmaOutOfMemoryError
from sigma_core.geometry import LATENT_CHANNELS, LATENT_PATCH, TOKEN_STRIDE
from sigma_core.model.bagel import BagelGenerator
from sigma_core.model.config import LLMConfig
from sigma_core.model.modes import VAE_DTYPES
from sigma_core.model.precision import DTYPES, Precision, precision_mode, quantized_linears
from sigma_core.runtime.contexts import context_rows
from sigma_core.runtime.device import available_memory
from sigma_core.runtime.meter import MemoryMeter, module_bytes
from sigma_core.runtime.placement import PACKING_MODULES, check_offload, module_device
from sigma_core.runtime.sampler import Guidance, timesteps
from sigma_core.runtime.vae_memory import VAEShape, shipped_table, vae_shape

if TYPE_CHECKING:
    from sigma_core.inputs.settings import Settings
    from sigma_core.model.vae import FluxVAE
    from sigma_core.planning.sequence import Plan

GIB = 2**30
OFFLOADED = {
    "model": "the generator and the VAE take turns on the device",
    "sequential": "the weights stream from CPU RAM",
}
DEFAULT_REFERENCE = (512, 512)  # (width, height) of a reference given only by count
LAYER_PREFIX = "language_model.model.layers."
# Measuring lives in runtime.meter; these names stay importable from here, where they have been.
__all__ = [
    "EngineShape", "MemoryEstimate", "MemoryMeter", "estimate_for_plan", "estimate_memory",
    "module_bytes", "plan_cfg_rows",
]  # fmt: skip


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted bytes of one run. ``peak`` is what the execution device must hold at the
    worst moment under the offload mode; ``per_device`` splits it over a device map (one
    entry otherwise), and ``peak`` is then the largest share."""

    weights: int
    vae_weights: int
    kv_cache: int
    activations: int
    vae_activations: int
    peak: int
    per_device: dict[str, int]
    offload: str = "none"

    def fits(self, free_bytes: int) -> bool:
        """Whether the peak fits in ``free_bytes`` (of every device, under a device map). No
        headroom is added: leave some for the allocator and the CUDA context."""
        return self.peak <= free_bytes

    def describe(self) -> str:
        """One line for users, in GiB: the peak, then its parts (which the offload modes do not
        all keep on the device at once)."""
        parts = (
            f"about {self.peak / GIB:.1f} GiB: weights {self.weights / GIB:.1f}, "
            f"KV cache {self.kv_cache / GIB:.1f}, activations {self.activations / GIB:.1f}, "
            f"VAE {self.vae_weights / GIB:.1f} + {self.vae_activations / GIB:.1f} GiB"
        )
        if self.offload != "none":
            parts += f" (offload {self.offload}: {OFFLOADED[self.offload]})"
        if len(self.per_device) > 1:
            shares = ", ".join(f"{d} {b / GIB:.1f}" for d, b in self.per_device.items())
            parts += f"; per device: {shares} GiB"
        return parts


@dataclass(frozen=True)
class EngineShape:
    """What a loaded engine's memory depends on, as plain data: the decoder's sizes, the
    precision, the offload mode, the execution device and each decoder layer's device, the
    VAE's diffusers config and dtype, and whether W_tau exists. Built once per engine by
    :meth:`of`; :func:`estimate_for_plan` needs nothing else."""

    config: LLMConfig
    precision: Precision
    offload: str
    device: str
    layer_devices: tuple[str, ...]
    vae_config: Mapping[str, Any] = field(hash=False)
    vae_dtype: str
    attribute_embed: bool

    @classmethod
    def of(
        cls,
        model: BagelGenerator,
        vae: FluxVAE,
        precision: Precision,
        offload: str,
        device: str | torch.device,
    ) -> EngineShape:
        """The shape of ``model`` and ``vae`` as loaded in ``precision``, run under ``offload``
        on ``device`` (the first device of a device map)."""
        return cls(
            config=model.config,
            precision=precision,
            offload=offload,
            device=str(device),
            layer_devices=tuple(str(d) for d in model.layer_devices()),
            vae_config=MappingProxyType(dict(vae.autoencoder.config)),
            vae_dtype=next(name for name, dtype in DTYPES.items() if dtype == vae.dtype),
            attribute_embed=model.attribute_embed is not None,
        )

    def device_map(self) -> dict[str, str] | None:
        """{module prefix: device} when the layers span several devices (the packing modules
        stay on the execution device), else None."""
        if len(set(self.layer_devices)) < 2:
            return None
        layers = {f"{LAYER_PREFIX}{i}": d for i, d in enumerate(self.layer_devices)}
        return layers | {name: self.device for name in PACKING_MODULES}


@dataclass(frozen=True)
class _GeneratorBytes:
    """The generator's weights split by where they can live: the packing modules (embeddings
    and connectors, always on the first device), and one decoder layer."""

    packing: int
    embed: int  # embed_tokens, the largest packing module
    layer: int


def estimate_memory(
    config: LLMConfig,
    precision: str | Precision,
    size: tuple[int, int],
    n_references: int = 0,
    offload: str = "none",
    device_map: Mapping[str, str] | None = None,
    *,
    reference_sizes: Sequence[tuple[int, int]] | None = None,
    text_tokens: int = 64,
    cfg_rows: int = 3,
    batch_cfg: bool = False,
    vae_config: Mapping[str, Any] | None = None,
    vae_dtype: str = "fp32",
    attribute_embed: bool = False,
    device_type: str = "cuda",
) -> MemoryEstimate:
    """Predict a run's memory from shapes alone (nothing is allocated).

    ``size`` is the output (width, height) in px; references are (width, height) as the VAE
    sees them (after BAGEL's resize), 512x512 each when only ``n_references`` is given.
    ``text_tokens`` counts the context's text (markers included); ``cfg_rows`` the KV cache
    rows (1 to 3: gen, cfg_text, cfg_img). ``vae_config`` is a diffusers AutoencoderKL config
    (FLUX's by default). ``device_type`` ("cuda", "cpu", or a device name such as "cuda:1")
    sets the compute dtype of int8 and nf4 (fp32 on the CPU) and names the single device.
    """
    mode = _precision(precision, device_type)
    check_offload(offload, mode, torch.device(str(device_type).split(":", 1)[0]))
    refs = _reference_sizes(n_references, reference_sizes)
    _check(size, refs, offload, device_map, text_tokens, cfg_rows, vae_dtype)
    vae = _vae(vae_config)
    e = mode.dtype.itemsize
    vae_e = DTYPES[vae_dtype].itemsize
    gen = _generator_bytes(config, mode, attribute_embed)
    weights = gen.packing + gen.layer * config.num_hidden_layers
    ref_tokens = [_tokens(s) for s in refs]
    out_tokens = _tokens(size)
    capacity = text_tokens + sum(t + 2 for t in ref_tokens) + out_tokens + 2
    kv_layer = 2 * cfg_rows * config.num_key_value_heads * capacity * config.head_dim * e
    kv = kv_layer * config.num_hidden_layers
    rows = cfg_rows if batch_cfg else 1
    # The denoiser keeps a position table [m, d] per row set (at most one per row); the
    # reference latents, the noise and the velocity are fp32 tokens [m, 64].
    activations = max(
        _forward_bytes(config, mode, rows, out_tokens + 2)
        + cfg_rows * out_tokens * config.hidden_size * e,
        *(_forward_bytes(config, mode, 1, t + 2) for t in ref_tokens),
        _forward_bytes(config, mode, 1, text_tokens),
    ) + 4 * LATENT_PATCH**2 * LATENT_CHANNELS * (sum(ref_tokens) + 2 * out_tokens)
    vae_act = shipped_table().activations(vae, vae_dtype, size, refs)
    vae_w = vae_e * vae.parameters
    generator_phase = kv + activations
    if offload == "model":
        peak = max(weights + generator_phase, vae_w + vae_act)
    elif offload == "sequential":
        streamed = max(gen.layer, gen.embed, gen.packing - gen.embed)
        peak = max(streamed + generator_phase, vae_e * vae.largest_module + vae_act)
    else:
        peak = weights + vae_w + max(generator_phase, vae_act)
    per_device = {device_type: peak}
    if device_map:
        per_device = _per_device(config, device_map, gen, kv_layer, activations, vae_w, vae_act)
        peak = max(per_device.values())
    return MemoryEstimate(
        weights=weights, vae_weights=vae_w, kv_cache=kv, activations=activations,
        vae_activations=vae_act, peak=peak, per_device=per_device, offload=offload,
    )  # fmt: skip


def estimate_for_plan(
    engine: EngineShape,
    plan: Plan,
    settings: Settings,
    *,
    batch_cfg: bool = False,
    precision: str | None = None,
    offload: str | None = None,
) -> MemoryEstimate:
    """:func:`estimate_memory` for running ``plan`` with ``settings`` on ``engine``: the
    references as resized, the text, the output block, the CFG rows the settings need, and the
    engine's precision, offload mode, device map and VAE. ``precision`` and ``offload`` ask
    about another mode of the same checkpoint (to propose one that fits)."""
    offload = engine.offload if offload is None else offload
    return estimate_memory(
        engine.config,
        engine.precision if precision is None else precision,
        plan.noise.block_size,
        offload=offload,
        device_map=engine.device_map() if offload == "none" else None,
        reference_sizes=[seg.block_size for seg in plan.segments if seg.kind == "image"],
        # text and phantom ViT blocks: understanding-expert tokens beside the latent blocks
        text_tokens=sum(seg.length for seg in plan.segments if seg.kind in ("text", "phantom")),
        cfg_rows=plan_cfg_rows(plan, settings),
        batch_cfg=batch_cfg,
        vae_config=engine.vae_config,
        vae_dtype=engine.vae_dtype,
        attribute_embed=engine.attribute_embed,
        device_type=engine.device,
    )


def check_fits(
    need: MemoryEstimate, device: torch.device, modules: Sequence[nn.Module] = ()
) -> None:
    """Refuse a run whose predicted peak ``need`` does not fit on ``device``: what it has free
    plus what ``modules`` (the loaded weights, counted in the estimate) already hold there. Where
    the free memory is unknown (mps), nothing is refused."""
    available = available_memory(device)
    if available is None:
        return
    held = module_bytes(modules, device)
    if need.peak > held + available:
        raise SigmaOutOfMemoryError(
            "planning the run",
            str(device),
            f" (predicted peak {need.describe()}; the weights hold {held / GIB:.1f} GiB "
            f"and {available / GIB:.1f} GiB more is free, so it would not fit)",
        )


def plan_cfg_rows(plan: Plan, settings: Settings) -> int:
    """KV cache rows a run of ``plan`` prefills: gen, and the rows
    :func:`~sigma_core.runtime.contexts.context_rows` adds for the CFG branches its steps run."""
    guidance = Guidance.from_settings(settings)
    ts = timesteps(settings.num_timesteps, settings.timestep_shift)
    branches = guidance.steps(ts)
    rows = context_rows(
        plan, need_text=any(b[0] for b in branches), need_img=any(b[1] for b in branches)
    )
    return 1 + sum(row is not None for row in rows)


# ------------------------------------------------------------------------------ arguments


def _precision(precision: str | Precision, device_type: str) -> Precision:
    """A :class:`Precision` as :func:`~sigma_core.model.precision.resolve_precision` would give
    on ``device_type``, without checking that its libraries are installed."""
    if isinstance(precision, Precision):
        return precision
    return precision_mode(precision, on_gpu=str(device_type).split(":", 1)[0] == "cuda")


def _reference_sizes(count: int, sizes: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    if sizes is not None:
        if count not in (0, len(sizes)):
            raise SigmaInputError(f"n_references: {count!r} disagrees with reference_sizes")
        return list(sizes)
    if not _is_int(count) or count < 0:
        raise SigmaInputError(f"n_references: {count!r} must be an integer >= 0")
    return [DEFAULT_REFERENCE] * count


def _check(
    size: tuple[int, int],
    refs: list[tuple[int, int]],
    offload: str,
    device_map: Mapping[str, str] | None,
    text_tokens: int,
    cfg_rows: int,
    vae_dtype: str,
) -> None:
    """Refuse what the engine would refuse, or what has no meaning, before any arithmetic."""
    problems = [
        f"{name}: {s!r} must be (width, height) of at least {TOKEN_STRIDE} px"
        for name, s in [("size", size)] + [(f"reference {i + 1}", r) for i, r in enumerate(refs)]
        if not _is_size(s)
    ]
    problems += _device_map_problems(device_map, offload)
    if not _is_int(text_tokens) or text_tokens < 0:
        problems.append(f"text_tokens: {text_tokens!r} must be an integer >= 0")
    if not _is_int(cfg_rows) or not 1 <= cfg_rows <= 3:
        problems.append(f"cfg_rows: {cfg_rows!r} must be 1, 2 or 3")
    if vae_dtype not in VAE_DTYPES:
        problems.append(f"vae_dtype: {str(vae_dtype)[:40]!r} is not one of {', '.join(VAE_DTYPES)}")
    if problems:
        raise SigmaInputError("\n".join(problems))


def _device_map_problems(device_map: Mapping[str, str] | None, offload: str) -> list[str]:
    if not device_map:
        return []
    problems = []
    if not all(_is_device(d) for d in device_map.values()):
        problems.append(f"device_map: {dict(device_map)!r:.80} names a device torch does not know")
    if offload != "none":
        problems.append("device_map and offload exclude each other; choose one")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_device(name: Any) -> bool:
    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        return False
    return True


def _is_size(size: Any) -> bool:
    return (
        isinstance(size, tuple | list)
        and len(size) == 2
        and all(_is_int(v) and v >= TOKEN_STRIDE for v in size)
    )


def _tokens(size: tuple[int, int]) -> int:
    """Latent tokens of a (width, height) image: one per 16 x 16 px."""
    return (size[0] // TOKEN_STRIDE) * (size[1] // TOKEN_STRIDE)


def _vae(config: Mapping[str, Any] | None) -> VAEShape:
    if config is None:
        from sigma_core.model.vae import flux_vae_config

        config = flux_vae_config()
    return vae_shape(config)


# ------------------------------------------------------------------------------ the generator


@dataclass(frozen=True)
class _Part:
    """The tensors of part of the generator: ``elements`` held in the compute dtype, ``fixed``
    bytes kept in their own dtype (rope's fp32 frequencies), and the decoder Linear weights
    [out, in] that a quantized mode packs."""

    elements: int = 0
    fixed: int = 0
    linears: tuple[tuple[int, int], ...] = ()

    def nbytes(self, p: Precision) -> int:
        packed = sum(p.linear_weight_bytes(o, i) for o, i in self.linears)
        return p.dtype.itemsize * self.elements + self.fixed + packed


def _generator_bytes(cfg: LLMConfig, p: Precision, attribute_embed: bool) -> _GeneratorBytes:
    """Bytes of the generator's weights as :func:`~sigma_core.runtime.loader.load_generator`
    loads them in ``p``: decoder Linear weights quantized or not, everything else in the
    compute dtype, buffers in their own."""
    packing, embed, layer = _generator_parts(cfg, attribute_embed)
    return _GeneratorBytes(packing=packing.nbytes(p), embed=embed.nbytes(p), layer=layer.nbytes(p))


@functools.lru_cache(maxsize=8)
def _generator_parts(cfg: LLMConfig, attribute_embed: bool) -> tuple[_Part, _Part, _Part]:
    """(the packing modules, embed_tokens, one decoder layer) of the generator built on the
    meta device: shapes only, about 25 ms for BAGEL-7B once warm. Every layer is the same."""
    with torch.device("meta"):
        model = BagelGenerator(cfg, attribute_embed=attribute_embed)
    layer = model.llm.layers[0]
    every = (*model.named_parameters(), *model.named_buffers())
    return (
        _part({n: t for n, t in every if not n.startswith(LAYER_PREFIX)}),
        _part({"weight": model.llm.embed_tokens.weight}),
        _part(dict((*layer.named_parameters(), *layer.named_buffers())), quantized_linears(layer)),
    )


def _part(tensors: Mapping[str, torch.Tensor], linears: Sequence[str] = ()) -> _Part:
    """A :class:`_Part` of named parameters and buffers; ``linears`` names the Linear modules
    whose weights a quantized mode packs."""
    packed = {f"{name}.weight" for name in linears}
    params = {n: t for n, t in tensors.items() if isinstance(t, nn.Parameter)}
    return _Part(
        elements=sum(t.numel() for n, t in params.items() if n not in packed),
        fixed=sum(t.numel() * t.element_size() for n, t in tensors.items() if n not in params),
        linears=tuple((params[n].shape[0], params[n].shape[1]) for n in sorted(packed)),  # [o, i]
    )


def _forward_bytes(cfg: LLMConfig, p: Precision, rows: int, tokens: int) -> int:
    """The largest transient of one forward of ``tokens`` over ``rows`` cache rows.

    Alive at once inside a decoder layer: the block's input embedding [n, d], the hidden
    states entering the layer and after attention, the normed input [B, n, d], and either the
    MLP's silu/up/product [B, n, FFN] or attention's q, k, v [B, n, H + 2 Hkv, D] twice (the
    expert outputs and their concatenation) with rope's three q-sized temporaries.
    """
    e = p.dtype.itemsize
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    bn = rows * tokens
    hidden = e * (tokens * d + 3 * bn * d)
    mlp = 3 * e * bn * f + _quantized_extra(p, bn, d, f)
    attention = e * bn * (2 * (q + 2 * kv) + 3 * q)
    return hidden + max(mlp, attention)


def _quantized_extra(p: Precision, bn: int, d: int, f: int) -> int:
    """Bytes a quantized Linear adds to the MLP's peak for ``bn`` tokens: nf4 dequantizes its
    weight [FFN, d] to the compute dtype (bitsandbytes, on more than one token); LLM.int8
    casts the input to fp16 and int8 and multiplies into int32 [bn, FFN] before scaling back;
    fp8 quantizes the input (its absolute values, then one byte a value)."""
    e = p.dtype.itemsize
    if p.name == "nf4":
        return e * f * d
    if p.name == "int8":
        return max(0, (4 - e) * bn * f) + 3 * bn * d
    if p.name == "fp8":
        return (e + 1) * bn * d
    return 0


# ------------------------------------------------------------------------------ device maps


def _per_device(
    cfg: LLMConfig,
    device_map: Mapping[str, str],
    gen: _GeneratorBytes,
    kv_layer: int,
    activations: int,
    vae_w: int,
    vae_act: int,
) -> dict[str, int]:
    """Each device's peak under ``device_map`` ({module prefix: device}): the packing modules
    and the VAE on the first device, each layer with its KV cache where the map puts it, and a
    forward's transient on every device the hidden states visit."""
    default = torch.device(next(iter(device_map.values())))
    first = str(module_device(PACKING_MODULES[0], default, device_map))
    layers: dict[str, int] = {first: 0}
    for i in range(cfg.num_hidden_layers):
        where = str(module_device(f"{LAYER_PREFIX}{i}", torch.device(first), device_map))
        layers[where] = layers.get(where, 0) + 1
    out = {}
    for device, count in layers.items():
        resident = gen.layer * count + (gen.packing + vae_w if device == first else 0)
        transient = kv_layer * count + activations
        out[device] = resident + max(transient, vae_act if device == first else 0)
    return out
