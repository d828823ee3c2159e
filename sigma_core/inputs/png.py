"""PNG text chunks: write one compressed iTXt chunk, and read one back without decoding pixels.

Pillow's own text reader stops at 1 MB, too small for a composition with embedded references, so
chunks are read here one by one, with the same bound on the text as the writer keeps
(:data:`~sigma_core.limits.MAX_COMPOSITION_BYTES`).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sigma_core.errors import PresetError
from sigma_core.inputs.images import size_text
from sigma_core.inputs.outfile import write_atomic
from sigma_core.limits import MAX_COMPOSITION_BYTES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_MAX_KEYWORD = 80  # a keyword is 1 to 79 bytes and its NUL


def save_png_with_text(
    image: Image.Image,
    path: str | os.PathLike,
    texts: dict[str, str],
    *,
    compressed: set[str],
    overwrite: bool = False,
) -> Path:
    """Save ``image`` as PNG with ``texts`` as iTXt chunks (zlib-compressed for ``compressed``
    keys, plain latin-1 tEXt otherwise), atomically; returns the path written, which is the next
    free ``stem-N.png`` when ``path`` exists and ``overwrite`` is False."""
    info = PngInfo()
    for key, value in texts.items():
        if key in compressed:
            info.add_itxt(key, value, zip=True)
        else:
            info.add_text(key, value)
    return write_atomic(
        Path(path), lambda f: image.save(f, format="PNG", pnginfo=info), overwrite=overwrite
    )


def find_png_text(path: Path, key: str, *, max_bytes: int = MAX_COMPOSITION_BYTES) -> str | None:
    """The text stored under ``key`` in a tEXt, zTXt or iTXt chunk, or None when there is none.

    A text over ``max_bytes`` (compressed or not) is refused with its size, never skipped: a PNG
    that has one does hold a composition, only too large to read.
    """
    try:
        if path.exists() and not path.is_file():  # stat only: a FIFO is never opened
            raise PresetError(f"{path}: not a regular file")
        f = path.open("rb")
    except OSError as e:
        raise PresetError(f"{path}: cannot open ({e.strerror})") from None
    wanted = key.encode("latin-1")
    with f:
        if f.read(8) != PNG_SIGNATURE:
            raise PresetError(f"{path}: not a PNG file")
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise PresetError(f"{path}: the PNG is truncated (no IEND chunk)")
            length, ctype = struct.unpack(">I4s", head)
            if ctype == b"IEND":
                return None
            start = f.read(min(length, _MAX_KEYWORD)) if ctype in _TEXT_CHUNKS else b""
            keyword, _, rest = start.partition(b"\0")
            if keyword != wanted:
                f.seek(length - len(start) + 4, os.SEEK_CUR)  # the rest and the CRC
                continue
            if length > _chunk_bound(max_bytes):
                raise _too_large(path, length, max_bytes)
            more = f.read(length - len(start))
            if len(start) + len(more) < length:
                raise PresetError(f"{path}: the PNG is truncated")
            return _chunk_text(path, ctype, rest + more, max_bytes)


def _chunk_bound(max_bytes: int) -> int:
    """The longest chunk that can hold ``max_bytes`` of text: zlib may grow incompressible data
    by 0.03% (compressBound), and the chunk also holds the keyword and the iTXt header."""
    return max_bytes + max_bytes // 1000 + 4096


def _too_large(path: Path, stored: int, max_bytes: int) -> PresetError:
    return PresetError(
        f"{path}: the stored composition is larger than the {size_text(max_bytes)} limit "
        f"({size_text(stored)} as stored in the PNG); it cannot be read"
    )


def _chunk_text(path: Path, ctype: bytes, body: bytes, max_bytes: int) -> str:
    """The text of one chunk body (after its keyword), at most ``max_bytes`` long."""
    encoding = "latin-1"
    try:
        if ctype == b"tEXt":
            raw = body
        elif ctype == b"zTXt":
            raw = _inflate(body[1:], max_bytes)
        else:
            compressed, encoding = body[0] == 1, "utf-8"
            _lang, _, tail = body[2:].partition(b"\0")
            _tkey, _, payload = tail.partition(b"\0")
            raw = _inflate(payload, max_bytes) if compressed else payload
        if len(raw) > max_bytes:
            raise _too_large(path, len(body), max_bytes)
        return raw.decode(encoding)
    except (zlib.error, UnicodeDecodeError, IndexError) as e:
        raise PresetError(f"{path}: the stored composition is corrupt ({e})") from None


def _inflate(payload: bytes, max_bytes: int) -> bytes:
    """Decompress at most one byte past ``max_bytes``: enough to tell that it is over."""
    return zlib.decompressobj().decompress(payload, max_bytes + 1)
