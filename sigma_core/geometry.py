"""Image and latent geometry: every size fact of BAGEL's image path, in one place.

A pixel image of W x H becomes a FLUX VAE latent [16, H/8, W/8]; BAGEL packs 2 x 2 latent cells
into one token of 2*2*16 = 64 values, so one token covers 16 x 16 pixels. Images are resized to
at most 1024 px per side (BAGEL's VAE transform), which bounds the latent grid at 64 x 64 tokens:
the size of the learned position table.
"""

from __future__ import annotations

from sigma_core.errors import ImageInputError

VAE_DOWNSAMPLE = 8  # pixels per latent cell (FLUX VAE)
LATENT_CHANNELS = 16  # FLUX VAE latent channels
LATENT_PATCH = 2  # latent cells per token side
TOKEN_STRIDE = VAE_DOWNSAMPLE * LATENT_PATCH  # 16 px per token side; sizes are multiples of it
MAX_SIDE = 1024  # BAGEL's VAE transform: longest side
MIN_SHORT_SIDE = 512  # BAGEL's VAE transform: shortest side, where the pixel cap allows
MAX_PIXELS = 14 * 14 * 9 * 1024  # BAGEL's VAE transform: pixel cap (about 1.8 MP)
MAX_LATENT_GRID = MAX_SIDE // TOKEN_STRIDE  # 64 tokens per side: the position table
MIN_SIDE = 64  # smallest output side accepted
DEFAULT_OUTPUT_SIZE = (1024, 1024)  # (width, height) when nothing else sets the size


def vae_size(
    width: int,
    height: int,
    *,
    max_size: int = MAX_SIDE,
    min_size: int = MIN_SHORT_SIDE,
    stride: int = TOKEN_STRIDE,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """The (width, height) BAGEL's MaxLongEdgeMinShortEdgeResize gives one image (img_num=1).

    Kept arithmetic-for-arithmetic with BAGEL's data/transforms.py, banker's rounding and the
    area ratio (not its square root) of the max_pixels step included, so latents match its own.
    """
    if width < 1 or height < 1:
        raise ImageInputError(f"image: size must be positive, got {width}x{height}")

    def make_divisible(value: float) -> int:
        return max(stride, int(round(value / stride) * stride))

    def apply_scale(w: int, h: int, scale: float) -> tuple[int, int]:
        return make_divisible(round(w * scale)), make_divisible(round(h * scale))

    scale = min(max_size / max(width, height), 1.0)
    scale = max(scale, min_size / min(width, height))
    new_w, new_h = apply_scale(width, height, scale)
    if new_w * new_h > max_pixels:
        new_w, new_h = apply_scale(new_w, new_h, max_pixels / (new_w * new_h))
    if max(new_w, new_h) > max_size:
        new_w, new_h = apply_scale(new_w, new_h, max_size / max(new_w, new_h))
    return new_w, new_h


def latent_grid(size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of latent tokens for a (width, height) that is a multiple of 16."""
    width, height = size
    return height // TOKEN_STRIDE, width // TOKEN_STRIDE


def latent_shape(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The VAE latent [1, 16, H/8, W/8] of a (width, height) image."""
    width, height = size
    return (1, LATENT_CHANNELS, height // VAE_DOWNSAMPLE, width // VAE_DOWNSAMPLE)
