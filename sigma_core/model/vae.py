"""The FLUX autoencoder that BAGEL uses (``ae.safetensors``), run through diffusers' AutoencoderKL.

The published file keeps the official FLUX key names (``encoder.down.0.block.0.norm1.weight``).
diffusers' own single-file conversion maps them onto AutoencoderKL, so no VAE layers live here:
this module only checks the file, loads it and applies BAGEL's latent scaling,
z = (mean - SHIFT_FACTOR) * SCALE_FACTOR. The official encoder *samples* from the posterior; this
engine takes the posterior mean so that encoding is deterministic.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

# From its module: diffusers' top level names dummy placeholders for type checkers.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sigma_core.errors import CheckpointError
from sigma_core.geometry import LATENT_CHANNELS
from sigma_core.model.weights import check_tensors, header_shapes

SCALE_FACTOR = 0.3611
SHIFT_FACTOR = 0.1159
# A diffusers AutoencoderKL config (JSON object) next to ae.safetensors, for reduced checkpoints
# such as the tiny test ones. Keys it leaves out take FLUX's values.
AE_CONFIG_FILE = "ae_config.json"

_FLUX_CONFIG_FILE = Path(__file__).with_name("flux_vae") / "vae" / "config.json"
_CONFIG_KEYS = frozenset(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}

# Four levels like FLUX (so the downsample stays 8) but 32 channels and one res block per level:
# a 128x128 encode + decode takes milliseconds on a CPU.
TINY_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 32, 32],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": LATENT_CHANNELS,
    "norm_num_groups": 32,
    "sample_size": 128,
    "scaling_factor": SCALE_FACTOR,
    "shift_factor": SHIFT_FACTOR,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}


def flux_vae_config() -> dict:
    """FLUX's diffusers AutoencoderKL config, as shipped in flux_vae/vae/config.json."""
    return json.loads(_FLUX_CONFIG_FILE.read_text(encoding="utf-8"))


def _resolve_config(config: dict) -> dict:
    """FLUX's config overridden by ``config``; unknown keys are refused so typos do not pass."""
    if not isinstance(config, dict):
        raise CheckpointError(f"A VAE config must be a JSON object, not {type(config).__name__}.")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in _CONFIG_KEYS)
    if unknown:
        raise CheckpointError(
            f"Unknown AutoencoderKL config keys {unknown}; allowed: {sorted(_CONFIG_KEYS)}."
        )
    return {**flux_vae_config(), **config}


def _meta_autoencoder(config: dict) -> AutoencoderKL:
    """The AutoencoderKL for ``config`` on the meta device: names and shapes, no memory."""
    try:
        with torch.device("meta"):
            return AutoencoderKL.from_config(config)
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise CheckpointError(f"Cannot build an AutoencoderKL from this config: {e}") from e


_ATTN_LEAVES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _official_name(key: str, num_up_blocks: int) -> str:
    """A diffusers AutoencoderKL key -> its official FLUX name: convert_ldm_vae_checkpoint inverted.

    The official decoder lists its ``up`` levels from the highest resolution, diffusers'
    ``up_blocks`` from the lowest, hence the reversed index.
    """

    def up(m: re.Match[str]) -> str:
        return f"up.{num_up_blocks - 1 - int(m[1])}.{'block' if m[2] == 'resnets' else 'upsample'}."

    key = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    key = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", key)
    key = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", key)
    key = re.sub(r"up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.", up, key)
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    return re.sub(
        r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.",
        lambda m: f"mid.attn_1.{_ATTN_LEAVES[m[1]]}.",
        key,
    )


