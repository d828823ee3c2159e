"""Live preview: the current estimate of the final image at every step, without the VAE decoder.

A step of the sampler knows x_t and the guided velocity v. BAGEL's flow is x_t = (1 - t)·x0 + t·ε
with v = ε - x0 (the velocity points from data to noise, see :func:`~sigma_core.runtime.sampler.
euler_step`), so x0 = x_t - t·v. The callback's ``latents`` are x after the Euler step, at
``t_next``, and x_{t_next} - t_next·v equals x_t - t·v exactly (x_{t_next} = x_t - (t - t_next)·v),
so :func:`step_x0` uses (latents, velocity, t_next). At the last step t_next = 0 and x0 is the
final latent.

That latent [1, 16, h, w] is shown through a linear 16 -> 3 map (16 weights and a bias per RGB
channel) instead of the decoder: one small matrix product per step, at the latent resolution.
The map is fitted by least squares to the VAE that is loaded (:func:`fit_latent_rgb`): each
shipped image (``PROJECT_ASSETS``) is encoded as the pipeline encodes references (pixels to
[-1, 1], posterior mean, BAGEL's shift and scale) and its RGB in [-1, 1] -- the decoder's output
range -- is average-pooled to the latent grid, one sample per latent cell. The result is shown
the way the pipeline shows decoder output, (rgb·0.5 + 0.5).clamp(0, 1).

The factors for a VAE are found by its identity (:func:`vae_identity`): first in the stored file
``scripts/latent_rgb_factors.json`` (written by ``python -m scripts.fit_latent_rgb``; present in a
source checkout), then in the user cache (``<user cache>/latent-rgb/<identity>.json``); if neither
has them (the real FLUX VAE on a user's machine, a changed tiny VAE), they are fitted once from
the shipped images and written to the user cache, so only the very first live preview is slow.
Everything is JSON, never pickle. A :class:`LatentPreviewer` is safe to share between threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sigma_core.errors import CheckpointError, SigmaInputError
from sigma_core.inputs import PROJECT_ASSETS
from sigma_core.inputs.images import load_image
from sigma_core.model.vae import SCALE_FACTOR, SHIFT_FACTOR, FluxVAE
from sigma_core.user_cache import user_cache_dir

# Bump when the fitting procedure (images, encoding, pooling, target range) changes: entries
# with another version are ignored, in the stored file and in the user cache alike.
FIT_VERSION = 1
FIT_SIDE = 256  # each shipped image is resized so its longer side is this, before encoding
STORED_FACTORS = Path(__file__).resolve().parents[2] / "scripts" / "latent_rgb_factors.json"
USER_CACHE_SUBDIR = "latent-rgb"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# The callback tensors a live preview needs (callback_on_step_end_tensor_inputs).
LIVE_PREVIEW_TENSORS = ("latents", "velocity", "t_next")
# Hashed (rounded to bf16, so a VAE loaded in fp32 or bf16 has one identity) together with the
# config and every tensor's name and shape: the convolutions into and out of the latent space.
IDENTITY_TENSORS = (
    "encoder.conv_in.weight",
    "encoder.conv_out.weight",
    "encoder.conv_out.bias",
    "decoder.conv_in.weight",
    "decoder.conv_out.weight",
    "decoder.conv_out.bias",
)
Resample = Literal["nearest", "bilinear"]
# "latent" (h x w of the latent), "output" (the decoder's size) or (width, height)
PreviewSize = tuple[int, int] | Literal["latent", "output"]
_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}


# ----------------------------------------------------------------------------- x0 estimate


def estimate_x0(
    latents: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor | float
) -> torch.Tensor:
    """x0 = x_t - t·v: the clean latent that ``latents`` (at time ``t``) heads for along
    ``velocity``."""
    return latents - velocity.to(latents.dtype) * t


def step_x0(tensors: Mapping[str, Any]) -> torch.Tensor:
    """x0 from a step callback's tensors: latents (at t_next) - t_next·velocity."""
    missing = [n for n in LIVE_PREVIEW_TENSORS if tensors.get(n) is None]
    if missing:
        raise SigmaInputError(
            f"a live preview needs the callback tensors {', '.join(LIVE_PREVIEW_TENSORS)}; "
            f"missing: {', '.join(missing)} (ask for them with callback_on_step_end_tensor_inputs)"
        )
    return estimate_x0(tensors["latents"], tensors["velocity"], tensors["t_next"])


