"""Where each part of the model lives: one device, a multi-GPU device map, or CPU offload.

- A device map is {module name prefix: device}. ``"auto"`` spreads the decoder layers evenly over
  the GPUs by their free memory (accelerate's balanced map; a layer is never split). The modules
  that build the packed sequence (:data:`PACKING_MODULES`) stay together on the first device.
  Each layer's KV cache lives on that layer's device, and the hidden states move between devices
  where the layers do (``Qwen2MoT.forward``).
- ``offload="model"``: the generator and the VAE each come to the GPU when they are used and go
  back to CPU RAM after, so the GPU holds the larger of the two, never both (two ``.to()`` calls:
  the components are driven through methods, not ``forward``, so forward hooks would not fire).
- ``offload="sequential"``: accelerate's hooks bring each leaf module to the GPU for its forward
  and drop it after. The GPU holds one module's weights at a time, for cards of about 8 GB; every
  pass streams the whole model over PCIe, so it is slow.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from sigma_core.errors import SigmaInputError
from sigma_core.model.modes import OFFLOAD_HELP, OFFLOAD_MODES
from sigma_core.model.precision import Precision, quantized_linears

if TYPE_CHECKING:
    from sigma_core.model.bagel import BagelGenerator
    from sigma_core.model.vae import FluxVAE

# Built into one packed sequence on one device: they stay together in every device map.
PACKING_MODULES = (
    "language_model.model.embed_tokens",
    "language_model.model.norm",
    "language_model.model.norm_moe_gen",
    "language_model.model.rotary_emb",
    "time_embedder",
    "latent_pos_embed",
    "vae2llm",
    "llm2vae",
    "attribute_embed",
)
DECODER_LAYER = "MoTDecoderLayer"
AUTO_HEADROOM = 0.85  # share of each GPU's free memory the weights may take ("auto")


def module_device(
    key: str, device: torch.device, device_map: Mapping[str, str] | None
) -> torch.device:
    """The device of tensor or module ``key``: its longest matching prefix in ``device_map``,
    else ``device``."""
    if device_map:
        best = max(
            (p for p in device_map if key == p or key.startswith(p + ".") or p == ""),
            key=len,
            default=None,
        )
        if best is not None:
            return torch.device(device_map[best])
    return device


def check_offload(offload: str, precision: Precision, device: torch.device) -> str:
    """Refuse an offload mode this device or precision cannot run, before loading."""
    if offload not in OFFLOAD_MODES:
        raise SigmaInputError(
            f"offload: {str(offload)[:40]!r} is not one of {', '.join(OFFLOAD_MODES)} "
            f"({OFFLOAD_HELP})"
        )
    if offload == "sequential" and precision.quantized:
        instead = "no offload" if precision.name == "int8" else "offload='model'"
        raise SigmaInputError(
            f"offload: sequential streams full-precision layers and cannot move {precision.name} "
            f"weights; with {precision.name} use {instead}, or sequential with bf16"
        )
    if offload == "model" and precision.name == "int8":
        raise SigmaInputError(
            "offload: bitsandbytes int8 layers cannot move between devices; use nf4 with "
            "offload='model', or int8 without offload"
        )
    return offload


def auto_device_map(
    model: BagelGenerator, precision: Precision, max_memory: Mapping[int | str, int] | None = None
) -> dict[str, str]:
    """A balanced map of the meta ``model`` over the GPUs of ``max_memory`` (default: every
    visible GPU's free memory times :data:`AUTO_HEADROOM`), sizing quantized weights at their
    quantized size. The packing modules go to the first device."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import CustomDtype, get_balanced_memory

    if max_memory is None:
        if not torch.cuda.is_available():
            raise SigmaInputError('device_map: "auto" spreads the model over GPUs; none is visible')
        max_memory = {
            i: int(torch.cuda.mem_get_info(i)[0] * AUTO_HEADROOM)
            for i in range(torch.cuda.device_count())
        }
    weight_dtype = {"int8": torch.int8, "nf4": CustomDtype.INT4, "fp8": CustomDtype.FP8}
    special = {}
    if precision.name in weight_dtype:
        special = {
            f"language_model.model.layers.{name}.weight": weight_dtype[precision.name]
            for name in quantized_linears(model.llm.layers)
        }
    kwargs = {
        "no_split_module_classes": [DECODER_LAYER],
        "dtype": precision.dtype,
        "special_dtypes": special,
    }
    balanced = get_balanced_memory(model, max_memory=dict(max_memory), **kwargs)
    found = infer_auto_device_map(model, max_memory=balanced, **kwargs)
    if any(d in ("cpu", "disk") for d in found.values()):
        raise SigmaInputError(
            "device_map: the model does not fit on the GPUs "
            f"({', '.join(f'{k}: {v / 2**30:.1f} GiB' for k, v in max_memory.items())}); use a "
            "smaller precision (int8, nf4) or offload"
        )
    return spread_layers(model, {k: _device_name(v) for k, v in found.items()})


def spread_layers(model: BagelGenerator, device_map: Mapping[str, str]) -> dict[str, str]:
    """``device_map`` with the packing modules moved to the first device it names and each
    decoder layer given explicitly; a name that is not a module of ``model`` is refused."""
    default = torch.device(next(iter(device_map.values()), "cpu"))
    first = module_device("language_model.model.embed_tokens", default, device_map)
    out = {
        f"language_model.model.layers.{i}": str(
            module_device(f"language_model.model.layers.{i}", first, device_map)
        )
        for i in range(len(model.llm.layers))
    }
    out |= {name: str(first) for name in PACKING_MODULES}
    modules = {name for name, _ in model.named_modules()}
    unknown = [p for p in device_map if p not in modules]
    if unknown:
        raise SigmaInputError(f"device_map: {', '.join(unknown[:4])}: no such module")
    return out


def _device_name(value: int | str) -> str:
    return f"cuda:{value}" if isinstance(value, int) else str(value)


class Offload:
    """Moves the generator and the VAE as ``mode`` says (see the module docstring)."""

    def __init__(
        self, mode: str, device: torch.device, model: BagelGenerator, vae: FluxVAE
    ) -> None:
        self.mode, self.device = mode, device
        self._components: list[BagelGenerator | FluxVAE] = [model, vae]
        self._resident: nn.Module | None = None  # "model": the component on the device now
        if mode == "sequential":
            from accelerate import cpu_offload

            for component in self._components:
                component.execution_device = device
                cpu_offload(component, execution_device=device)

    @contextmanager
    def using(self, component: nn.Module) -> Iterator[None]:
        """Run a block with ``component`` on the execution device ("model": the others wait
        in CPU RAM). Consecutive blocks of one component (prefill, then denoising) move nothing."""
        if self.mode == "model" and component is not self._resident:
            for other in self._components:
                if other is not component:
                    other.to("cpu")
            component.to(self.device)
            self._resident = component
        yield
