"""Tests for sigma_core.inputs.images: data URIs, missing, empty, truncated and corrupt
files, and the limits on bytes and pixels (decompression bombs refused before decoding)."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from sigma_core.errors import ImageInputError
from sigma_core.inputs.images import (
    DEFAULT_LIMITS,
    ImageLimits,
    decode_data_uri,
    encode_data_uri,
    image_format,
    is_data_uri,
    load_image,
    read_image_bytes,
)
from tests.image_helpers import RED, close, encode, forbid_decoding, noise_png, small_png


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def crafted_png(width: int, height: int, idat: bytes, bit_depth: int = 8) -> bytes:
    """A greyscale PNG whose header declares width x height, whatever the IDAT holds."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def real_bomb_png(side: int = 20000) -> bytes:
    """A complete, valid side x side 1-bit PNG (all black), compressed row block by row block.

    Built by hand because PIL keeps mode '1' at one byte per pixel: 400 MB to write it.
    """
    row = b"\0" * (1 + side // 8)  # filter byte + packed bits
    rows_per_block = 500
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * rows_per_block) for _ in range(side // rows_per_block))
    return crafted_png(side, side, idat + z.flush(), bit_depth=1)


# --- data URIs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp")])
def test_data_uri_round_trip(fmt: str, mime: str) -> None:
    data = encode(Image.new("RGB", (5, 3), RED), fmt)
    assert image_format(data) == mime
    uri = encode_data_uri(data)
    assert uri.startswith(f"data:image/{mime};base64,")
    assert is_data_uri(uri)
    assert decode_data_uri(uri) == data
    img = load_image(uri)
    assert img.size == (5, 3)
    assert close(img.getpixel((2, 1)), RED)


def test_data_uri_tolerates_case_whitespace_and_params() -> None:
    b64 = base64.b64encode(small_png()).decode()
    uri = f"  DATA:Image/PNG;name=a.png;BASE64,{b64[:10]}\n{b64[10:]}  "
    assert is_data_uri(uri)
    assert decode_data_uri(uri) == small_png()


def test_is_data_uri() -> None:
    assert not is_data_uri("/tmp/data:x.png")
    assert not is_data_uri("picture.png")
    assert not is_data_uri("")


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("data:image/gif;base64,R0lGODlhAQABAAAAACw=", "'image/gif' is not allowed"),
        ("data:text/plain;base64,aGVsbG8=", "'text/plain' is not allowed"),
        ("data:;base64,aGVsbG8=", r"'\(none\)' is not allowed"),
        ("data:image/png,rawbytes", "must be base64-encoded"),
        ("data:image/png;base64,@@@@", "invalid base64"),
        ("data:image/png;base64,iVBORw0KGgo", "invalid base64"),  # bad padding
        ("data:image/png;base64", "not a data URI"),
        ("data:image/png;base64,", "no data"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "not a PNG, JPEG or WebP"),
    ],
)
def test_data_uri_errors(uri: str, match: str) -> None:
    with pytest.raises(ImageInputError, match=match):
        decode_data_uri(uri)
    with pytest.raises(ImageInputError, match=r"^references\[2\]\.image: .*" + match):
        load_image(uri, name="references[2].image")


