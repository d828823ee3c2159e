"""Image builders shared by tests/test_images.py and tests/test_images_limits.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise_png(size: tuple[int, int] = (64, 64)) -> bytes:
    """A PNG that compresses badly, so cutting it in half loses pixel data."""
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)))


def small_png() -> bytes:
    """A 6x4 blue PNG with one red pixel at (1, 2)."""
    img = Image.new("RGB", (6, 4), BLUE)
    img.putpixel((1, 2), RED)
    return encode(img)


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pixel decoding fail loudly, to prove a refusal came from the header alone."""

    def boom(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)


def close(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))
