"""How much memory a run needs, predicted from shapes before anything loads, and measured.

:func:`estimate_memory` adds up, in bytes, what :class:`~sigma_core.runtime.pipeline.
SigmaPipeline` keeps alive in each phase of a run:

- weights: the generator as loaded (embeddings, both experts of every decoder layer, norms,
  connectors, time embedder, latent position table, W_tau); lm_head and the ViT are never
  loaded. Quantized Linear weights count at their packed size
  (:meth:`~sigma_core.model.precision.Precision.linear_weight_bytes`), the rest in the compute
  dtype. The VAE's weights are counted apart, in the VAE's dtype.
- the KV cache: per layer, keys and values [B, Hkv, C, D] with B CFG rows and C the plan's
  length (the context plus the output block's spare slots).
- activations: the largest transient of one forward, either one denoising pass over the output
  block or the prefill of the largest segment. At full size the SwiGLU MLP's three [B, m, FFN]
  tensors dominate.
- VAE activations: the largest transient of encoding the largest reference or decoding the
  output, walked block by block through diffusers' Encoder and Decoder (at 1024^2 the top
  decoder level holds about 6 full-resolution maps of 128 channels at once).

The phases do not overlap: the VAE encodes before the KV cache exists and decodes after it is
freed, so the peak is the resident weights plus the larger of the generator's transient
(KV cache + activations) and the VAE's. Offload "model" keeps one component on the device at a
time (the larger phase wins); "sequential" streams the weights, so about one decoder layer (or
the embedding table) is resident beside the transients. Not modelled: the CUDA context and
the caching allocator's fragmentation (leave headroom), cuDNN/cuBLAS workspaces, one-off
library buffers, and attention kernels that materialise scores (SDPA's math fallback, which
CUDA may take for GQA in fp32 or with a padding mask).

:class:`MemoryMeter` measures the same quantity: on CUDA through the allocator's peak
statistics, on the CPU by tracking every tensor storage an operator creates.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sigma_core.errors import SigmaInputError
from sigma_core.geometry import LATENT_CHANNELS, LATENT_PATCH, MAX_LATENT_GRID, TOKEN_STRIDE
from sigma_core.inputs.attributes import ATTRIBUTES
from sigma_core.model.config import LLMConfig
from sigma_core.model.modes import VAE_DTYPES
from sigma_core.model.precision import DTYPES, Precision, precision_mode
from sigma_core.runtime.contexts import context_rows
from sigma_core.runtime.placement import PACKING_MODULES, check_offload, module_device
from sigma_core.runtime.sampler import Guidance, timesteps

if TYPE_CHECKING:
    from sigma_core.inputs.composition import Composition
    from sigma_core.inputs.settings import Settings
    from sigma_core.planning.sequence import Plan
    from sigma_core.runtime.pipeline import SigmaPipeline

GIB = 2**30
OFFLOADED = {
    "model": "the generator and the VAE take turns on the device",
    "sequential": "the weights stream from CPU RAM",
}
DEFAULT_REFERENCE = (512, 512)  # (width, height) of a reference given only by count
FREQ_DIM = 256  # the time embedder's frequency embedding
LAYER_PREFIX = "language_model.model.layers."


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
    vae_config: dict | None = None,
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
    vae = _vae_config(vae_config)
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
    vae_act = vae_e * max(
        [_vae_decode_elements(vae, size), *(_vae_encode_elements(vae, s) for s in refs)]
    )
    vae_w = vae_e * vae_parameter_count(vae)
    generator_phase = kv + activations
    if offload == "model":
        peak = max(weights + generator_phase, vae_w + vae_act)
    elif offload == "sequential":
        streamed = max(gen.layer, gen.embed, gen.packing - gen.embed)
        peak = max(streamed + generator_phase, vae_e * _largest_vae_conv(vae) + vae_act)
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


def plan_cfg_rows(plan: Plan, settings: Settings) -> int:
    """KV cache rows a run of ``plan`` prefills: gen, and the rows
    :func:`~sigma_core.runtime.contexts.context_rows` adds for the CFG branches its steps run."""
    guidance = Guidance.from_settings(settings)
    ts = timesteps(settings.num_timesteps, settings.timestep_shift)
    branches = [guidance.branches(t) for t in ts[:-1].tolist()]
    rows = context_rows(
        plan, need_text=any(b[0] for b in branches), need_img=any(b[1] for b in branches)
    )
    return 1 + sum(row is not None for row in rows)


def estimate_for_pipeline(
    pipe: SigmaPipeline,
    composition: Composition,
    *,
    batch_cfg: bool = False,
    precision: str | None = None,
    offload: str | None = None,
    plan: Plan | None = None,
) -> MemoryEstimate:
    """:func:`estimate_memory` for running ``composition`` on ``pipe``: its exact plan (the
    references as resized, the text, the output block), CFG rows, precision, offload mode,
    device map and VAE; ``precision`` and ``offload`` ask about another mode of the same
    checkpoint (to propose one that fits). ``plan``: the composition's plan when the caller
    has it (a run does), so it is not built twice."""
    plan = plan or pipe.plan(composition)
    devices = [str(d) for d in pipe.model.layer_devices()]
    offload = pipe.offload.mode if offload is None else offload
    device_map = None
    if offload == "none" and len(set(devices)) > 1:
        device_map = {f"{LAYER_PREFIX}{i}": d for i, d in enumerate(devices)}
        device_map |= {name: str(pipe.model.device) for name in PACKING_MODULES}
    return estimate_memory(
        pipe.model.config,
        pipe.precision if precision is None else precision,
        plan.noise.size,
        offload=offload,
        device_map=device_map,
        reference_sizes=[seg.size for seg in plan.segments if seg.kind == "image"],
        # text and phantom ViT blocks: understanding-expert tokens beside the latent blocks
        text_tokens=sum(seg.length for seg in plan.segments if seg.kind in ("text", "phantom")),
        cfg_rows=plan_cfg_rows(plan, composition.settings),
        batch_cfg=batch_cfg,
        vae_config=dict(pipe.vae.autoencoder.config),
        vae_dtype=next(name for name, dtype in DTYPES.items() if dtype == pipe.vae.dtype),
        attribute_embed=pipe.model.attribute_embed is not None,
        device_type=str(pipe.device),
    )


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
    if device_map and not all(_is_device(d) for d in device_map.values()):
        problems.append(f"device_map: {dict(device_map)!r:.80} names a device torch does not know")
    if device_map and offload != "none":
        problems.append("device_map and offload exclude each other; choose one")
    if not _is_int(text_tokens) or text_tokens < 0:
        problems.append(f"text_tokens: {text_tokens!r} must be an integer >= 0")
    if not _is_int(cfg_rows) or not 1 <= cfg_rows <= 3:
        problems.append(f"cfg_rows: {cfg_rows!r} must be 1, 2 or 3")
    if vae_dtype not in VAE_DTYPES:
        problems.append(f"vae_dtype: {str(vae_dtype)[:40]!r} is not one of {', '.join(VAE_DTYPES)}")
    if problems:
        raise SigmaInputError("\n".join(problems))


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


def _vae_config(config: dict | None) -> dict:
    if config is not None:
        return dict(config)
    from sigma_core.model.vae import flux_vae_config

    return flux_vae_config()


# ------------------------------------------------------------------------------ the generator


def _generator_bytes(cfg: LLMConfig, p: Precision, attribute_embed: bool) -> _GeneratorBytes:
    """Bytes of the generator's weights as :func:`~sigma_core.runtime.loader.load_generator`
    loads them in ``p``: decoder Linear weights quantized or not, biases, norms and everything
    outside the layers in the compute dtype."""
    e = p.dtype.itemsize
    d, hd, f = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    linears = [(q, d), (kv, d), (kv, d), (d, q), (f, d), (f, d), (d, f)]
    expert = sum(p.linear_weight_bytes(o, i) for o, i in linears)
    expert += e * (q + 2 * kv + 2 * d + (2 * hd if cfg.qk_norm else 0))  # biases and norms
    patch = LATENT_PATCH**2 * LATENT_CHANNELS
    embed = e * cfg.vocab_size * d
    time_embedder = FREQ_DIM * d + d + d * d + d
    connectors = patch * d + d + d * patch + patch  # vae2llm, llm2vae
    w_tau = len(ATTRIBUTES) * d if attribute_embed else 0
    rest = 2 * d + time_embedder + connectors + MAX_LATENT_GRID**2 * d + w_tau  # final norms: 2d
    packing = embed + e * rest + 4 * (hd // 2)  # the rope frequencies are fp32
    return _GeneratorBytes(packing=packing, embed=embed, layer=2 * expert)


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


# ------------------------------------------------------------------------------ the VAE


def vae_parameter_count(config: dict) -> int:
    """Parameters of a diffusers AutoencoderKL with DownEncoderBlock2D / UpDecoderBlock2D
    blocks and a mid-block attention (FLUX's layout), from its config."""
    ch = list(config["block_out_channels"])
    per_block = config["layers_per_block"]
    z, cin, cout = config["latent_channels"], config["in_channels"], config["out_channels"]
    encoder = _conv(cin, ch[0], 3) + _mid(ch[-1], config) + 2 * ch[-1] + _conv(ch[-1], 2 * z, 3)
    prev = ch[0]
    for i, c in enumerate(ch):
        encoder += sum(_resnet_params(prev if j == 0 else c, c) for j in range(per_block))
        encoder += _conv(c, c, 3) if i < len(ch) - 1 else 0
        prev = c
    decoder = _conv(z, ch[-1], 3) + _mid(ch[-1], config) + 2 * ch[0] + _conv(ch[0], cout, 3)
    rev = ch[::-1]
    prev = rev[0]
    for i, c in enumerate(rev):
        decoder += sum(_resnet_params(prev if j == 0 else c, c) for j in range(per_block + 1))
        decoder += _conv(c, c, 3) if i < len(rev) - 1 else 0
        prev = c
    return encoder + decoder + _quant(config, z)


def _quant(config: dict, z: int) -> int:
    """quant_conv (2z -> 2z) and post_quant_conv (z -> z), both 1x1, when the config has them."""
    n = _conv(2 * z, 2 * z, 1) if config.get("use_quant_conv", True) else 0
    return n + (_conv(z, z, 1) if config.get("use_post_quant_conv", True) else 0)


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _resnet_params(cin: int, cout: int) -> int:
    shortcut = _conv(cin, cout, 1) if cin != cout else 0
    return 2 * cin + _conv(cin, cout, 3) + 2 * cout + _conv(cout, cout, 3) + shortcut


def _mid(c: int, config: dict) -> int:
    attention = 2 * c + 4 * (c * c + c) if config.get("mid_block_add_attention", True) else 0
    return 2 * _resnet_params(c, c) + attention


def _largest_vae_conv(config: dict) -> int:
    """Parameters of the VAE's largest module, all that sequential offload holds at once."""
    c = max(config["block_out_channels"])
    return _conv(c, c, 3)


def _resnet_peak(cin: int, cout: int) -> int:
    """Channels alive at once in diffusers' ResnetBlock2D, its input included: norm, act and
    conv each make a new map; the end holds input, conv2, shortcut, their sum and sum / 1."""
    shortcut = cout if cin != cout else 0
    return max(3 * cin, 2 * cin + cout, cin + 3 * cout + shortcut)


def _vae_encode_elements(config: dict, size: tuple[int, int]) -> int:
    """Elements alive at the encoder's peak for one (width, height) image: the pixels, the
    block's input (its caller keeps it) and a resnet's maps, or a downsampler's pad and conv."""
    ch = list(config["block_out_channels"])
    res = size[0] * size[1]
    pixels = config["in_channels"] * res
    peak = pixels + ch[0] * res
    prev = ch[0]
    for i, c in enumerate(ch):
        rest = [prev + _resnet_peak(c, c)] * (config["layers_per_block"] - 1)
        block = [_resnet_peak(prev, c), *rest]
        if i < len(ch) - 1:
            block.append(prev + 2 * c + c // 4)  # F.pad copy, then the stride-2 conv
        peak = max(peak, pixels + max(block) * res)
        res //= 4
        prev = c
    return max(peak, pixels + _mid_peak(ch[-1]) * res)


def _vae_decode_elements(config: dict, size: tuple[int, int]) -> int:
    """Elements alive at the decoder's peak for a (width, height) output: a block's input, a
    resnet's maps, or an upsampler's 2x nearest copy and its conv (both at 4x the pixels)."""
    rev = list(config["block_out_channels"])[::-1]
    down = 4 ** (len(rev) - 1)
    res = size[0] * size[1] // down
    peak = _mid_peak(rev[0]) * res
    prev = rev[0]
    for i, c in enumerate(rev):
        rest = [prev + _resnet_peak(c, c)] * config["layers_per_block"]
        block = [_resnet_peak(prev, c), *rest]
        if i < len(rev) - 1:
            block.append(prev + c + 8 * c)  # input kept, interpolated copy, conv output
        peak = max(peak, max(block) * res)
        res *= 4 if i < len(rev) - 1 else 1
        prev = c
    return max(peak, 3 * rev[-1] * res)


def _mid_peak(c: int) -> int:
    """The mid block at the lowest resolution: resnets, and attention's norm, q, k, v, output
    and residual sum over [HW, C] (SDPA itself keeps no [HW, HW] scores)."""
    return max(_resnet_peak(c, c), 8 * c)


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


# ------------------------------------------------------------------------------ measuring


class MemoryMeter:
    """Measures the peak memory of a block on ``device``; ``peak`` in bytes after the block.

    On CUDA: the allocator's peak over the block, everything on the device included
    (``modules`` are not needed). On the CPU: the bytes of the tensors of ``modules``
    (parameters, buffers and bitsandbytes' quantization state, each storage once) plus the peak
    of the storages the block's operators create and have not yet freed, tracked through a
    dispatch mode. Tensors made outside torch's operators (``torch.from_numpy``) are not seen.
    """

    def __init__(
        self, device: str | torch.device = "cpu", modules: Iterable[nn.Module] = ()
    ) -> None:
        self.device = torch.device(device)
        self.modules = list(modules)
        self.resident = 0  # bytes alive at entry: the modules' (CPU), all allocated (CUDA)
        self.new_peak = 0  # the most bytes alive at once beyond those
        self.peak = 0
        self._mode: _StorageTracker | None = None

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.resident = torch.cuda.memory_allocated(self.device)
            return self
        self.resident = module_bytes(self.modules)
        self._mode = _StorageTracker()
        self._mode.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.new_peak = self.peak - self.resident
            return
        assert self._mode is not None
        self._mode.__exit__(kind, error, traceback)
        self.new_peak = self._mode.peak
        self.peak = self.resident + self.new_peak


def module_bytes(modules: Iterable[nn.Module], device: torch.device | None = None) -> int:
    """Bytes of the parameters and buffers of ``modules`` (only those on ``device`` when given),
    each storage counted once, with bitsandbytes' quantization state (absmax, code, row scales)
    and the inner tensors of tensor subclasses (torchao's float8 weights)."""
    seen: dict[tuple[str, int], int] = {}
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            for inner in _inner_tensors(tensor):
                if device is None or inner.device == device:
                    storage = inner.untyped_storage()
                    seen[(str(inner.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def _inner_tensors(tensor: torch.Tensor) -> Iterable[torch.Tensor]:
    """``tensor`` and the tensors it carries: a subclass's flattened parts, bitsandbytes'
    ``quant_state`` (with its nested state) and ``SCB``."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = flatten()
        for name in names:
            yield from _inner_tensors(getattr(tensor, name))
    else:
        yield tensor
    extras = [getattr(tensor, "SCB", None), getattr(tensor, "quant_state", None)]
    while extras:
        item = extras.pop()
        if isinstance(item, torch.Tensor):
            yield item
        elif item is not None and hasattr(item, "__dict__"):
            extras.extend(vars(item).values())


class _StorageTracker(TorchDispatchMode):
    """Counts the bytes of every storage an operator creates until it is freed; ``peak`` is
    the most alive at once. Outputs that share an input's storage (views, in-place and out=
    operators) are not new."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _freed(self, ptr: int) -> None:
        self.current -= self.live.pop(ptr, 0)

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or ptr in inputs or ptr in self.live:
                continue
            self.live[ptr] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._freed, ptr)
        return out