def test_data_uri_too_big_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri = encode_data_uri(small_png())
    assert decode_data_uri(uri, limits=ImageLimits(max_bytes=len(small_png()))) == small_png()

    def no_decode(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("base64 was decoded")

    monkeypatch.setattr(base64, "b64decode", no_decode)
    limits = ImageLimits(max_bytes=len(small_png()) - 1)
    with pytest.raises(ImageInputError, match=rf"{len(small_png())} bytes, over the limit"):
        decode_data_uri(uri, limits=limits)


def test_encode_data_uri_rejects_other_formats() -> None:
    gif = encode(Image.new("RGB", (1, 1)), "GIF")
    assert image_format(gif) is None
    with pytest.raises(ImageInputError, match="not PNG, JPEG or WebP"):
        encode_data_uri(gif)
    with pytest.raises(ImageInputError):
        encode_data_uri(b"")


def test_image_format_short_inputs() -> None:
    assert image_format(b"") is None
    assert image_format(b"RIFF") is None
    assert image_format(b"RIFF\0\0\0\0WAVE") is None


# --- files and corrupt data ---------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageInputError, match=r"^subject: file not found: .*nope\.png"):
        load_image(path, name="subject")
    with pytest.raises(ImageInputError, match=r"nope\.png"):
        read_image_bytes(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="is a directory"):
        load_image(str(tmp_path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageInputError, match=r"empty\.png' is empty \(0 bytes\)"):
        load_image(path)


def test_empty_bytes() -> None:
    with pytest.raises(ImageInputError, match="empty"):
        load_image(b"")


def test_non_image_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello, I am text\n")
    with pytest.raises(ImageInputError, match="is not an image PIL can read"):
        load_image(path)


def test_formats_outside_the_allowed_set_are_refused() -> None:
    ppm = encode(Image.new("RGB", (2, 2)), "PPM")  # PIL reads PPM, but we do not let it
    with pytest.raises(ImageInputError, match="is not an image PIL can read"):
        load_image(ppm)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(fmt: str) -> None:
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(ImageInputError, match=r"^image: image is truncated or corrupt"):
        load_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_header() -> None:
    with pytest.raises(ImageInputError, match="header is truncated or corrupt"):
        load_image(noise_png()[:20])


def test_oversized_file_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(noise_png())
    size = path.stat().st_size
    limits = ImageLimits(max_bytes=100)
    with pytest.raises(ImageInputError, match=rf"{size:,} bytes, over the limit of 100 bytes"):
        load_image(path, limits=limits)
    with pytest.raises(ImageInputError, match="over the limit"):
        read_image_bytes(path, limits=limits)
    assert read_image_bytes(path) == path.read_bytes()


def test_oversized_bytes_in_mb() -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * 1024 * 1024)
    with pytest.raises(ImageInputError, match=r"2\.0 MB, over the limit of 1\.0 MB"):
        load_image(data, limits=ImageLimits(max_bytes=1024 * 1024))


# --- decompression bombs ------------------------------------------------------------------------


def test_pixel_limit_small(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.new("L", (100, 100)))
    forbid_decoding(monkeypatch)
    with pytest.raises(
        ImageInputError, match=r"^ref: image is 100x100 = 10,000 pixels, over the limit of 1,000"
    ):
        load_image(data, limits=ImageLimits(max_pixels=1000), name="ref")


def test_header_declaring_huge_size_refused_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 9000 x 9000 = 81,000,000 > 64,000,000: below PIL's own limit, so ours must catch it.
    tiny = crafted_png(9000, 9000, zlib.compress(b"\0" * 9001))
    assert len(tiny) < 200
    forbid_decoding(monkeypatch)
    with pytest.raises(ImageInputError, match=r"9000x9000 = 81,000,000 pixels.*64,000,000"):
        load_image(tiny)


def test_pil_bomb_warning_becomes_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # 12000 x 12000 = 144M: PIL warns while opening (over 89M); that must refuse, not just warn.
    tiny = crafted_png(12000, 12000, zlib.compress(b"\0" * 12001))
    forbid_decoding(monkeypatch)
    with pytest.raises(ImageInputError, match="too large to decode safely"):
        load_image(tiny, limits=ImageLimits(max_pixels=10**9))


def test_real_decompression_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = real_bomb_png()  # 20000 x 20000 pixels in about 50 KB
    assert len(bomb) < 200_000
    max_pixels_before = Image.MAX_IMAGE_PIXELS
    forbid_decoding(monkeypatch)
    with pytest.raises(ImageInputError, match=r"^image: refused: .*too large to decode safely"):
        load_image(bomb)
    # A caller raising our limit does not switch off PIL's own check.
    with pytest.raises(ImageInputError, match="too large to decode safely"):
        load_image(bomb, limits=ImageLimits(max_pixels=10**9))
    assert max_pixels_before == Image.MAX_IMAGE_PIXELS
    assert ImageLimits() == DEFAULT_LIMITS
