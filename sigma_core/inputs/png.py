"""PNG text chunks: write one compressed iTXt chunk, and read one back without decoding pixels.

Pillow's own text reader stops at 1 MB, too small for a composition with embedded references, so
chunks are read here one by one, with a bound on the decompressed size.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sigma_core.errors import PresetError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_BYTES = 256 * 2**20  # decompressed; embedded references can be large


def save_png_with_text(
    image: Image.Image, path: str | os.PathLike, texts: dict[str, str], *, compressed: set[str]
) -> Path:
    """Save ``image`` as PNG with ``texts`` as iTXt chunks (zlib-compressed for ``compressed``
    keys, plain latin-1 tEXt otherwise)."""
    info = PngInfo()
    for key, value in texts.items():
        if key in compressed:
            info.add_itxt(key, value, zip=True)
        else:
            info.add_text(key, value)
    path = Path(path)
    image.save(path, format="PNG", pnginfo=info)
    return path


def find_png_text(path: Path, key: str) -> str | None:
    """The text stored under ``key`` in a tEXt, zTXt or iTXt chunk, or None when there is none."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise PresetError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        if f.read(8) != PNG_SIGNATURE:
            raise PresetError(f"{path}: not a PNG file")
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise PresetError(f"{path}: the PNG is truncated (no IEND chunk)")
            length, ctype = struct.unpack(">I4s", head)
            if ctype in (b"IDAT", b"IEND") or length > MAX_TEXT_BYTES:
                f.seek(length + 4, os.SEEK_CUR)
                if ctype == b"IEND":
                    return None
                continue
            body = f.read(length)
            f.read(4)  # CRC
            if len(body) < length:
                raise PresetError(f"{path}: the PNG is truncated")
            keyword, _, rest = body.partition(b"\0")
            text = _chunk_text(path, ctype, rest) if keyword == key.encode("latin-1") else None
            if text is not None:
                return text


def _chunk_text(path: Path, ctype: bytes, rest: bytes) -> str | None:
    """The text of one chunk body (after its keyword)."""
    try:
        if ctype == b"tEXt":
            return rest.decode("latin-1")
        if ctype == b"zTXt":
            return _inflate(rest[1:]).decode("latin-1")
        if ctype == b"iTXt":
            compressed = rest[0] == 1
            _lang, _, rest = rest[2:].partition(b"\0")
            _tkey, _, payload = rest.partition(b"\0")
            return (_inflate(payload) if compressed else payload).decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError, ValueError) as e:
        raise PresetError(f"{path}: the stored composition is corrupt ({e})") from None
    return None


def _inflate(payload: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(payload, MAX_TEXT_BYTES)
    if d.unconsumed_tail:
        raise ValueError(f"larger than {MAX_TEXT_BYTES >> 20} MB when decompressed")
    return out