# ----------------------------------------------------------------------------- fitting


def shipped_images() -> list[tuple[str, Image.Image]]:
    """(file name, RGB image) for every shipped image (PROJECT_ASSETS), by name."""
    files = sorted(p for p in PROJECT_ASSETS.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(p.name, load_image(p, name=p.name)) for p in files]


def _fit_pixels(img: Image.Image, side: int, multiple: int) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1]: longer side ``side``, both sides multiples of ``multiple``."""
    scale = side / max(img.size)
    w, h = (max(multiple, round(n * scale / multiple) * multiple) for n in img.size)
    img = img.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels.float().div(255).sub(0.5).div(0.5)[None]  # as ReferenceEncoder does


def latent_rgb_pairs(
    vae: FluxVAE, images: Sequence[Image.Image], *, side: int = FIT_SIDE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents [N, 16] and the RGB they cover [N, 3] (in [-1, 1], average-pooled over each
    latent cell), one row per latent cell of every image, all on the cpu in fp32."""
    latents, rgb = [], []
    for img in images:
        x = _fit_pixels(img, side, vae.downsample)
        z = vae.encode(x).float().cpu()
        pooled = F.avg_pool2d(x, vae.downsample)
        if z.shape[-2:] != pooled.shape[-2:]:
            raise RuntimeError(f"latent grid {list(z.shape)} != pooled {list(pooled.shape)}")
        latents.append(z[0].flatten(1).T)
        rgb.append(pooled[0].flatten(1).T)
    return torch.cat(latents), torch.cat(rgb)


def solve_latent_rgb(latents: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """The least-squares affine map [17, 3] (16 weights, then the bias) from latents [N, 16] to
    rgb [N, 3], solved in fp64 on the cpu."""
    a = latents.detach().cpu().double()
    a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], dim=1)
    solution = torch.linalg.lstsq(a, rgb.detach().cpu().double(), driver="gelsd").solution
    return solution.float()


