"""Safe image input: every image a user gives us goes through here before the model sees it.

Images come from untrusted places (uploads, data URIs, preset files), so sizes are checked before
anything is decoded: the encoded byte size first, then width*height read from the header (a small
file can declare a huge image: a decompression bomb). Only then are pixels decoded. Every problem
is an :class:`ImageInputError` whose message starts with the name of the field that was wrong.

Nothing here uses pickle, and PIL's global settings (``MAX_IMAGE_PIXELS``,
``LOAD_TRUNCATED_IMAGES``) are left alone: PIL's own bomb check stays active on top of ours.
"""

from __future__ import annotations

import base64
import binascii
import io
import numbers
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sigma_core.errors import ImageInputError
from sigma_core.geometry import vae_size
from sigma_core.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray


@dataclass(frozen=True)
class ImageLimits:
    """Upper bounds checked before decoding, so a hostile file cannot exhaust memory."""

    max_bytes: int = MAX_IMAGE_BYTES  # encoded size
    max_pixels: int = MAX_IMAGE_PIXELS  # width * height, read from the header


DEFAULT_LIMITS = ImageLimits()

# Formats PIL may try when decoding files and bytes. Restricting them keeps PIL's rarer parsers
# (and EPS, which runs Ghostscript) away from untrusted input. "JPEG" also opens the multi-picture
# JPEGs (MPO) many phones write.
_PIL_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_NOT_AN_IMAGE = "is not an image PIL can read (PNG, JPEG, WebP, GIF, BMP or TIFF)"

# Data URIs are limited to the three formats browsers and BAGEL pipelines exchange.
_DATA_URI_MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
# 16/32-bit single-channel modes, all read as 16-bit grey (0..65535); see to_rgb.
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_PNG_MODES = frozenset({"1", "L", "P", "RGB"})  # stored by PNG as they are, when opaque

_MB = 1024 * 1024


def size_text(n: int) -> str:
    """Byte counts in MB, or in bytes when MB would round to nothing (so every limit message,
    here and in the PNG and preset readers, shows sizes the same way)."""
    return f"{n / _MB:.1f} MB" if n >= _MB // 10 else f"{n:,} bytes"


def _too_many_bytes(name: str, what: str, size: int, limits: ImageLimits) -> ImageInputError:
    return ImageInputError(
        f"{name}: {what} is {size_text(size)}, over the limit of {size_text(limits.max_bytes)}"
    )


def image_format(data: bytes) -> str | None:
    """Name the format from the magic bytes ("png", "jpeg", "webp"), without decoding."""
    head = bytes(data[:12])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def is_data_uri(s: str) -> bool:
    """Tell a data URI from a file path, so one string field can hold either."""
    return s.lstrip()[:5].lower() == "data:"


def decode_data_uri(uri: str, *, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """Return the image bytes of a base64 PNG, JPEG or WebP data URI."""
    return _decode_data_uri(uri, limits, "image")


def _decode_data_uri(uri: str, limits: ImageLimits, name: str) -> bytes:
    header, sep, payload = uri.strip().partition(",")
    if not is_data_uri(header) or not sep:
        raise ImageInputError(f"{name}: not a data URI (expected 'data:image/png;base64,...')")
    mime, *params = (part.strip().lower() for part in header[5:].split(";"))
    if mime not in _DATA_URI_MIMES.values():
        raise ImageInputError(
            f"{name}: data URI type {mime or '(none)'!r} is not allowed; "
            f"use one of {', '.join(sorted(_DATA_URI_MIMES.values()))}"
        )
    if not params or params[-1] != "base64":
        raise ImageInputError(f"{name}: data URI must be base64-encoded ('{mime};base64,...')")
    # Decoded size from the base64 length, so an oversized payload is never decoded.
    estimate = len(payload) // 4 * 3 - payload.count("=", -2)
    if estimate > limits.max_bytes:
        raise _too_many_bytes(name, "data URI image", estimate, limits)
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"{name}: data URI has invalid base64 data ({exc})") from None
    if not data:
        raise ImageInputError(f"{name}: data URI holds no data")
    if image_format(data) is None:
        raise ImageInputError(f"{name}: data URI content is not a PNG, JPEG or WebP image")
    return data


def encode_data_uri(data: bytes) -> str:
    """Wrap PNG, JPEG or WebP bytes in a data URI, with the type taken from the bytes."""
    fmt = image_format(data)
    if fmt is None:
        raise ImageInputError("image: cannot make a data URI: the data is not PNG, JPEG or WebP")
    return f"data:{_DATA_URI_MIMES[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