def official_key_shapes(config: dict | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an ae.safetensors in the official FLUX layout for ``config`` (default FLUX).

    Built on the meta device, so even the full FLUX layout costs no memory. Attention projections
    are 1x1 convolutions there ([C, C, 1, 1]) and Linear layers in diffusers ([C, C]).
    """
    cfg = _resolve_config(config or {})
    model = _meta_autoencoder(cfg)
    num_up = len(cfg["up_block_types"])
    shapes = {}
    for key, tensor in model.state_dict().items():
        name = _official_name(key, num_up)
        shape = tuple(tensor.shape)
        if ".attn_1." in name and name.endswith(".weight") and len(shape) == 2:
            shape = (*shape, 1, 1)
        shapes[name] = shape
    return shapes


def _read_ae_config(ae_path: Path) -> dict:
    """The config for ``ae_path``: its ae_config.json if one lies next to it, else FLUX's."""
    config_path = ae_path.with_name(AE_CONFIG_FILE)
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"Cannot read the VAE config {config_path}: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"The VAE config {config_path} must hold a JSON object.")
    return config


class FluxVAE(torch.nn.Module):
    """Wraps a diffusers AutoencoderKL with BAGEL's latent scaling.

    The VAE is frozen in BAGEL (freeze_vae), so encode and decode keep no autograd graph: at
    1024x1024 that graph would cost several GB.
    """

    def __init__(self, autoencoder: AutoencoderKL) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.downsample: int = 2 ** (len(autoencoder.config["block_out_channels"]) - 1)
        self.z_channels: int = autoencoder.config["latent_channels"]
        # Set under sequential offload, when the weights wait on the meta device.
        self.execution_device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        return self.execution_device or self.autoencoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.autoencoder.dtype

    @classmethod
    def from_file(
        cls,
        ae_path: str | os.PathLike,
        *,
        config: dict | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> FluxVAE:
        """Load an official-layout ae.safetensors, offline and without pickle.

        ``config`` (a diffusers AutoencoderKL config; keys left out take FLUX's values) defaults to
        the ae_config.json next to the file, else FLUX's. The file's key names and shapes are
        checked first; then diffusers' single-file conversion renames them and a strict load
        fills a model built on the meta device.
        """
        path = Path(ae_path)
        if not path.is_file():
            raise CheckpointError(f"The VAE file {path} does not exist (expected ae.safetensors).")
        cfg = _resolve_config(_read_ae_config(path) if config is None else config)
        check_tensors(
            header_shapes(path),
            official_key_shapes(cfg),
            source=f"The VAE file {path}",
            hint="It must be a FLUX ae.safetensors with the official key names; for a reduced "
            f"checkpoint, put its diffusers AutoencoderKL config in {AE_CONFIG_FILE} next to it.",
        )
        try:
            state = load_file(path, device=str(device))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"The VAE file {path} cannot be read: {e}") from e
        state = {k: v.to(dtype) for k, v in convert_ldm_vae_checkpoint(state, cfg).items()}
        model = _meta_autoencoder(cfg)
        # Cast before loading: AutoencoderKL.to(dtype) logs a spurious float32 warning.
        model.load_state_dict(state, strict=True, assign=True)
        return cls(model.requires_grad_(False)).eval()

    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, H, W] in [-1, 1] -> the posterior's mean and log-variance, each
        [B, z, H/8, W/8] in the VAE's dtype, unscaled (the log-variance clamped as diffusers
        clamps it). The VAE is frozen, so these are all an encode depends on."""
        if images.ndim != 4 or images.shape[1] != self.autoencoder.config["in_channels"]:
            raise ValueError(f"encode expects [B, 3, H, W] images, got {list(images.shape)}.")
        if images.shape[-2] % self.downsample or images.shape[-1] % self.downsample:
            raise ValueError(
                f"Image height and width must be multiples of {self.downsample}, "
                f"got {list(images.shape[-2:])}."
            )
        images = images.to(device=self.device, dtype=self.dtype)
        posterior = self.autoencoder.encode(images).latent_dist
        return posterior.mean, posterior.logvar

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> latents [B, z, H/8, W/8]: (mean - SHIFT) * SCALE.

        Inference passes no ``generator`` and gets the mean: deterministic. With one, the
        latent is drawn from the posterior as the official training encoder does, in one step:
        the reference the tests hold the trainer's path to (it keeps the posterior and draws
        with :func:`sample_latent`, so a cached posterior draws the same numbers)."""
        return sample_latent(*self.posterior(images), generator)

    def fingerprint(self) -> str:
        """SHA-256 of the weights (names, dtypes, shapes, bytes): the VAE's identity, so that
        what is stored from one VAE is never read back for another."""
        digest = hashlib.sha256()
        for name, tensor in self.autoencoder.state_dict().items():
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, z, h, w] -> images [B, 3, 8h, 8w] in about [-1, 1], not clamped."""
        if latents.ndim != 4 or latents.shape[1] != self.z_channels:
            raise ValueError(
                f"decode expects [B, {self.z_channels}, h, w] latents, got {list(latents.shape)}."
            )
        latents = latents.to(device=self.device, dtype=self.dtype)
        return self.autoencoder.decode(latents / SCALE_FACTOR + SHIFT_FACTOR).sample


@torch.no_grad()
def sample_latent(
    mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """BAGEL's latent [B, z, h, w] from a posterior (:meth:`FluxVAE.posterior`): its mean, or
    with a ``generator`` mean + std * noise, the noise drawn in ``mean``'s shape on the
    generator's device; then (z - SHIFT) * SCALE."""
    z = mean
    if generator is not None:
        noise = torch.randn(mean.shape, generator=generator, device=generator.device)
        z = z + torch.exp(0.5 * logvar) * noise.to(device=z.device, dtype=z.dtype)
    return (z - SHIFT_FACTOR) * SCALE_FACTOR


def write_random_flux_ae(
    path: str | os.PathLike,
    config: dict | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a seeded random ae.safetensors in the official FLUX layout, for tests and benchmarks.

    Weights are normal with std 1/sqrt(fan_in), GroupNorm scales near 1 and small biases, so the
    decoder output stays finite and far from constant. A config other than FLUX's is written as
    ae_config.json next to the file, so FluxVAE.from_file finds it.
    """
    path = Path(path)
    cfg = _resolve_config(config or {})
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_key_shapes(cfg).items():
        noise = torch.randn(shape, generator=generator)
        if len(shape) > 1:
            tensor = noise / math.sqrt(math.prod(shape[1:]))
        elif "norm" in name and name.endswith(".weight"):
            tensor = 1.0 + 0.02 * noise
        else:
            tensor = 0.02 * noise
        state[name] = tensor.to(dtype).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path, metadata={"format": "pt"})
    config_path = path.with_name(AE_CONFIG_FILE)
    if cfg == flux_vae_config():
        # A stale reduced config would make the loader misread this full-size file.
        config_path.unlink(missing_ok=True)
    else:
        config_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return path