def apply_factors(factors: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """latents [N, 16] -> rgb [N, 3] through factors [17, 3]."""
    factors = factors.to(latents.device, latents.dtype)
    return latents @ factors[:-1] + factors[-1]


def fit_quality(factors: torch.Tensor, latents: torch.Tensor, rgb: torch.Tensor) -> dict:
    """Per RGB channel: R² (1 - SSE/SST about the channel mean, so predicting the mean is 0) and
    RMSE, in the [-1, 1] range of ``rgb``."""
    latents, rgb = latents.double(), rgb.double()
    err = apply_factors(factors.double(), latents) - rgb
    sse = err.pow(2).sum(0)
    sst = (rgb - rgb.mean(0)).pow(2).sum(0)
    return {
        "r2": [round(float(v), 4) for v in 1 - sse / sst],
        "rmse": [round(float(v), 4) for v in (sse / len(rgb)).sqrt()],
    }


def fit_latent_rgb(
    vae: FluxVAE, images: Sequence[Image.Image] | None = None, *, side: int = FIT_SIDE
) -> torch.Tensor:
    """Factors [17, 3] (16 weights, then the bias) mapping ``vae``'s latents to RGB in [-1, 1],
    fitted by least squares on ``images`` (default: the shipped images)."""
    if images is None:
        images = [img for _, img in shipped_images()]
    return solve_latent_rgb(*latent_rgb_pairs(vae, images, side=side))


def fit_entry(vae: FluxVAE, *, side: int = FIT_SIDE) -> dict:
    """A stored-factors entry for ``vae``: fitted on the shipped images, with its fit quality."""
    named = shipped_images()
    latents, rgb = latent_rgb_pairs(vae, [img for _, img in named], side=side)
    return make_entry([name for name, _ in named], latents, rgb, side=side)


def make_entry(
    names: Sequence[str], latents: torch.Tensor, rgb: torch.Tensor, *, side: int
) -> dict:
    """The JSON entry of the factors fitted to (latents, rgb), which came from ``names``."""
    factors = solve_latent_rgb(latents, rgb)
    return {
        "fit": FIT_VERSION,
        "images": list(names),
        "side": side,
        "samples": len(latents),
        **fit_quality(factors, latents, rgb),
        **factors_to_json(factors),
    }


def factors_to_json(factors: torch.Tensor) -> dict:
    rows = [[float(f"{v:.7g}") for v in row] for row in factors.tolist()]  # fp32 precision
    return {"weights": rows[:-1], "bias": rows[-1]}


def factors_from_json(entry: Any) -> torch.Tensor | None:
    """Factors [17, 3] from an entry, or None if it is of another fit version or malformed."""
    try:
        if entry.get("fit") != FIT_VERSION:
            return None
        factors = torch.tensor([*entry["weights"], entry["bias"]], dtype=torch.float32)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if factors.shape != (17, 3) or not torch.isfinite(factors).all():
        return None
    return factors


# ----------------------------------------------------------------------------- identity, stores


def vae_identity(vae: FluxVAE) -> str:
    """A short stable digest of the VAE: its config, the latent scaling, every tensor's name and
    shape, and the values of :data:`IDENTITY_TENSORS` rounded to bf16 (so the same weights in
    fp32 or bf16, on any device, give one identity). Costs well under a second even for FLUX."""
    ae = vae.autoencoder
    config = {k: v for k, v in dict(ae.config).items() if not k.startswith("_")}
    digest = hashlib.sha256()
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(f"scale={SCALE_FACTOR};shift={SHIFT_FACTOR};".encode())
    state = ae.state_dict()
    for name in sorted(state):
        digest.update(f"{name}:{tuple(state[name].shape)};".encode())
    for name in IDENTITY_TENSORS:
        if name in state:
            values = state[name].detach().to("cpu", torch.bfloat16).contiguous()
            digest.update(name.encode() + values.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def read_store(path: Path) -> dict:
    """The stored-factors file as {"format": 1, "entries": {identity: entry}}; empty if absent
    or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"format": 1, "entries": {}}
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        return {"format": 1, "entries": {}}
    return data


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".writing-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_NUMBER_LIST.sub(_one_line, json.dumps(data, indent=1)) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_NUMBER_LIST = re.compile(r"\[\s*(-?[0-9][-+0-9.eE]*(?:,\s*-?[0-9][-+0-9.eE]*)*)\s*\]")


def _one_line(m: re.Match[str]) -> str:
    """A JSON list of numbers on one line, so a factor row reads as a row."""
    return "[" + ", ".join(v.strip() for v in m[1].split(",")) + "]"


def user_cache_file(identity: str) -> Path:
    return user_cache_dir() / USER_CACHE_SUBDIR / f"{identity}.json"


# ----------------------------------------------------------------------------- previews


def latent_rgb_image(
    latents: torch.Tensor,
    factors: torch.Tensor,
    *,
    size: tuple[int, int] | None = None,
    resample: Resample = "bilinear",
) -> Image.Image:
    """latents [1, 16, h, w] (or [16, h, w]) through factors [17, 3] -> an RGB image of h×w, or of
    ``size`` (width, height) when given."""
    z = latents[0] if latents.ndim == 4 else latents
    if z.ndim != 3 or z.shape[0] != factors.shape[0] - 1:
        raise SigmaInputError(
            f"a live preview needs latents [1, {factors.shape[0] - 1}, h, w], "
            f"got {list(latents.shape)}"
        )
    c, h, w = z.shape
    rgb = apply_factors(factors, z.detach().float().reshape(c, h * w).T)  # [h*w, 3]
    pixels = (rgb * 127.5 + 127.5).clamp_(0, 255).round_().to(torch.uint8)  # (x·0.5+0.5)·255
    img = Image.fromarray(pixels.reshape(h, w, 3).cpu().numpy())
    if size is not None and tuple(size) != img.size:
        img = img.resize(size, _RESAMPLE[resample])
    return img


class LatentPreviewer:
    """Live previews for one VAE: its latent-to-RGB factors, found or fitted once (lazily, on the
    first preview), then a matrix product per preview. Thread-safe."""

    def __init__(
        self,
        vae: FluxVAE,
        *,
        stored: str | os.PathLike | None = STORED_FACTORS,
        use_user_cache: bool = True,
    ) -> None:
        self.vae = vae
        self.stored = None if stored is None else Path(stored)
        self.use_user_cache = use_user_cache
        self.source: str | None = None  # "stored", "user cache" or "fitted", once resolved
        self._identity: str | None = None
        self._factors: torch.Tensor | None = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = vae_identity(self.vae)
        return self._identity

    @property
    def factors(self) -> torch.Tensor:
        """[17, 3] on the cpu: the stored ones for this VAE's identity, else the user cache's,
        else fitted now from the shipped images (and written to the user cache)."""
        factors = self._factors
        if factors is None:
            with self._lock:  # one lookup or fit, however many threads ask at once
                if self._factors is None:
                    self._factors, self.source = self._resolve()
                factors = self._factors
        return factors

    def _resolve(self) -> tuple[torch.Tensor, str]:
        identity = self.identity
        if self.stored is not None:
            found = factors_from_json(read_store(self.stored)["entries"].get(identity))
            if found is not None:
                return found, "stored"
        cache = user_cache_file(identity) if self.use_user_cache else None
        if cache is not None:
            found = factors_from_json(read_store(cache)["entries"].get(identity))
            if found is not None:
                return found, "user cache"
        entry = fit_entry(self.vae)
        if cache is not None:
            with contextlib.suppress(OSError):  # unwritable: keep them for this process only
                write_json_atomic(cache, {"format": 1, "entries": {identity: entry}})
        fitted = factors_from_json(entry)
        if fitted is None:  # the VAE gave non-finite latents or pixels on the shipped images
            raise CheckpointError("live preview: the VAE's fitted preview factors are not finite")
        return fitted, "fitted"

    def preview(
        self,
        latents: torch.Tensor,
        *,
        size: PreviewSize = "latent",
        resample: Resample = "bilinear",
    ) -> Image.Image:
        """The image a latent [1, 16, h, w] (an x0 estimate, or a final latent) shows: h×w for
        ``"latent"``, the decoder's output size for ``"output"``, or (width, height)."""
        h, w = latents.shape[-2:]
        if size == "latent":
            size = (w, h)
        elif size == "output":
            size = (w * self.vae.downsample, h * self.vae.downsample)
        elif isinstance(size, str) or resample not in _RESAMPLE:
            raise SigmaInputError(
                f"live preview: size {size!r} is not 'latent', 'output' or (width, height), or "
                f"resample {resample!r} not one of {', '.join(_RESAMPLE)}"
            )
        return latent_rgb_image(latents, self.factors, size=size, resample=resample)

    def preview_step(
        self,
        tensors: Mapping[str, Any],
        *,
        size: PreviewSize = "latent",
        resample: Resample = "bilinear",
    ) -> Image.Image:
        """The preview of a step callback's x0 estimate (needs :data:`LIVE_PREVIEW_TENSORS`)."""
        return self.preview(step_x0(tensors), size=size, resample=resample)


_PREVIEWERS: weakref.WeakKeyDictionary[FluxVAE, LatentPreviewer] = weakref.WeakKeyDictionary()
_PREVIEWERS_LOCK = threading.Lock()


def previewer_for(vae: FluxVAE) -> LatentPreviewer:
    """The one shared :class:`LatentPreviewer` of ``vae`` (kept while the VAE lives)."""
    with _PREVIEWERS_LOCK:
        previewer = _PREVIEWERS.get(vae)
        if previewer is None:
            previewer = _PREVIEWERS[vae] = LatentPreviewer(vae)
        return previewer