def read_image_bytes(
    path: str | os.PathLike, *, limits: ImageLimits = DEFAULT_LIMITS, name: str = "image"
) -> bytes:
    """Read an image file, refusing missing, special, empty or oversized files before reading."""
    return _read_file(path, limits, name)


def _read_file(path: str | os.PathLike, limits: ImageLimits, name: str) -> bytes:
    shown = repr(os.fspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageInputError(f"{name}: file not found: {shown}") from None
    except OSError as exc:
        raise ImageInputError(f"{name}: cannot access file {shown}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageInputError(f"{name}: {shown} is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageInputError(f"{name}: {shown} is not a regular file")
    if st.st_size == 0:
        raise ImageInputError(f"{name}: file {shown} is empty (0 bytes)")
    if st.st_size > limits.max_bytes:
        raise _too_many_bytes(name, f"file {shown}", st.st_size, limits)
    try:
        with open(path, "rb") as f:
            # One byte over the limit is enough to notice a file that grew since stat().
            data = f.read(limits.max_bytes + 1)
    except OSError as exc:
        raise ImageInputError(f"{name}: cannot read file {shown}: {exc.strerror}") from None
    if len(data) > limits.max_bytes:
        raise _too_many_bytes(name, f"file {shown}", len(data), limits)
    return data


def _check_pixels(width: int, height: int, limits: ImageLimits, name: str) -> None:
    if width < 1 or height < 1:
        raise ImageInputError(f"{name}: image is empty ({width}x{height} pixels)")
    if width * height > limits.max_pixels:
        raise ImageInputError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{limits.max_pixels:,} pixels"
        )


def _bomb_error(name: str, exc: Exception) -> ImageInputError:
    return ImageInputError(f"{name}: refused: the image is too large to decode safely ({exc})")


def _open_bytes(data: bytes, limits: ImageLimits, name: str) -> Image.Image:
    """Open encoded bytes lazily: only the header is parsed, no pixels are decoded."""
    if not data:
        raise ImageInputError(f"{name}: image data is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise _too_many_bytes(name, "image data", len(data), limits)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(name, exc) from None
        except UnidentifiedImageError:
            raise ImageInputError(f"{name}: {_NOT_AN_IMAGE}") from None
        # PIL's parsers raise many exception types on malformed headers; all mean bad input.
        except Exception as exc:
            raise ImageInputError(f"{name}: image header is truncated or corrupt ({exc})") from None


def _decode(img: Image.Image, limits: ImageLimits, name: str) -> Image.Image:
    """Check the declared size, then decode the pixels."""
    _check_pixels(img.width, img.height, limits, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(name, exc) from None
        except Exception as exc:
            raise ImageInputError(f"{name}: image is truncated or corrupt ({exc})") from None
    return img


def _from_array(arr: np.ndarray, limits: ImageLimits, name: str) -> Image.Image:
    """Turn an HxW, HxWx3 or HxWx4 array (uint8, uint16 or float in [0, 1]) into an image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageInputError(
            f"{name}: array of shape {arr.shape} is not an image; expected HxW, HxWx3 or HxWx4"
        )
    _check_pixels(arr.shape[1], arr.shape[0], limits, name)
    if arr.dtype == np.uint8:
        pixels = arr
    elif arr.dtype == np.uint16:
        pixels = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        clipped = np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)
        pixels = np.rint(clipped * 255.0).astype(np.uint8)
    else:
        raise ImageInputError(
            f"{name}: array dtype {arr.dtype} is not supported; "
            "use uint8, uint16 or float in [0, 1]"
        )
    return Image.fromarray(np.ascontiguousarray(pixels))


def _has_alpha(img: Image.Image) -> bool:
    """Alpha channel, RGBA palette or a transparent colour key (PNG tRNS, GIF)."""
    return (
        img.mode in _ALPHA_MODES
        or "transparency" in img.info
        or (img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA")
    )


def _storable(img: Image.Image, name: str) -> Image.Image:
    """The image in a mode PNG stores losslessly and :func:`to_rgb` reads the same way: 1, L, P
    and RGB stay as they are (compact); transparency becomes RGBA; anything else 8-bit RGB."""
    if img.mode in _WIDE_GREY_MODES:
        # 16-bit grey keeps its top byte (65535 -> 255, 32768 -> 128); 'I' and 'F' are read the
        # same way, since PIL gives those modes to 16-bit sources: values outside 0..65535 clip.
        wide = np.asarray(img)
        if wide.dtype.kind == "f":
            wide = np.nan_to_num(wide)
        img = Image.fromarray((np.clip(wide, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8))
    if not _has_alpha(img) and img.mode in _PNG_MODES:
        return img
    try:
        return img.convert("RGBA" if _has_alpha(img) else "RGB")
    except ValueError as exc:
        raise ImageInputError(
            f"{name}: cannot convert image mode {img.mode} to RGB ({exc})"
        ) from None


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    img = _storable(img, name)
    if img.mode != "RGBA":
        return img.convert("RGB")
    # As BAGEL's pil_img2rgb: composite on white, with alpha as the paste mask.
    white = Image.new("RGB", img.size, (255, 255, 255))
    white.paste(img, mask=img.getchannel("A"))
    return white


def to_rgb(img: Image.Image) -> Image.Image:
    """Bring any PIL mode to 8-bit RGB, the only input the model takes.

    Transparency is composited on white (as BAGEL does). 16-bit and 32-bit single-channel modes
    ('I;16', 'I', 'F') are all read as 0..65535 grey and scaled to 8 bits by ``value >> 8``.
    """
    return _to_rgb(img, "image")


def crop_image(
    img: Image.Image, box: tuple[int, int, int, int], *, name: str = "crop"
) -> Image.Image:
    """Crop to (left, top, right, bottom), refusing boxes that are empty or leave the image."""
    if (
        not isinstance(box, tuple | list)
        or len(box) != 4
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in box)
    ):
        raise ImageInputError(f"{name}: must be 4 integers (left, top, right, bottom), got {box!r}")
    left, top, right, bottom = (int(v) for v in box)
    if right <= left:
        raise ImageInputError(f"{name}: right ({right}) must be greater than left ({left})")
    if bottom <= top:
        raise ImageInputError(f"{name}: bottom ({bottom}) must be greater than top ({top})")
    width, height = img.size
    if left < 0 or top < 0 or right > width or bottom > height:
        raise ImageInputError(
            f"{name}: box ({left}, {top}, {right}, {bottom}) is outside the image, "
            f"which is {width}x{height} pixels"
        )
    return img.crop((left, top, right, bottom))


def load_image(
    source: ImageSource,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
    crop: tuple[int, int, int, int] | None = None,
    name: str = "image",
) -> Image.Image:
    """Load any accepted source as an upright RGB image, checking limits before decoding.

    ``source`` is a data URI or file path (str), a path, encoded bytes, a PIL image or a numpy
    array. EXIF orientation is applied first, so ``crop`` is in pixels of the upright image.
    """
    img = _to_rgb(_upright(_read_source(source, limits, name), limits, name), name)
    if crop is not None:
        img = crop_image(img, crop, name=f"{name} crop")
    return img


def embeddable_bytes(
    source: ImageSource, *, limits: ImageLimits = DEFAULT_LIMITS, name: str = "image"
) -> bytes:
    """The bytes to embed for ``source`` in a preset or PNG (data URIs take PNG, JPEG or WebP).

    PNG, JPEG and WebP files and bytes are embedded as they are. Anything else (GIF, BMP, TIFF,
    a PIL image, an array) is re-encoded as lossless PNG: upright, since a stored crop is in
    pixels after EXIF orientation, and with its transparency, so it loads back to the same RGB.
    """
    data = _read_source(source, limits, name)
    if isinstance(data, bytes) and image_format(data) is not None:
        return data
    buf = io.BytesIO()
    _storable(_upright(data, limits, name), name).save(buf, format="PNG")
    return buf.getvalue()


def _read_source(
    source: ImageSource, limits: ImageLimits, name: str
) -> bytes | Image.Image | np.ndarray:
    """Data URIs and files as their encoded bytes (checked, not decoded); other sources as is."""
    if isinstance(source, str) and is_data_uri(source):
        return _decode_data_uri(source, limits, name)
    if isinstance(source, str | os.PathLike):
        return _read_file(source, limits, name)
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    return source


def _upright(
    source: bytes | Image.Image | np.ndarray, limits: ImageLimits, name: str
) -> Image.Image:
    """Decode (limits checked first) and apply the EXIF orientation."""
    if isinstance(source, Image.Image):
        img = _decode(source, limits, name)
    elif isinstance(source, np.ndarray):
        img = _from_array(source, limits, name)
    elif isinstance(source, bytes):
        img = _decode(_open_bytes(source, limits, name), limits, name)
    else:
        raise ImageInputError(
            f"{name}: unsupported image source of type {type(source).__name__}; expected a file "
            "path, a data URI, bytes, a PIL image or a numpy array"
        )
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:
        raise ImageInputError(f"{name}: image has unreadable EXIF data ({exc})") from None


def vae_resize(img: Image.Image) -> Image.Image:
    """Resize to :func:`vae_size` with bicubic filtering, as BAGEL's torchvision resize does."""
    size = vae_size(*img.size)
    if img.size == size:
        return img.copy()
    return img.resize(size, Image.Resampling.BICUBIC)
