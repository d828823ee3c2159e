"""Tests for sigma_core.inputs.images: every source kind, EXIF orientation and crops, colour
normalisation and BAGEL's VAE sizes. Data URIs, bad files and limits: test_images_limits.py."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from sigma_core.errors import ImageInputError
from sigma_core.geometry import vae_size
from sigma_core.inputs.images import (
    ImageLimits,
    crop_image,
    encode_data_uri,
    load_image,
    to_rgb,
    vae_resize,
)
from tests.image_helpers import (
    BLUE,
    RED,
    WHITE,
    close,
    encode,
    forbid_decoding,
    noise_png,
    small_png,
)


def exif_rotated_jpeg() -> bytes:
    """40x20 stored pixels, red 8x8 block top-left, tagged orientation 6 (rotate 90° clockwise)."""
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 8, 8))
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif, quality=95)


# --- every source kind --------------------------------------------------------------------------


def _check_small(img: Image.Image) -> None:
    assert img.mode == "RGB"
    assert img.size == (6, 4)
    assert img.getpixel((1, 2)) == RED
    assert img.getpixel((0, 0)) == BLUE


def test_load_from_str_path(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(small_png())
    _check_small(load_image(str(path)))


def test_load_from_pathlike(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(small_png())
    _check_small(load_image(path))


def test_load_from_bytes() -> None:
    _check_small(load_image(small_png()))
    _check_small(load_image(bytearray(small_png())))


def test_load_from_data_uri() -> None:
    _check_small(load_image(encode_data_uri(small_png())))


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_load_other_allowed_formats(fmt: str) -> None:
    src = Image.new("RGB", (6, 4), BLUE)
    src.putpixel((1, 2), RED)
    _check_small(load_image(encode(src, fmt, **({"lossless": True} if fmt == "WEBP" else {}))))


def test_load_phone_style_multi_picture_jpeg() -> None:
    first = Image.new("RGB", (8, 6), RED)
    data = encode(first, "MPO", save_all=True, append_images=[Image.new("RGB", (8, 6))])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    img = load_image(data)
    assert img.size == (8, 6)
    assert close(img.getpixel((4, 3)), RED)


def test_load_from_pil_copies_and_normalises() -> None:
    src = Image.new("RGBA", (6, 4), (*BLUE, 255))
    src.putpixel((1, 2), (*RED, 255))
    img = load_image(src)
    _check_small(img)
    assert img is not src
    assert src.mode == "RGBA"


def test_load_from_lazy_pil_image_checks_pixels_first(monkeypatch: pytest.MonkeyPatch) -> None:
    lazy = Image.open(io.BytesIO(encode(Image.new("L", (100, 100)))))
    forbid_decoding(monkeypatch)
    with pytest.raises(ImageInputError, match=r"100x100"):
        load_image(lazy, limits=ImageLimits(max_pixels=1000))


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0, 128, 255]], dtype=np.uint8), [(0,) * 3, (128,) * 3, (255,) * 3]),
        (np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8), [RED, BLUE]),
        (np.array([[[255, 0, 0, 255], [0, 0, 0, 0]]], dtype=np.uint8), [RED, WHITE]),
        (np.array([[[7], [9]]], dtype=np.uint8), [(7,) * 3, (9,) * 3]),
        # uint16: the top byte is kept.
        (
            np.array([[65535, 32768, 255, 0]], dtype=np.uint16),
            [(255,) * 3, (128,) * 3, (0,) * 3, (0,) * 3],
        ),
        # float: clipped to [0, 1], times 255, rounded half to even (127.5 -> 128).
        (
            np.array([[0.0, 0.5, 1.0, 1.5, -0.2, np.nan]], dtype=np.float64),
            [(0,) * 3, (128,) * 3, (255,) * 3, (255,) * 3, (0,) * 3, (0,) * 3],
        ),
        (np.array([[[1.0, 0.0, 0.0]]], dtype=np.float32), [RED]),
    ],
)
def test_load_from_numpy(array: np.ndarray, expected: list[tuple[int, int, int]]) -> None:
    img = load_image(array)
    assert img.mode == "RGB"
    assert img.size == (len(expected), 1)
    assert [img.getpixel((x, 0)) for x in range(len(expected))] == expected


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((2, 2, 2), dtype=np.uint8), "shape"),
        (np.zeros(5, dtype=np.uint8), "shape"),
        (np.zeros((2, 2), dtype=np.int64), "dtype int64"),
        (np.zeros((2, 2), dtype=bool), "dtype bool"),
        (np.zeros((0, 3), dtype=np.uint8), "empty"),
    ],
)
def test_load_from_numpy_rejects(array: np.ndarray, match: str) -> None:
    with pytest.raises(ImageInputError, match=match):
        load_image(array, name="mask")


def test_numpy_pixel_limit() -> None:
    with pytest.raises(ImageInputError, match=r"50x40 = 2,000 pixels.*1,000"):
        load_image(np.zeros((40, 50), dtype=np.uint8), limits=ImageLimits(max_pixels=1000))


def test_unsupported_source_type() -> None:
    with pytest.raises(ImageInputError, match=r"^references\[0\]\.image: unsupported.*int"):
        load_image(42, name="references[0].image")  # type: ignore[arg-type]


# --- EXIF orientation and crop ------------------------------------------------------------------


def test_exif_orientation_applied() -> None:
    img = load_image(exif_rotated_jpeg())
    # Rotating 40x20 by 90° clockwise gives 20x40; the top-left block moves to the top-right.
    assert img.size == (20, 40)
    assert close(img.getpixel((16, 3)), RED)
    assert close(img.getpixel((3, 3)), BLUE)
    assert close(img.getpixel((16, 36)), BLUE)


def test_crop_is_in_oriented_pixels() -> None:
    # (0, 30, 20, 40) only fits the upright 20x40 image, not the stored 40x20 one.
    bottom = load_image(exif_rotated_jpeg(), crop=(0, 30, 20, 40))
    assert bottom.size == (20, 10)
    assert close(bottom.getpixel((16, 5)), BLUE)
    corner = load_image(exif_rotated_jpeg(), crop=(12, 0, 20, 8))
    assert corner.size == (8, 8)
    assert close(corner.getpixel((4, 4)), RED)


def test_crop_effect() -> None:
    img = Image.new("RGB", (10, 8), BLUE)
    img.putpixel((3, 2), RED)
    out = crop_image(img, (3, 2, 7, 5))
    assert out.size == (4, 3)
    assert out.getpixel((0, 0)) == RED
    assert crop_image(img, (0, 0, 10, 8)).size == (10, 8)
    assert crop_image(img, (np.int64(3), 2, 7, 5)).size == (4, 3)


@pytest.mark.parametrize(
    ("box", "match"),
    [
        ((1, 2, 3), "4 integers"),
        ((0, 0, 5.0, 5), "4 integers"),
        (("0", 0, 5, 5), "4 integers"),
        ((True, 0, 5, 5), "4 integers"),
        ((5, 0, 5, 5), r"right \(5\) must be greater than left \(5\)"),
        ((6, 0, 5, 5), "right"),
        ((0, 4, 5, 4), r"bottom \(4\) must be greater than top \(4\)"),
        ((-1, 0, 5, 5), "outside the image, which is 10x8 pixels"),
        ((0, 0, 11, 5), "10x8"),
        ((0, 0, 5, 9), "10x8"),
    ],
)
def test_crop_validation(box: tuple, match: str) -> None:
    with pytest.raises(ImageInputError, match=r"^references\[1\]\.crop: .*" + match):
        crop_image(Image.new("RGB", (10, 8)), box, name="references[1].crop")


def test_load_image_crop_error_names_field() -> None:
    with pytest.raises(ImageInputError, match=r"^subject crop: .*6x4"):
        load_image(Image.new("RGB", (6, 4)), crop=(0, 0, 7, 4), name="subject")


# --- colour modes -------------------------------------------------------------------------------


def test_rgba_composited_on_white() -> None:
    img = Image.new("RGBA", (3, 1))
    img.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == RED
    # Half-transparent black on white: 255 * (1 - 128/255) = 127.
    assert close(out.getpixel((2, 0)), (127, 127, 127), tol=1)
    assert load_image(encode(img)).getpixel((0, 0)) == WHITE


def test_la_and_pa_composited_on_white() -> None:
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (40, 255)])
    assert [to_rgb(la).getpixel((x, 0)) for x in range(2)] == [WHITE, (40, 40, 40)]
    pa = Image.new("PA", (1, 1), (0, 0))
    assert to_rgb(pa).getpixel((0, 0)) == WHITE


def _palette_image() -> Image.Image:
    img = Image.new("P", (2, 1))
    img.putpalette([0, 255, 0, 255, 0, 0])
    img.putdata([0, 1])
    return img


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt: str) -> None:
    data = encode(_palette_image(), fmt, transparency=0)
    out = load_image(data)
    assert [out.getpixel((x, 0)) for x in range(2)] == [WHITE, RED]


def test_palette_without_transparency() -> None:
    out = to_rgb(_palette_image())
    assert [out.getpixel((x, 0)) for x in range(2)] == [(0, 255, 0), RED]


def test_palette_with_rgba_palette() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([0, 255, 0, 0, 255, 0, 0, 255], rawmode="RGBA")
    img.putdata([0, 1])
    out = to_rgb(img)
    assert [out.getpixel((x, 0)) for x in range(2)] == [WHITE, RED]


def test_16_bit_grey_scaled_not_clipped() -> None:
    img = Image.fromarray(np.array([[65535, 32768, 256, 255]], dtype=np.uint16))
    assert img.mode == "I;16"
    expected = [(255,) * 3, (128,) * 3, (1,) * 3, (0,) * 3]
    out = to_rgb(img)
    assert [out.getpixel((x, 0)) for x in range(4)] == expected
    from_png = load_image(encode(img))  # 16-bit PNG file
    assert [from_png.getpixel((x, 0)) for x in range(4)] == expected


def test_32_bit_int_and_float_read_as_16_bit() -> None:
    values = [[65535, 32768, 70000, -5]]
    expected = [(255,) * 3, (128,) * 3, (255,) * 3, (0,) * 3]
    for img in (
        Image.fromarray(np.array(values, dtype=np.int32)),
        Image.fromarray(np.array(values, dtype=np.float32)),
    ):
        assert img.mode in ("I", "F")
        out = to_rgb(img)
        assert [out.getpixel((x, 0)) for x in range(4)] == expected


def test_cmyk() -> None:
    assert to_rgb(Image.new("CMYK", (1, 1), (0, 0, 0, 0))).getpixel((0, 0)) == WHITE
    assert to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0))).getpixel((0, 0)) == RED
    from_jpeg = load_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert from_jpeg.mode == "RGB"
    assert from_jpeg.size == (8, 8)


def test_grey_l_and_bilevel() -> None:
    assert to_rgb(Image.new("L", (1, 1), 100)).getpixel((0, 0)) == (100, 100, 100)
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    out = load_image(encode(bilevel))
    assert [out.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), WHITE]


def test_ycbcr() -> None:
    out = to_rgb(Image.new("RGB", (1, 1), RED).convert("YCbCr"))
    assert out.mode == "RGB"
    assert close(out.getpixel((0, 0)), RED, tol=3)


# --- BAGEL sizes --------------------------------------------------------------------------------

# Each row is worked by hand from MaxLongEdgeMinShortEdgeResize (max 1024, min 512, stride 16,
# max_pixels 14*14*9*1024 = 1,806,336); md(v) = max(16, round(v / 16) * 16), round half to even.
VAE_SIZES = [
    # s = min(1024/1024, 1) = 1; max(1, 512/1024) = 1 -> (1024, 1024)
    ((1024, 1024), (1024, 1024)),
    # s = min(2, 1) = 1; max(1, 1) = 1 -> (512, 512)
    ((512, 512), (512, 512)),
    # s = min(4, 1) = 1; max(1, 512/256 = 2) = 2 -> (512, 512)
    ((256, 256), (512, 512)),
    # s = 512/1 = 512 -> (512, 512)
    ((1, 1), (512, 512)),
    # s = min(0.5, 1) = 0.5; max(0.5, 1/3) = 0.5 -> (1024, 768)
    ((2048, 1536), (1024, 768)),
    # s = max(1, 512/480) = 1.0667: 640 * s = 682.67 -> 683 -> 683/16 = 42.69 -> 43 -> 688;
    # 480 * s = 512 -> (688, 512)
    ((640, 480), (688, 512)),
    ((480, 640), (512, 688)),
    # s = min(1.024, 1) = 1; max(1, 0.512) = 1: 1000/16 = 62.5 -> 62 (half to even) -> 992
    ((1000, 1000), (992, 992)),
    # s = 1024/3000 = 0.3413: 1024; 2000 * s = 682.67 -> 683 -> 688 -> (1024, 688)
    ((3000, 2000), (1024, 688)),
    # s = max(0.256, 512/100 = 5.12) = 5.12 -> (20480, 512); area 10,485,760 > 1,806,336 so
    # s = 1806336 / 10485760 = 0.172265625: 20480 * s = 3528 -> 220.5 -> 220 -> 3520;
    # 512 * s = 88.2 -> 88 -> 5.5 -> 6 -> 96. Long edge 3520 > 1024: s = 1024/3520:
    # 3520 * s = 1024; 96 * s = 27.93 -> 28 -> 1.75 -> 2 -> 32 -> (1024, 32)
    ((4000, 100), (1024, 32)),
    ((100, 4000), (32, 1024)),
    # s = max(0.2844, 512/500 = 1.024): 3600 * s = 3686.4 -> 3686 -> 230.375 -> 230 -> 3680;
    # 500 * s = 512. Area 1,884,160 > 1,806,336: s = 1806336/1884160: 3680 * s = 3528 -> 3520;
    # 512 * s = 490.86 -> 491 -> 30.69 -> 31 -> 496. s = 1024/3520: 1024; 496 * s = 144.29 ->
    # 144 -> 9 -> 144 -> (1024, 144)
    ((3600, 500), (1024, 144)),
]


@pytest.mark.parametrize(("size", "expected"), VAE_SIZES)
def test_vae_size_table(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert vae_size(*size) == expected


def test_vae_size_custom_bounds() -> None:
    # s = min(512/640, 1) = 0.8; max(0.8, 256/480) = 0.8 -> (512, 384)
    assert vae_size(640, 480, max_size=512, min_size=256) == (512, 384)


def test_vae_size_rejects_empty() -> None:
    with pytest.raises(ImageInputError, match="positive"):
        vae_size(0, 10)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8000), st.integers(1, 8000))
def test_vae_size_invariants(width: int, height: int) -> None:
    new_w, new_h = vae_size(width, height)
    assert new_w % 16 == 0 and new_h % 16 == 0
    assert min(new_w, new_h) >= 16
    assert max(new_w, new_h) <= 1024
    assert new_w * new_h <= 14 * 14 * 9 * 1024


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_vae_resize(mode: str) -> None:
    img = Image.new(mode, (640, 480))
    out = vae_resize(img)
    assert out.size == vae_size(640, 480) == (688, 512)
    assert out.mode == mode


def test_vae_resize_keeps_right_sized_image() -> None:
    img = Image.new("RGB", (1024, 768), RED)
    out = vae_resize(img)
    assert out.size == (1024, 768)
    assert out is not img
    assert out.tobytes() == img.tobytes()


def test_vae_resize_matches_pil_bicubic() -> None:
    img = load_image(noise_png((50, 30)))
    expected = img.resize(vae_size(50, 30), Image.Resampling.BICUBIC)
    assert vae_resize(img).tobytes() == expected.tobytes()
