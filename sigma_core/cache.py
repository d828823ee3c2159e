"""Folders written once into the user cache (tiny tokenizer, preview checkpoint)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/sigma-studio, or ~/.cache/sigma-studio."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sigma-studio"


def cached_folder(
    name: str, write: Callable[[Path], object], *, depends_on: Iterable[ModuleType]
) -> Path:
    """The folder ``write`` fills, made once per version of the code that writes it.

    The folder name carries a hash of ``depends_on``'s source, so an update never reads a stale
    copy. Concurrent first runs each write a private copy and one wins the rename; an unwritable
    cache falls back to a fresh temporary folder.
    """
    digest = hashlib.sha256()
    for module in depends_on:
        digest.update(Path(module.__file__).read_bytes())
    target = user_cache_dir() / f"{name}-{digest.hexdigest()[:12]}"
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=target.parent))
    except OSError:
        fallback = Path(tempfile.mkdtemp(prefix=f"sigma-{name}-"))
        write(fallback)
        return fallback
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(target)
    except OSError:  # another run got there first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target
