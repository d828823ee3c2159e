"""Reading a file of bounded size: its kind and size checked before it is opened, so a FIFO or
a device is never opened (it could block for ever) and a huge file never read, then at most one
byte past the limit read, so a file that grew since is refused too. Presets, training configs
and the files SIGMA Studio wrote (:mod:`sigma_core.inputs.records`) are read through it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sigma_core.errors import SigmaError
from sigma_core.inputs.fields import cut


def read_bounded(path: Path, max_bytes: int, *, what: str, error: type[SigmaError]) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (whole MB), its kind and size checked
    before it is opened: a FIFO or a device is never opened (it could block for ever). One byte
    more than the limit is read, to see a file that grew since. ``error`` names the file."""
    size = regular_file_size(path, what, error)
    try:
        data = b"" if size > max_bytes else _head(path, max_bytes + 1)
    except (OSError, ValueError) as e:
        raise unreadable(path, what, e, error) from None
    if size > max_bytes or len(data) > max_bytes:
        raise error(f"{path}: a {what} is at most {max_bytes >> 20} MB")
    return data


def regular_file_size(path: Path, what: str, error: type[SigmaError]) -> int:
    """The size of ``path``, refused unless it is a regular file (stat only: nothing opened)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise unreadable(path, what, e, error) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file; a {what} is one")
    return st.st_size


def unreadable(path: Path, what: str, e: Exception, error: type[SigmaError]) -> SigmaError:
    """The ``error`` to raise when ``path`` cannot be read: the OS's reason, or the exception's
    cut short, so every reader words it the same way."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else cut(str(e), 80)
    return error(f"{path}: cannot read the {what} ({reason})")


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)
